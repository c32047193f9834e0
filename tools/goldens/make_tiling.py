"""Golden fixture for tiled sampling (tests/golden/tiling/), made by the official DiffBIR code.

    .venv/bin/python -c "from devkit import model_factory as m; m.sd2_checkpoint('small')"
    .venv-official/bin/python -m tools.goldens.make_tiling [run name ...]

One official ``Pipeline.apply_cldm`` run (main 3f8b530) with ``--cldm_tiled --cldm_tile_size 512
--cldm_tile_stride 256`` on a 576 x 576 stage-1 image (larger than the tile on both sides, so the
official code tiles: a 72 x 72 latent in 4 windows of 64 x 64 blended with the gaussian weights),
v2 (eps, spaced sampler, 2 steps, cfg 4) and v2.1 (v-prediction zsnr, edm_euler, 2 steps, cfg 6),
strength 1, with ControlLDM = the small random SD 2.x checkpoint + model_factory's small random
IRControlNet (seed 1), right after torch.manual_seed(231). VAE encoder/decoder untiled (their tiling
is compared separately). Saved: the condition latent, the recorded draws and the sampled latent.
The condition image is rebuilt by ``condition_image`` (the test has the same formula; its sum is
stored to catch drift).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from devkit import model_factory
from tools.goldens import make_samplers, official

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

OUT = REPO / "tests" / "golden" / "tiling"
SEED = 231
SIZE = 576
STEPS = 2
TILE, STRIDE = 512, 256

RUNS = {
    "run_v2_spaced_tiled": ("v2", "spaced", 4.0, "", make_samplers.PROMPTS[1]),
    "run_v21_edm_euler_tiled": ("v2.1", "edm_euler", 6.0, make_samplers.PROMPTS[2], make_samplers.PROMPTS[3]),
}


def condition_image(size: int = SIZE) -> torch.Tensor:
    """A smooth random image with some texture, [1, 3, size, size] in [0, 1]."""
    g = torch.Generator().manual_seed(22)
    base = torch.rand(1, 3, size // 32, size // 32, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(size, size), mode="bicubic").clamp(0, 1)
    return (smooth * 0.8 + torch.rand(1, 3, size, size, generator=g) * 0.2).contiguous()


def run(cldm, version, sampler, cfg, pos, neg):
    from diffbir.model.gaussian_diffusion import Diffusion
    from diffbir.pipeline import Pipeline

    kwargs = {} if version == "v2" else dict(zero_snr=True, parameterization="v")
    diffusion = Diffusion(linear_start=0.00085, linear_end=0.012, **kwargs)
    pipeline = Pipeline(None, cldm, diffusion, None, "cpu")
    cond_img = condition_image()
    captured = {}
    real_decode, real_encode = cldm.vae_decode, cldm.prepare_condition

    def vae_decode(z, *args, **kw):  # the sampled latent; the decode itself is skipped (not compared here)
        captured["z"] = z.detach().clone()
        return torch.zeros(z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8)

    def prepare_condition(*args, **kw):
        c = real_encode(*args, **kw)
        captured.setdefault("c_img", c["c_img"].detach().clone())
        return c

    calls = []
    real_forward = cldm.forward

    def forward(x, t, cond):
        calls.append(tuple(x.shape))
        return real_forward(x, t, cond)

    cldm.vae_decode, cldm.prepare_condition, cldm.forward = vae_decode, prepare_condition, forward
    try:
        torch.manual_seed(SEED)
        with torch.no_grad(), make_samplers.Recorder() as rec:
            pipeline.apply_cldm(cond_img, STEPS, 1.0, False, 256, False, 256, True, TILE, STRIDE, pos, neg, cfg,
                                "noise", sampler, 0, False, 0.0, 0.0, 300.0, 1.0, 1.0, 1)
    finally:
        cldm.vae_decode, cldm.prepare_condition, cldm.forward = real_decode, real_encode, real_forward
    return {"c_img": captured["c_img"], "z": captured["z"], "draws": torch.stack(rec.draws)}, calls, cond_img


def main(names: list[str]):
    """Makes the runs ``names`` (default: all of RUNS)."""
    from safetensors.torch import load_file, save_file

    unknown = set(names) - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown run(s) {sorted(unknown)}; choose from {sorted(RUNS)}")

    official.activate("main")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    checkpoint = model_factory.CACHE / f"sd2-small-seed0-float16-v{model_factory.FACTORY_VERSION}.safetensors"
    if not checkpoint.exists():
        raise SystemExit(f"missing {checkpoint}: build it first (see this script's docstring)")
    cldm, controlnet_shapes = make_samplers.build_cldm(load_file(str(checkpoint)))
    for name in names or RUNS:
        version, sampler, cfg, pos, neg = RUNS[name]
        tensors, calls, cond_img = run(cldm, version, sampler, cfg, pos, neg)
        meta = {"version": version, "sampler": sampler, "cfg": str(cfg), "steps": str(STEPS), "seed": str(SEED),
                "positive": pos, "negative": neg, "tile": str(TILE), "stride": str(STRIDE), "size": str(SIZE),
                "cond_img_sum": repr(float(cond_img.double().sum())), "forward_shapes": json.dumps(calls),
                "checkpoint": checkpoint.name, "controlnet_seed": str(make_samplers.CONTROLNET_SEED),
                "commit": official.COMMITS["main"], "controlnet_shapes": json.dumps(controlnet_shapes)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / f"{name}.safetensors"), metadata=meta)
        print(name, {k: tuple(v.shape) for k, v in tensors.items()}, len(calls), "forward calls", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
