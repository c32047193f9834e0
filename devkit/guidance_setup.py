"""Shared by tests/test_guidance.py and scripts/guidance_fidelity.py: a degraded scikit-image photo as
a stand-in stage-1 image, PSNR, and the DiffBIR stage-2 graph (tiny random SD 2.x + IRControlNet,
DiffBIR Model Sampling v2, Apply IRControlNet, Restoration Guidance, a sampler, VAE Decode) run with
node classes in process."""

from __future__ import annotations

import math

import numpy as np

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

        from devkit import model_factory
        from devkit.model_factory import install_model

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

    def condition(self, stage1, padding="64"):
        key = (stage1.data_ptr(), tuple(stage1.shape), padding)
        if getattr(self, "_condition_key", None) != key:
            self._condition_key = key
            self._condition = self.node("DiffBIRApplyIRControlNet", self.pos, self.neg, self.irc, self.vae, stage1,
                                        1.0, padding=padding)
        return self._condition

    def restore(self, stage1, scale, sampler, steps, seed=1, cfg=4.0, decode=True, tiling=None, padding="64",
                **guidance):
        """The restored image cropped to the stage-1 size (decode=False: the sampled LATENT dict).
        tiling: (tile_size, tile_stride) px of DiffBIR Tiled Sampling, applied before the guidance
        (or after it with a third item "after"). padding: DiffBIR Apply IRControlNet's padding ("8":
        the latent is the image's size / 8, "64": the official padding to a multiple of 64)."""
        model = self.model
        if tiling and tiling[2:] != ("after",):
            model = self.node("DiffBIRTiledSampling", model, tiling[0], tiling[1])[0]
        model = self.node("DiffBIRRestorationGuidance", model, self.vae, stage1, scale=scale, **guidance)[0]
        if tiling and tiling[2:] == ("after",):
            model = self.node("DiffBIRTiledSampling", model, tiling[0], tiling[1])[0]
        pos, neg, latent = self.condition(stage1, padding)
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
        if not decode:
            return out
        decoded = self.node("VAEDecode", self.vae, out)[0]
        h, w = stage1.shape[1:3]
        return decoded[:, :h, :w]


def psnr_range(a, b) -> float:
    """PSNR with the peak taken as the reference's value range (for latents, which are not in [0, 1])."""
    peak = float(b.max() - b.min())
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)
