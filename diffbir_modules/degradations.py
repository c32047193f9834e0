"""Synthetic degradations: the two pipelines DiffBIR trains on, to make test inputs from clean photos.

``realesrgan``: the Real-ESRGAN second-order pipeline of DiffBIR v2.1 stage 2
(``RealESRGANDataset`` + ``RealESRGANBatchTransform``, configs/train/train_stage2_v2.1.yaml): blur with a
random kernel (isotropic / anisotropic / generalized / plateau Gaussians, or a 2-D sinc), random resize,
Gaussian or Poisson noise (colour or gray), JPEG; then the same again with milder settings, a final
sinc filter, JPEG, and a resize back to the input size (DiffBIR restores at 1x).

``codeformer``: the simpler pipeline of DiffBIR's stage-1 and v2 stage-2 training
(``CodeformerDataset``): blur (iso/aniso Gaussian, 41x41, sigma 0.1-12), bilinear downsampling by 1-12x,
Gaussian noise (sigma 0-15 on the 0-255 scale), JPEG quality 30-100, bilinear resize back.

Every kernel is built here from its formula. Randomness comes only from a ``torch.Generator`` per image,
seeded with ``seed + index in batch``, so a seed always gives the same result and image i of a batch is
the same as a batch of one with seed + i.

Known differences from the official code (documented in docs/userready.md):
- JPEG: the official Real-ESRGAN pipeline uses DiffJPEG (a torch re-implementation of baseline JPEG);
  here ``kornia.enhance.jpeg_codec_differentiable`` (the same kind of re-implementation). The official
  CodeFormer-style pipeline uses OpenCV's libjpeg; here Pillow's libjpeg (4:2:0 chroma, like OpenCV's
  default). Either pipeline can use either codec (``jpeg`` = "kornia" / "pil").
- The random draws come from torch, not numpy/random, so no seed reproduces an official sample.
- Real-ESRGAN's 256-sample shuffle queue (mixing samples across batches during training) is left out.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PIPELINES = ("realesrgan", "codeformer")
JPEG_CODECS = ("auto", "kornia", "pil")

# -- random draws ----------------------------------------------------------------------------------------------


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64))


def _choice(g: torch.Generator, options, probs=None):
    probs = torch.tensor(probs if probs is not None else [1.0] * len(options), dtype=torch.float64)
    index = int(torch.multinomial(probs / probs.sum(), 1, generator=g))
    return options[index]


def _split_beta(g: torch.Generator, lo: float, hi: float) -> float:
    """Real-ESRGAN's shape draw: half the time in [lo, 1], half in [1, hi] (so [1, 2] gives 1 half the time)."""
    return _uniform(g, lo, 1.0) if _uniform(g, 0.0, 1.0) < 0.5 else _uniform(g, 1.0, hi)


# -- kernels -----------------------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """x^T S^-1 x on the kernel grid, S = R diag(sx^2, sy^2) R^T (R: rotation by theta)."""
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    u = c * xx + s * yy  # coordinates in the rotated frame
    v = -s * xx + c * yy
    sigma_x, sigma_y = max(sigma_x, 1e-6), max(sigma_y, 1e-6)
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> torch.Tensor:
    """Bivariate Gaussian exp(-q/2), normalised to sum 1 (isotropic when sigma_x == sigma_y)."""
    k = torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta))
    return (k / k.sum()).float()


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """exp(-q^beta / 2): beta < 1 heavier tails than a Gaussian, beta > 1 a flatter top."""
    k = torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta) ** beta)
    return (k / k.sum()).float()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """1 / (1 + q^beta): a flat top with slowly decaying tails."""
    k = 1.0 / (1.0 + _quadratic_form(size, sigma_x, sigma_y, theta) ** beta)
    return (k / k.sum()).float()


def sinc_kernel(size: int, cutoff: float, pad_to: int = 0) -> torch.Tensor:
    """Circularly symmetric ideal low-pass (2-D sinc): k(r) = w J1(w r) / (2 pi r), k(0) = w^2 / (4 pi),
    normalised to sum 1; ringing and overshoot like real resampling and sharpening artefacts."""
    xx, yy = _grid(size)
    r = torch.sqrt(xx**2 + yy**2)
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    k = cutoff * torch.special.bessel_j1(cutoff * safe_r) / (2 * math.pi * safe_r)
    k = torch.where(r == 0, torch.full_like(r, cutoff**2 / (4 * math.pi)), k)
    k = k / k.sum()
    return pad_kernel(k.float(), pad_to)


