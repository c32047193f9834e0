"""Colour correction of the diffusion output towards the stage-1 image (DiffBIR post-processing).

DiffBIR keeps the high frequencies of the generated image and takes its low frequencies (overall
colour and shading) from the stage-1 output: ``wavelet`` (the default of every version) or a
per-channel mean/std transfer, ``adain`` (v1's alternative). ``lab`` is our addition: the same mean/std
transfer in CIELAB (Reinhard-style colour transfer), where lightness and the two colour axes are
separate, so correcting a colour cast does not tint the shading. All work on NCHW float tensors.
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
        mean = flat.mean(dim=2)
        # the official unbiased variance; one pixel has none (NaN): no spread, so the result is the style's mean
        var = flat.var(dim=2) if flat.shape[2] > 1 else torch.zeros_like(mean)
        return mean[..., None, None], (var + eps).sqrt()[..., None, None]

    content_mean, content_std = mean_std(content)
    style_mean, style_std = mean_std(style)
    return (content - content_mean) / content_std * style_std + style_mean


# sRGB (D65) <-> CIELAB. Values outside [0, 1] (the official pipeline's unclipped decode) map through
# the odd extension of the sRGB curve and the linear branch of the Lab curve, so the round trip holds.
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_WHITE = _RGB_TO_XYZ.sum(dim=1)  # D65 white of the matrix (X, Y, Z for RGB = 1)
_DELTA = 6.0 / 29.0


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    a = c.abs()
    return torch.where(a <= 0.04045, c / 12.92, c.sign() * ((a + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    a = c.abs()
    return torch.where(a <= 0.0031308, c * 12.92, c.sign() * (1.055 * a ** (1 / 2.4) - 0.055))


def _mix(image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image.dtype), image)


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """NCHW sRGB -> L (0..100), a, b (D65), computed in float64."""
    xyz = _mix(_srgb_to_linear(image.double()), _RGB_TO_XYZ) / _WHITE.view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA**3, xyz.clamp(min=_DELTA**3) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rgb_to_lab`` (float64 in, float64 out)."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29)) * _WHITE.view(1, 3, 1, 1).to(lab.dtype)
    return _linear_to_srgb(_mix(xyz, torch.linalg.inv(_RGB_TO_XYZ)))


def lab_color_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``adain_color_fix`` in CIELAB: each of L, a, b of ``content`` gets ``style``'s mean and spread."""
    fixed = adain_color_fix(rgb_to_lab(content), rgb_to_lab(style))
    return lab_to_rgb(fixed).to(content.dtype)
