"""Conversions between ComfyUI IMAGE tensors ([B,H,W,C] float32 in [0,1], on the CPU) and the
NCHW tensors the networks use, with the alpha channel kept apart."""

import numpy as np
import torch
import torch.nn.functional as F


def split_alpha(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """IMAGE [B,H,W,C] with C in (1, 3, 4) -> (rgb NCHW, alpha N1HW or None). Gray becomes RGB."""
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE tensor [batch, height, width, channels], got shape {tuple(image.shape)}")
    channels = image.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(f"expected 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {channels}")
    nchw = image.movedim(-1, 1).float()
    if channels == 1:
        return nchw.expand(-1, 3, -1, -1).contiguous(), None
    if channels == 4:
        return nchw[:, :3].contiguous(), nchw[:, 3:].contiguous()
    return nchw.contiguous(), None


def join_alpha(rgb: torch.Tensor, alpha: torch.Tensor | None, clamp: bool = True) -> torch.Tensor:
    """rgb NCHW (+ alpha N1HW, resized to rgb's size if needed) -> IMAGE [B,H,W,C] float32 on CPU, clipped to
    [0,1] unless ``clamp`` is off (the official pipelines carry unclipped values between their stages)."""
    if alpha is not None:
        if alpha.shape[-2:] != rgb.shape[-2:]:
            alpha = resize(alpha.to(rgb), rgb.shape[-2:]).clamp(0.0, 1.0)
        rgb = torch.cat([rgb, alpha.to(rgb)], dim=1)
    if clamp:
        rgb = rgb.clamp(0.0, 1.0)
    return rgb.movedim(1, -1).to(device="cpu", dtype=torch.float32).contiguous()


def resize(x: torch.Tensor, size, mode: str = "bicubic") -> torch.Tensor:
    """Resize NCHW to ``size`` (h, w) with antialiasing when shrinking (torch's bicubic/bilinear)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


OUTPUT_RESIZES = ("bicubic_antialias", "lanczos_uint8", "bicubic_uint8")
_PIL_FILTERS = {"lanczos_uint8": "LANCZOS", "bicubic_uint8": "BICUBIC"}


def resize_to_output(rgb: torch.Tensor, size, method: str) -> torch.Tensor:
    """The official last step: the restored image (NCHW float, unclipped) to the requested ``size`` (h, w).
    bicubic_antialias (v2 / v2.1): torch bicubic with antialias on the float tensor, always called, then
    the caller clips. lanczos_uint8 (v1): clipped and truncated to uint8, PIL LANCZOS, back to float.
    bicubic_uint8: the same with PIL BICUBIC (the official upscale of the whole photo before face
    detection and of the input of a custom run); a loaded 8-bit image round-trips exactly."""
    size = (int(size[0]), int(size[1]))
    if method == "bicubic_antialias":
        return F.interpolate(rgb.float(), size=size, mode="bicubic", antialias=True)
    if method not in _PIL_FILTERS:
        raise ValueError(f"unknown resize method {method!r}; choose one of {', '.join(OUTPUT_RESIZES)}")
    from PIL import Image

    out = []
    for x in rgb:
        # v1 converts with clip + astype(uint8), which truncates: kept for parity
        array = (x.permute(1, 2, 0).float().cpu().numpy() * 255).clip(0, 255).astype(np.uint8)
        resized = Image.fromarray(array).resize((size[1], size[0]), getattr(Image, _PIL_FILTERS[method]))
        out.append(torch.from_numpy(np.asarray(resized).astype(np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out).to(rgb.device)


def match_batch(a: torch.Tensor, b: torch.Tensor, names=("image", "reference")) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcasts a batch of 1 against a batch of N; other mismatches are an error."""
    if a.shape[0] == b.shape[0]:
        return a, b
    if b.shape[0] == 1:
        return a, b.expand(a.shape[0], *b.shape[1:])
    if a.shape[0] == 1:
        return a.expand(b.shape[0], *a.shape[1:]), b
    raise ValueError(f"{names[0]} has a batch of {a.shape[0]} and {names[1]} a batch of {b.shape[0]}: "
                     "give both the same batch size, or a batch of 1 for one of them")
