"""Fidelity vs restoration-guidance scale: PSNR between the restored output and the stage-1 image as the
scale rises, for several samplers (docs/guidance.md has the tables this prints).

A scikit-image photo is degraded (Gaussian blur, 4x area downscale, Gaussian noise, bicubic back up)
and that degraded image stands in for the stage-1 result (random weights cannot remove anything).
Stage 2 is the real graph with random weights: the tiny SD 2.x checkpoint and IRControlNet from
devkit/model_factory.py, DiffBIR Model Sampling (v2), DiffBIR Apply IRControlNet, DiffBIR Restoration
Guidance, the sampler, VAE Decode, crop (devkit/guidance_setup.py). With random weights the
"restoration" is noise; the property shown is that guidance pulls the output toward the stage-1 image
as the scale rises.

Printed per sampler and scale: PSNR(output, stage-1 image) in dB and, for latent space, also the
PSNR of the sampled latent against the stage-1 image's latent (VAE posterior mode), which is what
latent-space guidance pulls on (a random VAE does not reconstruct images, so pixel PSNR can only
move a little there).

    .venv/bin/python -m scripts.guidance_fidelity --space rgb --size 32 --steps 4 --scales 0 0.3 1 3 10 30
    .venv/bin/python -m scripts.guidance_fidelity --space latent --size 64 --steps 10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SAMPLER_CHOICES = ["spaced (official)", "euler / normal", "euler_ancestral / normal", "dpmpp_2m / karras",
                   "heun / normal"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--space", default="latent", choices=["latent", "rgb"])
    parser.add_argument("--loss", default="w_mse", choices=["w_mse", "mse"])
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 0.001, 0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--samplers", nargs="+", default=SAMPLER_CHOICES[:4], choices=SAMPLER_CHOICES)
    parser.add_argument("--reference-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import torch

    from devkit import comfy_runtime
    from devkit.guidance_setup import Runner, degraded_photo, psnr, psnr_range
    from devkit.model_factory import MODELS_DIR

    comfy_runtime.start(Path(tempfile.mkdtemp(prefix="diffbir-fidelity-")) / "in-process", MODELS_DIR)
    runner = Runner(comfy_runtime)
    _, stage1 = degraded_photo(args.size)
    with torch.inference_mode():
        target_latent = runner.vae.encode(stage1)
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            pixel, latent = [], []
            t0 = time.time()
            for scale in args.scales:
                out = runner.restore(stage1, scale, sampler, steps, seed=args.seed, space=args.space,
                                     loss=args.loss, reference_steps=args.reference_steps, decode=False)
                samples = out["samples"]
                h, w = target_latent.shape[-2:]
                latent.append(psnr_range(samples[..., :h, :w], target_latent))
                with torch.inference_mode():
                    image = runner.vae.decode(samples)[:, :args.size, :args.size]
                pixel.append(psnr(image, stage1))
            rows.append((sampler, steps, pixel, latent))
            print(f"{sampler} {steps} steps: pixel " + ", ".join(f"{v:.2f}" for v in pixel)
                  + "; latent " + ", ".join(f"{v:.2f}" for v in latent) + f" ({time.time() - t0:.0f} s)", flush=True)
    print()
    print(f"{args.size} px, {args.space} space, {args.loss}, reference_steps {args.reference_steps}, seed {args.seed}; "
          "PSNR in dB (pixel: output vs stage-1 image; latent: sampled latent vs the stage-1 latent)")
    print()
    print("| sampler | steps | metric | " + " | ".join(f"{s:g}" for s in args.scales) + " | rises monotonically |")
    print("|---|---|---|" + "---|" * len(args.scales) + "---|")
    for sampler, steps, pixel, latent in rows:
        for metric, values in (("pixel", pixel), ("latent", latent)):
            monotonic = all(b > a for a, b in zip(values, values[1:]))
            print(f"| {sampler} | {steps} | {metric} | " + " | ".join(f"{v:.2f}" for v in values)
                  + f" | {'yes' if monotonic else 'no'} |")


if __name__ == "__main__":
    main()
