"""End-to-end golden fixtures per official sampler family (tests/golden/end_to_end/samplers_*): the
official DiffBIR pipeline (main, as make_end_to_end.py) run whole on the v2.1 SwinIR super-resolution
case of make_end_to_end.py, each time with another ``--sampler`` (and one with ``--rescale_cfg``).

Run with the golden environment (tools/goldens/setup.sh), after the test models exist (see
make_end_to_end.py), from the repository root:

    .venv-official/bin/python -m tools.goldens.make_end_to_end_samplers [case ...]

Everything but the sampler is make_end_to_end.py's ``v21_swinir_sr_x4`` (same image, seed, steps,
prompts, cfg 6, fp32, ``torch.manual_seed(SEED)`` right before ``Pipeline.run``). The families:
``ddim`` (the official DDIM, eta 0), ``dpm++_m2`` (DPM-Solver++ 2M at fractional timesteps) with
``--rescale_cfg``, and ``edm_euler`` (a deterministic EDM solver). The spaced sampler (v2) and the
SDE solver ``edm_dpm++_3m_sde`` (v2.1, Brownian tree and noise from the seed) are make_end_to_end.py's
cases. Writes ``samplers_<case>_official.png``
and ``samplers_cases.json`` (cases not named on the command line are kept).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from PIL import Image

from diffbir_modules import prompts
from tools.goldens import official
from tools.goldens.make_end_to_end import LQ_BOX, OUT, SEED, STEPS, build_cldm, diffusion, log
from tools.goldens.make_stage1 import official_cleaner

WORKFLOW = "DiffBIR v2.1 super-resolution (SwinIR)"
BASE_CASE = "v21_swinir_sr_x4"  # make_end_to_end.py's case (and low-quality image) these vary
CLEANER = "realesrgan_s4_swinir_100k.pth"
UPSCALE = 4.0
# case -> (official --sampler, --rescale_cfg)
# (each official run takes minutes on a CPU: the families the plain cases do not cover, --rescale_cfg
# on one of them)
CASES = {
    "ddim": ("ddim", False),
    "dpmpp_m2_rescale_cfg": ("dpm++_m2", True),
    "edm_euler": ("edm_euler", False),
}


def run_case(cldm, cleaner, lq: Image.Image, sampler: str, rescale_cfg: bool) -> np.ndarray:
    """The official v2.1 ``--task sr`` loop for one image: PIL bicubic x upscale, then SwinIRPipeline.run."""
    from argparse import Namespace

    from diffbir.inference.bsr_loop import BSRInferenceLoop
    from diffbir.pipeline import SwinIRPipeline

    loop = object.__new__(BSRInferenceLoop)
    loop.args = Namespace(version="v2.1", upscale=UPSCALE)
    lq_array = loop.after_load_lq(lq)
    pipe = SwinIRPipeline(cleaner, cldm, diffusion("v2.1"), None, "cpu")
    positive, negative, cfg, _, _ = prompts.DEFAULTS["v2.1"]
    torch.manual_seed(SEED)
    with torch.no_grad():
        return pipe.run(lq_array[None], STEPS, 1.0, False, 512, 256, False, 256, False, 256, False, 512, 256,
                        positive, negative, cfg, "noise", sampler, 0, rescale_cfg, 0.0, 0.0, 300.0, 1.0, 1.0, 1)


def main():
    from skimage import data

    official.activate("main")
    torch.set_num_threads(2)
    top, left, h, w = LQ_BOX
    lq = Image.fromarray(np.ascontiguousarray(data.astronaut()[top:top + h, left:left + w]))
    cldm, cleaner = build_cldm(), official_cleaner(CLEANER)
    log("models built")
    path = OUT / "samplers_cases.json"
    meta = {"workflow": WORKFLOW, "base_case": BASE_CASE, "seed": SEED, "steps": STEPS,
            "official_commit": official.COMMITS["main"], "precision": "fp32", "stage1": CLEANER,
            "upscale": UPSCALE, "output_size": [int(w * UPSCALE), int(h * UPSCALE)], "cases": {}}
    if path.exists():
        meta["cases"] = json.loads(path.read_text())["cases"]
    for case in sys.argv[1:] or list(CASES):
        sampler, rescale_cfg = CASES[case]
        out = run_case(cldm, cleaner, lq, sampler, rescale_cfg)
        name = f"samplers_{case}_official.png"
        Image.fromarray(out[0]).save(OUT / name)
        meta["cases"][case] = {"sampler": sampler, "rescale_cfg": rescale_cfg, "official": name}
        log(case, out.shape, int(out.min()), int(out.max()))
        path.write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