def pad_kernel(k: torch.Tensor, size: int) -> torch.Tensor:
    if size <= k.shape[-1]:
        return k
    p = (size - k.shape[-1]) // 2
    return F.pad(k, (p, p, p, p))


def pulse_kernel(size: int = 21) -> torch.Tensor:
    k = torch.zeros(size, size)
    k[size // 2, size // 2] = 1.0
    return k


def random_mixed_kernel(g: torch.Generator, kinds, probs, size: int, sigma_range, rotation_range=(-math.pi, math.pi),
                        betag_range=(0.5, 4.0), betap_range=(1.0, 2.0)) -> torch.Tensor:
    """One kernel of a kind drawn from ``kinds`` (iso, aniso, generalized_iso, generalized_aniso,
    plateau_iso, plateau_aniso). Isotropic kinds have one sigma and no rotation."""
    kind = _choice(g, kinds, probs)
    sigma_x = _uniform(g, *sigma_range)
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y = _uniform(g, *sigma_range)
        theta = _uniform(g, *rotation_range)
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _split_beta(g, *betag_range))
    if kind.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, theta, _split_beta(g, *betap_range))
    return gaussian_kernel(size, sigma_x, sigma_y, theta)


# -- image operations (NCHW float in [0, 1], one image) -----------------------------------------------------------


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolution with reflect padding (OpenCV's default border and Real-ESRGAN's filter2D)."""
    from kornia.filters import filter2d

    # reflect padding needs an image larger than half the kernel; tiny images fall back to replicate
    border = "reflect" if min(x.shape[-2:]) > kernel.shape[-1] // 2 else "replicate"
    return filter2d(x, kernel[None].to(x), border_type=border)


def resize(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.2989, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def add_gaussian_noise(g: torch.Generator, x: torch.Tensor, sigma: float, gray: bool) -> torch.Tensor:
    """Additive N(0, sigma/255); ``gray``: one noise plane for all channels (luminance noise)."""
    shape = (x.shape[0], 1 if gray else x.shape[1], *x.shape[2:])
    noise = torch.randn(shape, generator=g, dtype=x.dtype) * (sigma / 255.0)
    return x + noise


def add_poisson_noise(g: torch.Generator, x: torch.Tensor, scale: float, gray: bool) -> torch.Tensor:
    """Shot noise: Poisson(img * v) / v with v the number of distinct 8-bit levels rounded up to a power of
    two, the noise (difference) multiplied by ``scale``; ``gray``: noise of the luminance on all channels."""
    src = _gray(x) if gray else x
    src = torch.clamp((src * 255.0).round(), 0, 255) / 255.0
    levels = 2 ** math.ceil(math.log2(max(len(torch.unique(src)), 1)))
    noise = torch.poisson(src * levels, generator=g) / levels - src
    return x + noise * scale


def jpeg(x: torch.Tensor, quality: float, codec: str) -> torch.Tensor:
    x = x.clamp(0, 1)
    if codec == "kornia":
        from kornia.enhance import jpeg_codec_differentiable

        return jpeg_codec_differentiable(x, torch.tensor([float(quality)], dtype=x.dtype)).clamp(0, 1)
    from PIL import Image

    array = (x[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality), subsampling="4:2:0")
    buffer.seek(0)
    import numpy as np

    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(decoded).permute(2, 0, 1)[None].to(x)


def usm_sharpen(x: torch.Tensor, radius: int = 50, weight: float = 0.5, threshold: float = 10) -> torch.Tensor:
    """Unsharp masking as in Real-ESRGAN's training (applied to the clean image before degrading):
    51x51 Gaussian (sigma 8, OpenCV's default for that size), sharpened only where the detail exceeds
    ``threshold``/255, blended through a blurred mask."""
    from kornia.filters import filter2d_separable

    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    k1 = torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / sigma) ** 2)
    k1 = (k1 / k1.sum()).float()[None].to(x)  # the 2-D Gaussian is separable: outer(k1, k1)
    border = "reflect" if min(x.shape[-2:]) > size // 2 else "replicate"
    blurred = filter2d_separable(x, k1, k1, border_type=border)
    residual = x - blurred
    mask = (residual.abs() * 255 > threshold).to(x.dtype)
    soft = filter2d_separable(mask, k1, k1, border_type=border)
    sharp = (x + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * x


# -- pipelines -----------------------------------------------------------------------------------------------------


def _toward(clean: float, value: float, t: float) -> float:
    """``value`` moved toward the no-degradation value ``clean``: t=1 the official value, t=0 clean."""
    return clean + t * (value - clean)


@dataclass
class RealESRGANSettings:
    """DiffBIR v2.1's training settings (train_stage2_v2.1.yaml), scaled by ``intensity``."""

    intensity: float = 1.0
    scale: float = 4.0  # stage2_scale: the second degradation works at 1/scale of the input size
    kinds = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
    kind_probs = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)

    def ranges(self):
        t = self.intensity
        return dict(
            sigma1=(_toward(0, 0.2, t), _toward(0, 3.0, t)), sigma2=(_toward(0, 0.2, t), _toward(0, 1.5, t)),
            resize1=(_toward(1, 0.15, t), _toward(1, 1.5, t)), resize2=(_toward(1, 0.3, t), _toward(1, 1.2, t)),
            noise1=(_toward(0, 1, t), _toward(0, 30, t)), noise2=(_toward(0, 1, t), _toward(0, 25, t)),
            poisson1=(_toward(0, 0.05, t), _toward(0, 3.0, t)), poisson2=(_toward(0, 0.05, t), _toward(0, 2.5, t)),
            jpeg1=(_toward(100, 30, t), _toward(100, 95, t)), jpeg2=(_toward(100, 30, t), _toward(100, 95, t)),
            sinc_low=_toward(math.pi, math.pi / 3, t), sinc_low_large=_toward(math.pi, math.pi / 5, t),
        )


