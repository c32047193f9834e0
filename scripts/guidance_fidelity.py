"""Fidelity vs restoration-guidance scale: PSNR between the restored output and the stage-1 image as the
scale rises, for several samplers (docs/guidance.md has the table this prints).

A scikit-image photo is degraded (Gaussian blur, 4x area downscale, Gaussian noise, bicubic back up)
and that degraded image stands in for the stage-1 result (random weights cannot remove anything).
Stage 2 is the real graph with random weights: the tiny SD 2.x checkpoint and IRControlNet from
tests/model_factory.py, DiffBIR Model Sampling (v2), DiffBIR Apply IRControlNet, DiffBIR Restoration
Guidance, the sampler, VAE Decode, crop. With random weights the "restoration" is noise; the property
shown is that guidance pulls the output toward the stage-1 image, monotonically in the scale.

    .venv/bin/python scripts/guidance_fidelity.py --size 128 --steps 10 --space latent
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

SAMPLERS = {
    # name: (sampler node args, sigmas); "spaced" uses DiffBIR Spaced Sampler + Spaced Sigmas
    "spaced (official)": ("spaced", None),
    "euler / normal": ("euler", "normal"),
    "euler_ancestral / normal": ("euler_ancestral", "normal"),
    "dpmpp_2m / karras": ("dpmpp_2m", "karras"),
    "heun / normal": ("heun", "normal"),
}
DEFAULT_SAMPLERS = ("spaced (official)", "euler / normal", "dpmpp_2m / karras", "euler_ancestral / normal")


def degraded_photo(size: int, seed: int = 0):
    """(clean, degraded) [1,size,size,3] in [0,1]: astronaut crop; blur 1.5, x4 down, noise 0.04, up."""
    import torch
    import torch.nn.functional as F
    from skimage import data, filters

    photo = data.astronaut()[:384, 64:448].astype(np.float32) / 255.0
    clean = torch.from_numpy(photo).permute(2, 0, 1)[None]
    clean = F.interpolate(clean, size=(size, size), mode="area").clamp(0, 1)
    blurred = torch.from_numpy(filters.gaussian(clean[0].permute(1, 2, 0).numpy(), sigma=1.5, channel_axis=-1))
    small = F.interpolate(blurred.permute(2, 0, 1)[None], scale_factor=0.25, mode="area")
    g = torch.Generator().manual_seed(seed)
    small = (small + 0.04 * torch.randn(small.shape, generator=g)).clamp(0, 1)
    degraded = F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return clean.movedim(1, -1).contiguous(), degraded.movedim(1, -1).contiguous()


def psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


class Runner:
    """The stage-2 graph with random tiny weights, node classes called in process."""

    def __init__(self, comfy, variant="tiny"):
        import torch
        from conftest import install_model

        import model_factory

        self.comfy = comfy
        self.torch = torch
        ckpt = install_model("checkpoints", model_factory.sd2_checkpoint(variant))
        self.irc_name = install_model("diffbir", model_factory.ircontrolnet_file(variant, 1, "safetensors"))
        self.model, self.clip, self.vae = self.node("CheckpointLoaderSimple", ckpt)
        self.model = self.node("DiffBIRModelSampling", self.model, "v2")[0]
        self.pos = self.node("DiffBIRTextEncode", self.clip, "", True, False)[0]
        self.neg = self.node("DiffBIRTextEncode", self.clip, "low quality, blurry", True, False)[0]
        self.irc = self.node("DiffBIRIRControlNetLoader", self.irc_name, "v2")[0]

    def node(self, name, *args, **kwargs):
        cls = self.comfy.node_class(name)
        with self.torch.inference_mode():
            if hasattr(cls, "define_schema"):
                return cls.execute(*args, **kwargs).result
            return getattr(cls(), cls.FUNCTION)(*args, **kwargs)

    def restore(self, stage1, scale, sampler, steps, seed=1, cfg=4.0, **guidance):
        model = self.node("DiffBIRRestorationGuidance", self.model, self.vae, stage1, scale=scale, **guidance)[0]
        pos, neg, latent = self.node("DiffBIRApplyIRControlNet", self.pos, self.neg, self.irc, self.vae, stage1, 1.0)
        name, scheduler = SAMPLERS[sampler]
        guider = self.node("CFGGuider", model, pos, neg, cfg)[0]
        if name == "spaced":
            ksampler = self.node("DiffBIRSpacedSampler", "official")[0]
            sigmas = self.node("DiffBIRSpacedSigmas", model, steps)[0]
        else:
            ksampler = self.node("KSamplerSelect", name)[0]
            sigmas = self.node("BasicScheduler", model, scheduler, steps, 1.0)[0]
        noise = self.node("RandomNoise", seed)[0]
        out = self.node("SamplerCustomAdvanced", noise, guider, ksampler, sigmas, latent)[0]
        decoded = self.node("VAEDecode", self.vae, out)[0]
        h, w = stage1.shape[1:3]
        return decoded[:, :h, :w]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--space", default="latent", choices=["latent", "rgb"])
    parser.add_argument("--loss", default="w_mse", choices=["w_mse", "mse"])
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02])
    parser.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--reference-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from conftest import MODELS_DIR

    import comfy_runtime

    comfy_runtime.start(Path(tempfile.mkdtemp(prefix="diffbir-fidelity-")) / "in-process", MODELS_DIR)
    runner = Runner(comfy_runtime)
    _, stage1 = degraded_photo(args.size)
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            values = []
            t0 = time.time()
            for scale in args.scales:
                out = runner.restore(stage1, scale, sampler, steps, seed=args.seed, space=args.space,
                                     loss=args.loss, reference_steps=args.reference_steps)
                values.append(psnr(out, stage1))
            monotonic = all(b > a for a, b in zip(values, values[1:]))
            rows.append((sampler, steps, values, monotonic))
            print(f"{sampler} {steps} steps: " + ", ".join(f"{v:.2f}" for v in values)
                  + f"  monotonic={monotonic}  ({time.time() - t0:.0f} s)", flush=True)
    print()
    print(f"PSNR (dB) of the output against the stage-1 image; {args.size} px, {args.space} {args.loss}, "
          f"reference_steps {args.reference_steps}, seed {args.seed}")
    print()
    print("| sampler | steps | " + " | ".join(f"{s:g}" for s in args.scales) + " | monotonic |")
    print("|---|---|" + "---|" * len(args.scales) + "---|")
    for sampler, steps, values, monotonic in rows:
        print(f"| {sampler} | {steps} | " + " | ".join(f"{v:.2f}" for v in values)
              + f" | {'yes' if monotonic else 'no'} |")


if __name__ == "__main__":
    main()
