"""End-to-end golden fixtures (tests/golden/end_to_end/): the official DiffBIR pipeline classes run
whole, from the 8-bit low-quality image to the 8-bit result, on the test models' random weights.

Run with the golden environment (tools/goldens/setup.sh), after the test models exist (they are
built with ComfyUI's modules, so with the test venv):

    .venv/bin/python -c "import torch; from devkit import model_factory as m; \
m.sd2_checkpoint('small', dtype=torch.float32); m.ircontrolnet_file('small')"
    .venv-official/bin/python -m tools.goldens.make_end_to_end [case ...]

Each case is what the official ``inference.py`` does for one image (its inference loop's
``after_load_lq``, then ``Pipeline.run`` of the pipeline class it picks), with the settings of the
matching shipped workflow (prompts, cfg and sampler of its version; fewer steps) and the random
draws of ``torch.manual_seed(SEED)`` right before ``Pipeline.run``, in fp32 (the official
``--precision fp32``). The low-quality image is an odd-sized crop so the final resize to input size x
upscale matters. Writes ``<case>_lq.png``, ``<case>_official.png`` (``<case>_official_<i>.png`` for
each sample of a batch) and ``cases.json``.

Options of a case (the official command-line flags they stand for):
- ``tiled``: ``--cleaner_tiled --cldm_tiled`` with the official tile sizes 512 / 256 (the cleaner
  then skips tiling on inputs smaller than a tile, as officially); the VAE is not tiled, because the
  official tiled VAE is approximate (shared but averaged GroupNorm statistics) while the pack's
  exact tiled VAE equals the untiled one;
- ``n_samples``: ``--n_samples N --batch_size N``: the image repeated N times in one batch.
"""

from __future__ import annotations

import json
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from devkit import model_factory
from diffbir_modules import prompts
from tools.goldens import official
from tools.goldens.make_stage1 import official_cleaner

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

OUT = REPO / "tests" / "golden" / "end_to_end"
SEED = 231  # the shipped workflows' noise seed (the official CLI default)
STEPS = 4
LQ_BOX = (100, 170, 77, 123)  # (top, left, height, width) of skimage's astronaut: 123 x 77
UNET = dict(use_checkpoint=False, image_size=32, in_channels=4, model_channels=320, attention_resolutions=[1, 2],
            num_res_blocks=1, channel_mult=[1, 2], num_head_channels=64, use_spatial_transformer=True,
            use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, legacy=False)

# case -> (shipped workflow, official --version, --task, pipeline class, stage-1 file, official sampler, upscale)
CASES = {
    "v21_swinir_sr_x4": ("DiffBIR v2.1 super-resolution (SwinIR)", "v2.1", "sr", "SwinIRPipeline",
                         "realesrgan_s4_swinir_100k.pth", "edm_dpm++_3m_sde", 4.0),
    "v2_bsrnet_sr_x4": ("DiffBIR v2 super-resolution (BSRNet)", "v2", "sr", "BSRNetPipeline", "BSRNet.pth", "spaced",
                        4.0),
    "v2_scunet_denoise_x1": ("DiffBIR v2 denoising (SCUNet)", "v2", "denoise", "SCUNetPipeline",
                             "scunet_color_real_psnr.pth", "spaced", 1.0),
    "v1_swinir_sr_x4": ("DiffBIR v1 general", "v1", "sr", "SwinIRPipeline", "general_swinir_v1.ckpt", "spaced", 4.0),
    "v21_tiled_sr_x4": ("DiffBIR v2.1 large images (tiled)", "v2.1", "sr", "SwinIRPipeline",
                        "realesrgan_s4_swinir_100k.pth", "edm_dpm++_3m_sde", 4.0),
    "v21_swinir_sr_x4_batch2": ("DiffBIR v2.1 super-resolution (SwinIR)", "v2.1", "sr", "SwinIRPipeline",
                                "realesrgan_s4_swinir_100k.pth", "edm_dpm++_3m_sde", 4.0),
}
OPTIONS = {"v21_tiled_sr_x4": {"tiled": True}, "v21_swinir_sr_x4_batch2": {"n_samples": 2}}
TILE_SIZE, TILE_STRIDE = 512, 256  # the official defaults of --cleaner_tile_* and --cldm_tile_*


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def build_cldm():
    from diffbir.model import ControlLDM
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    config = OmegaConf.to_container(OmegaConf.load(official.source("main") / "configs/inference/cldm.yaml"))
    params = config["params"]
    params["unet_cfg"] = dict(UNET, out_channels=4)
    params["controlnet_cfg"] = dict(UNET, hint_channels=4)
    cldm = ControlLDM(**params)
    sd = load_file(str(model_factory.sd2_checkpoint("small", dtype=torch.float32)))
    _, missing = cldm.load_pretrained_sd(sd)
    if missing:
        raise RuntimeError(f"the small checkpoint lacks {sorted(missing)[:5]}")
    controlnet = torch.load(model_factory.ircontrolnet_file("small"), map_location="cpu", weights_only=True)
    cldm.load_controlnet_from_ckpt(controlnet)
    return cldm.eval()