def _stage_kernel(g, r, sigma_range, size_choices=tuple(range(7, 22, 2)), sinc_prob=0.1):
    size = _choice(g, size_choices)
    if _uniform(g, 0, 1) < sinc_prob:
        low = r["sinc_low"] if size < 13 else r["sinc_low_large"]
        k = sinc_kernel(size, _uniform(g, low, math.pi))
    else:
        k = random_mixed_kernel(g, RealESRGANSettings.kinds, RealESRGANSettings.kind_probs, size, sigma_range)
    return pad_kernel(k, 21)


def _resize_step(g, x, target_hw, probs, scale_range):
    updown = _choice(g, ("up", "down", "keep"), probs)
    if updown == "up":
        s = _uniform(g, 1, scale_range[1])
    elif updown == "down":
        s = _uniform(g, scale_range[0], 1)
    else:
        s = 1.0
    mode = _choice(g, ("area", "bilinear", "bicubic"))
    return resize(x, (int(target_hw[0] * s), int(target_hw[1] * s)), mode)


def _noise_step(g, x, gauss_range, poisson_range):
    if _uniform(g, 0, 1) < 0.5:
        sigma = _uniform(g, *gauss_range)
        gray = _uniform(g, 0, 1) < 0.4
        x = add_gaussian_noise(g, x, sigma, gray)
    else:
        scale = _uniform(g, *poisson_range)
        gray = _uniform(g, 0, 1) < 0.4
        x = add_poisson_noise(g, x, scale, gray)
    return x.clamp(0, 1)


