"""Resizing and padding as the official pipelines do it (PIL bicubic on uint8, torch bicubic with
antialias, zero or replicate padding), and one network call on a padded input."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .architectures import Cleaner
from .rules import Rules

RESAMPLERS = ("pil_uint8", "pil_float")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[1 or 3, H, W] float in [0, 1] -> HWC uint8 by rounding: exact for images that came from 8-bit
    files (ComfyUI's LoadImage gives ``uint8 / 255``), which is what the official code starts from."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def pil_bicubic(x: torch.Tensor, size: tuple[int, int], resample: str = "pil_uint8") -> torch.Tensor:
    """PIL's bicubic resize of NCHW ``x`` to ``size`` (h, w), as the official loops do on the uint8 image.
    ``pil_uint8``: quantise to uint8 (rounding), resize, back to float /255 (official). ``pil_float``:
    the same PIL filter on float32 channels, no quantisation (for float inputs)."""
    h, w = size
    out = []
    for image in x:
        if resample == "pil_uint8":
            pil = Image.fromarray(to_uint8(image)).resize((w, h), Image.BICUBIC)
            out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32).copy()).div(255).permute(2, 0, 1))
        elif resample == "pil_float":
            channels = [Image.fromarray(c.float().cpu().numpy()).resize((w, h), Image.BICUBIC) for c in image]
            out.append(torch.from_numpy(np.stack([np.asarray(c, dtype=np.float32) for c in channels])))
        else:
            raise ValueError(f"unknown resample {resample!r}; expected one of {RESAMPLERS}")
    return torch.stack(out).to(x.dtype)


def torch_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The official ``F.interpolate(..., mode="bicubic", antialias=True)`` (also at an unchanged size)."""
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bicubic", antialias=True)


def pad_amounts(h: int, w: int, multiple: int, minimum: int = 1) -> tuple[int, int]:
    """(bottom, right) padding to reach at least ``minimum`` and a multiple of ``multiple``."""
    def need(n):
        target = max(n, minimum)
        return -(-target // multiple) * multiple - n
    return need(h), need(w)


def pad(x: torch.Tensor, bottom: int, right: int, mode: str) -> torch.Tensor:
    """Pads bottom/right: ``constant`` zeros (official SwinIR) or ``replicate`` (SCUNet's own). Reflect
    is never used: it fails on inputs smaller than the padding."""
    if bottom == 0 and right == 0:
        return x
    if mode == "constant":
        return F.pad(x, (0, right, 0, bottom), mode="constant", value=0.0)
    return F.pad(x, (0, right, 0, bottom), mode=mode)


def call_padded(cleaner: Cleaner, rules: Rules, x: torch.Tensor, device=None, dtype=None) -> torch.Tensor:
    """Runs the network on ``x`` padded to its size requirements and crops the padding off again."""
    h, w = x.shape[-2:]
    multiple = rules.pad_multiple or cleaner.multiple
    bottom, right = pad_amounts(h, w, multiple, cleaner.minimum)
    x = pad(x, bottom, right, rules.pad_mode)
    y = cleaner.module(x.to(device=device or x.device, dtype=dtype or x.dtype))
    if y.shape[-2:] != (x.shape[-2] * cleaner.scale, x.shape[-1] * cleaner.scale):
        raise RuntimeError(f"{cleaner.name or 'the cleaner'} returned {tuple(y.shape[-2:])} for a "
                           f"{tuple(x.shape[-2:])} input; expected x{cleaner.scale}")
    return y[..., : h * cleaner.scale, : w * cleaner.scale]
