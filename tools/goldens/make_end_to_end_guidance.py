"""End-to-end golden fixtures of restoration guidance (tests/golden/end_to_end/guidance_*): the official
DiffBIR v2.0 pipeline (tag v2.0.0, commit 3464638: the last release with ``--guidance``) run whole,
from the 8-bit low-quality image to the 8-bit result, on the test models' random weights, once per
guidance scale of the shipped sweep workflow (``DiffBIR v2 restoration guidance sweep``).

Run with the golden environment (tools/goldens/setup.sh), after the test models exist (see
make_end_to_end.py), from the repository root:

    .venv-official/bin/python -m tools.goldens.make_end_to_end_guidance [run ...]

``run`` is a key of RUNS (``latent:0.1``, ``latent:0.5``, ``rgb:0.5``; default the latent ones); runs
not named keep their files and their entries in guidance_cases.json.

What the official v2.0 ``inference.py --version v2 --task sr --upscale 4`` does for one image
(``BSRInferenceLoop``: no pre-resize; ``BSRNetPipeline.run``), in fp32, with
``torch.manual_seed(SEED)`` right before ``Pipeline.run`` (as make_end_to_end.py), the v2.0 default
prompts and cfg 4, 4 spaced steps, per scale ``s``:
- latent space, ``s > 0``: ``--guidance --g_loss mse --g_space latent --g_scale s`` (g_start 1001,
  g_stop -1, g_repeat 1: the defaults). The sweep's default loss ``w_mse`` in latent space crashes in
  the official code (a 4-channel latent times a 3-channel kernel), so ``mse`` is the latent-space loss
  the official entry point can run;
- pixel space: ``--guidance --g_loss w_mse --g_space rgb --g_scale s`` (the official README's
  example uses 0.5 in rgb space; w_mse is the sweep's own loss and runs officially in rgb). The
  official code back-propagates through the whole VAE decoder with plain autograd at the working size
  (short side at least 512 px, here 576 x 512): the process peaks at about 11.7 GiB resident
  (minutes on a 2-core CPU), so this run is made only when named, on a machine with the memory;
- (scale 0 is not made here: the pack's scale 0 returns the model unpatched, i.e. make_end_to_end.py's
  unguided ``v2_bsrnet_sr_x4``; the official ``--guidance --g_scale 0`` would still draw posterior
  samples and so change the noise.)

Writes ``guidance_lq.png``, ``guidance_official_<scale>.png`` and ``guidance_cases.json``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from PIL import Image

from devkit import model_factory
from diffbir_modules import prompts
from tools.goldens import official
from tools.goldens.make_end_to_end import LQ_BOX, OUT, SEED, STEPS, build_cldm, log

# Runs of the sweep's scales (0, 0.05, 0.1, 0.2, 0.5) to make officially (each guided official run
# takes 10 to 20 min on a shared 2-core CPU): its default 0.1 and its largest 0.5 in latent space, and
# 0.5 in rgb space (the official README's example; only when named, see above). Scale 0 is the
# unguided v2 BSRNet case of make_end_to_end.py. Key "<space>:<scale>" -> loss.
RUNS = {"latent:0.1": "mse", "latent:0.5": "mse", "rgb:0.5": "w_mse"}
DEFAULT_RUNS = ("latent:0.1", "latent:0.5")
CLEANER = "BSRNet.pth"
UPSCALE = 4.0


def build_bsrnet():
    from model.bsrnet import RRDBNet

    net = RRDBNet(**model_factory.STAGE1_CONFIGS["bsrnet"]["small"])
    net.load_state_dict(torch.load(model_factory.stage1_file(CLEANER), map_location="cpu", weights_only=True))
    return net.eval()


def output_name(space: str, scale: str) -> str:
    """guidance_official_<scale>.png for latent space (the first golden's name), _rgb_<scale> for rgb."""
    return f"guidance_official_{scale}.png" if space == "latent" else f"guidance_official_{space}_{scale}.png"


def main():
    official.activate("v20")  # the v2.0 tree's top-level packages (model, utils) import from here on
    from omegaconf import OmegaConf
    from skimage import data
    from utils.common import instantiate_from_config
    from utils.cond_fn import MSEGuidance, WeightedMSEGuidance
    from utils.helpers import BSRNetPipeline

    runs = sys.argv[1:] or list(DEFAULT_RUNS)
    torch.set_num_threads(2)
    top, left, h, w = LQ_BOX
    lq = Image.fromarray(np.ascontiguousarray(data.astronaut()[top:top + h, left:left + w]))
    cldm, bsrnet = build_cldm("v20"), build_bsrnet()
    diffusion = instantiate_from_config(OmegaConf.load(official.source("v20") / "configs/inference/diffusion.yaml"))
    positive, negative, cfg, _, _ = prompts.DEFAULTS["v2"]
    log("models built")
    lq.save(OUT / "guidance_lq.png")
    meta_path = OUT / "guidance_cases.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta = {"workflow": "DiffBIR v2 restoration guidance sweep", "official_commit": official.COMMITS["v20"],
            "precision": "fp32", "seed": SEED, "steps": STEPS, "lq_size": [w, h], "upscale": UPSCALE,
            "stage1": CLEANER, "output_size": [int(w * UPSCALE), int(h * UPSCALE)],
            # space -> {"loss": loss, "official": {scale: file}}
            "spaces": old.get("spaces", {})}
    for run in runs:
        space, scale = run.split(":")
        loss = RUNS[run]
        guidance_class = {"mse": MSEGuidance, "w_mse": WeightedMSEGuidance}[loss]
        cond_fn = guidance_class(scale=float(scale), t_start=1001, t_stop=-1, space=space, repeat=1)
        pipe = BSRNetPipeline(bsrnet, cldm, diffusion, cond_fn, "cpu", UPSCALE)
        torch.manual_seed(SEED)
        with torch.no_grad():
            out = pipe.run(np.asarray(lq)[None], STEPS, 1.0, False, 512, 256, positive, negative, cfg, False)
        name = output_name(space, scale)
        Image.fromarray(out[0]).save(OUT / name)
        entry = meta["spaces"].setdefault(space, {"loss": loss, "official": {}})
        entry["official"][scale] = name
        log(run, loss, out.shape, int(out.min()), int(out.max()))
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