def degrade_realesrgan(x: torch.Tensor, g: torch.Generator, settings: RealESRGANSettings, codec: str = "kornia",
                       sharpen: bool = True, low_resolution: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(degraded, clean) for one image x [1,3,H,W]; ``clean`` is the image the degradation starts from
    (USM-sharpened when ``sharpen``, as DiffBIR's training target)."""
    r = settings.ranges()
    h, w = x.shape[-2:]
    # kernels first, as the dataset draws them before the batch transform
    k1 = _stage_kernel(g, r, r["sigma1"])
    k2 = _stage_kernel(g, r, r["sigma2"])
    if _uniform(g, 0, 1) < 0.8:
        k_final = pad_kernel(sinc_kernel(_choice(g, tuple(range(7, 22, 2))), _uniform(g, r["sinc_low"], math.pi)), 21)
    else:
        k_final = pulse_kernel(21)
    clean = usm_sharpen(x) if sharpen else x
    # first degradation
    out = blur(clean, k1)
    out = _resize_step(g, out, (h, w), (0.2, 0.7, 0.1), r["resize1"])
    out = _noise_step(g, out, r["noise1"], r["poisson1"])
    out = jpeg(out, _uniform(g, *r["jpeg1"]), codec)
    # second degradation
    if _uniform(g, 0, 1) < 0.8:
        out = blur(out, k2)
    h2, w2 = int(h / settings.scale), int(w / settings.scale)
    out = _resize_step(g, out, (h2, w2), (0.3, 0.4, 0.3), r["resize2"])
    out = _noise_step(g, out, r["noise2"], r["poisson2"])
    if _uniform(g, 0, 1) < 0.5:
        out = resize(out, (h2, w2), _choice(g, ("area", "bilinear", "bicubic")))
        out = blur(out, k_final)
        out = jpeg(out, _uniform(g, *r["jpeg2"]), codec)
    else:
        out = jpeg(out, _uniform(g, *r["jpeg2"]), codec)
        out = resize(out, (h2, w2), _choice(g, ("area", "bilinear", "bicubic")))
        out = blur(out, k_final)
    if not low_resolution and (h2, w2) != (h, w):
        out = resize(out, (h, w), "bicubic")
    out = torch.clamp((out * 255.0).round(), 0, 255) / 255.0
    return out, clean


@dataclass
class CodeFormerSettings:
    """DiffBIR's stage-1 training settings (train_stage1.yaml), scaled by ``intensity``; ``scale`` > 0
    fixes the downsampling factor instead of drawing it from [1, 12]."""

    intensity: float = 1.0
    scale: float = 0.0

    def ranges(self):
        t = self.intensity
        return dict(sigma=(_toward(0, 0.1, t), _toward(0, 12.0, t)), downsample=(1.0, _toward(1, 12.0, t)),
                    noise=(0.0, _toward(0, 15.0, t)), jpeg=(_toward(100, 30, t), 100.0))


def degrade_codeformer(x: torch.Tensor, g: torch.Generator, settings: CodeFormerSettings, codec: str = "pil",
                       low_resolution: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    r = settings.ranges()
    h, w = x.shape[-2:]
    k = random_mixed_kernel(g, ("iso", "aniso"), (0.5, 0.5), 41, r["sigma"])
    out = blur(x, k)
    scale = settings.scale if settings.scale > 0 else _uniform(g, *r["downsample"])
    out = resize(out, (int(h // scale), int(w // scale)), "bilinear")
    out = add_gaussian_noise(g, out, _uniform(g, *r["noise"]), gray=False).clamp(0, 1)
    out = jpeg(out, _uniform(g, *r["jpeg"]), codec)
    if not low_resolution:
        out = resize(out, (h, w), "bilinear")
    return out.clamp(0, 1), x


def synthesize(images: torch.Tensor, pipeline: str, seed: int, intensity: float = 1.0, scale: float = 0.0,
               jpeg_codec: str = "auto", sharpen: bool = True, low_resolution: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrades a batch NCHW in [0,1] (RGB). Image i uses a generator seeded with ``seed + i``.
    ``scale`` 0 = the pipeline's official value (realesrgan: 4; codeformer: random 1-12).
    Returns (degraded, clean), each NCHW; with ``low_resolution`` the degraded images keep the size they
    have before the final resize back (so every image of a batch needs the same fixed scale)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown degradation pipeline {pipeline!r}; choose one of {', '.join(PIPELINES)}")
    if jpeg_codec not in JPEG_CODECS:
        raise ValueError(f"unknown JPEG codec {jpeg_codec!r}; choose one of {', '.join(JPEG_CODECS)}")
    if low_resolution and pipeline == "codeformer" and scale <= 0 and images.shape[0] > 1:
        raise ValueError("low-resolution output of the codeformer pipeline with a random downsampling factor "
                         "gives every image its own size; set scale > 0 to degrade a batch at one size")
    codec = jpeg_codec if jpeg_codec != "auto" else ("kornia" if pipeline == "realesrgan" else "pil")
    degraded, clean = [], []
    for i in range(images.shape[0]):
        g = torch.Generator(device="cpu").manual_seed((int(seed) + i) % (2**63))
        x = images[i:i + 1].float().cpu()
        if pipeline == "realesrgan":
            settings = RealESRGANSettings(intensity=intensity, scale=scale if scale > 0 else 4.0)
            d, c = degrade_realesrgan(x, g, settings, codec, sharpen, low_resolution)
        else:
            d, c = degrade_codeformer(x, g, CodeFormerSettings(intensity=intensity, scale=scale), codec,
                                      low_resolution)
        degraded.append(d)
        clean.append(c)
    return torch.cat(degraded), torch.cat(clean)
