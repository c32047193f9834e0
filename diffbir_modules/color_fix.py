"""Colour correction of the diffusion output towards the stage-1 image (DiffBIR post-processing).

DiffBIR keeps the high frequencies of the generated image and takes its low frequencies (overall
colour and shading) from the stage-1 output: ``wavelet`` (the default of every version) or a
per-channel mean/std transfer, ``adain`` (v1's alternative). Both work on NCHW float tensors.
"""

import torch
import torch.nn.functional as F

WAVELET_LEVELS = 5


def _dilated_blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur with holes (a trous), replicate-padded, per channel."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=image.dtype, device=image.device)
    channels = image.shape[1]
    kernel = (kernel / 16.0).expand(channels, 1, 3, 3)
    padded = F.pad(image, (dilation, dilation, dilation, dilation), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=dilation)


def wavelet_split(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (high, low): the sum of the detail bands of ``levels`` a-trous levels, and the residual."""
    high = torch.zeros_like(image)
    low = image
    for level in range(levels):
        blurred = _dilated_blur(low, 2**level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``content`` + low frequencies of ``style`` (same shape, no clamp)."""
    if content.shape != style.shape:
        raise ValueError(f"colour fix needs images of the same size, got {tuple(content.shape)} "
                         f"and {tuple(style.shape)}")
    content_high, _ = wavelet_split(content)
    _, style_low = wavelet_split(style)
    return content_high + style_low


def adain_color_fix(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Gives each channel of ``content`` the mean and standard deviation of ``style``'s channel."""
    def mean_std(x):
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]

    content_mean, content_std = mean_std(content)
    style_mean, style_std = mean_std(style)
    return (content - content_mean) / content_std * style_std + style_mean