def diffusion(version: str):
    from diffbir.utils.common import instantiate_from_config
    from omegaconf import OmegaConf

    name = "diffusion_v2.1.yaml" if version == "v2.1" else "diffusion.yaml"
    return instantiate_from_config(OmegaConf.load(official.source("main") / "configs/inference" / name))


def run_case(cldm, version: str, task: str, pipeline_name: str, cleaner_file: str, sampler: str, upscale: float,
             lq: Image.Image, tiled: bool = False, n_samples: int = 1) -> np.ndarray:
    from diffbir import pipeline as pipelines
    from diffbir.inference.bid_loop import BIDInferenceLoop
    from diffbir.inference.bsr_loop import BSRInferenceLoop

    loop = object.__new__({"sr": BSRInferenceLoop, "denoise": BIDInferenceLoop}[task])
    loop.args = Namespace(version=version, upscale=upscale)
    lq_array = loop.after_load_lq(lq)  # PIL bicubic x upscale, except v2 sr (BSRNet upscales itself)
    cleaner = official_cleaner(cleaner_file)
    cls = getattr(pipelines, pipeline_name)
    args = (cleaner, cldm, diffusion(version), None, "cpu")
    pipe = cls(*args, upscale) if pipeline_name == "BSRNetPipeline" else cls(*args)
    positive, negative, cfg, _, _ = prompts.DEFAULTS[version]
    torch.manual_seed(SEED)
    with torch.no_grad():
        out = pipe.run(np.tile(lq_array[None], (n_samples, 1, 1, 1)), STEPS, 1.0, tiled, TILE_SIZE, TILE_STRIDE,
                       False, 256, False, 256, tiled, TILE_SIZE, TILE_STRIDE,
                       positive, negative, cfg, "noise", sampler, 0, False, 0.0, 0.0, 300.0, 1.0, 1.0, 1)
    return out


def main():
    from skimage import data

    official.activate("main")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    top, left, h, w = LQ_BOX
    lq = Image.fromarray(np.ascontiguousarray(data.astronaut()[top:top + h, left:left + w]))
    cldm = build_cldm()
    log("ControlLDM built")
    meta = {"seed": SEED, "steps": STEPS, "official_commit": official.COMMITS["main"], "precision": "fp32",
            "lq_size": [w, h], "cases": {}}
    if (OUT / "cases.json").exists():  # cases not named on the command line are kept
        meta["cases"] = json.loads((OUT / "cases.json").read_text())["cases"]
    for case in sys.argv[1:] or list(CASES):
        workflow, version, task, pipeline_name, cleaner_file, sampler, upscale = CASES[case]
        options = OPTIONS.get(case, {})
        out = run_case(cldm, version, task, pipeline_name, cleaner_file, sampler, upscale, lq, **options)
        lq.save(OUT / f"{case}_lq.png")
        if len(out) == 1:
            Image.fromarray(out[0]).save(OUT / f"{case}_official.png")
        else:
            for i, sample in enumerate(out):
                Image.fromarray(sample).save(OUT / f"{case}_official_{i}.png")
        meta["cases"][case] = {"workflow": workflow, "version": version, "task": task, "pipeline": pipeline_name,
                               "stage1": cleaner_file, "sampler": sampler, "upscale": upscale,
                               "output_size": [out.shape[2], out.shape[1]], **options}
        if options.get("tiled"):
            meta["cases"][case].update(tile_size=TILE_SIZE, tile_stride=TILE_STRIDE)
        log(case, out.shape, out.dtype, int(out.min()), int(out.max()))
        (OUT / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
