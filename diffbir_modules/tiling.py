"""Sliding windows with gaussian blending: DiffBIR's tiled execution (``make_tiled_fn`` in the
official ``diffbir/utils/common.py``), written once for every tiled job of the pack (stage-1 cleaner,
diffusion model, VAE).

A function ``fn`` is run on overlapping square (or rectangular) windows of the input; each result is
multiplied by a weight map and accumulated, and the sum is divided by the summed weights. The input
and output may differ in resolution by a constant ``scale`` (4 for BSRNet, 1/8 for a VAE encoder,
8 for a decoder): window coordinates are mapped with ``floor(n * scale)`` as the official code does
(``int(n * scale)`` up, ``int(n // scale)`` down), and the weights are built at the output
resolution of a window.

Official facts reproduced here:
- windows start at ``range(0, h - size + 1, stride)`` plus one flush with the end when that range
  does not reach it (``sliding_windows``);
- the gaussian weight (from mixture-of-diffusers / CCSR) uses variance 0.01 of the normalised
  position, and the official code centres the x profile at ``(w - 1) / 2`` but the y profile at
  ``h / 2`` (an asymmetric quirk, kept behind ``official_midpoint``);
- the caller skips tiling altogether when the input is smaller than one tile in either dimension
  (``tiling_applies``); the official pipelines then run the function on the whole input.

Pure torch; nothing here imports ComfyUI (progress and cancel come in through ``on_tile``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch

Window = tuple[int, int, int, int]  # (top, bottom, left, right), half-open, as the official (hi, hi_end, wi, wi_end)

WEIGHTINGS = ("gaussian", "uniform")


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, Sequence):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or an (height, width) pair, got {value!r}")
        a, b = int(value[0]), int(value[1])
    else:
        a = b = int(value)
    if a < 1 or b < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
    return a, b


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:  # one window covering everything (the official code never gets here: it skips tiling)
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if (length - size) % stride != 0:
        starts.append(length - size)
    return starts


def sliding_windows(h: int, w: int, size, stride) -> list[Window]:
    """Windows ``(top, bottom, left, right)`` covering an ``h`` x ``w`` grid, row by row, exactly as the
    official ``sliding_windows``: starts every ``stride`` from 0 and one last window flush with the end
    when the stride does not land there. ``size``/``stride`` are an int or an (h, w) pair. A side not
    longer than the window gets one window of the whole side (where the official code would produce a
    negative start; it never calls it so, see ``tiling_applies``)."""
    size_h, size_w = _pair(size, "tile size")
    stride_h, stride_w = _pair(stride, "tile stride")
    if h < 1 or w < 1:
        raise ValueError(f"cannot tile an empty {h}x{w} input")
    rows = _starts(h, size_h, stride_h)
    cols = _starts(w, size_w, stride_w)
    return [(top, min(top + size_h, h), left, min(left + size_w, w)) for top in rows for left in cols]


def tiling_applies(h: int, w: int, size) -> bool:
    """The official rule for when to tile at all: only if the input is at least one tile in BOTH
    dimensions ("the input size is tiny and unnecessary to tile" otherwise)."""
    size_h, size_w = _pair(size, "tile size")
    return h >= size_h and w >= size_w


def gaussian_weights(width: int, height: int, official_midpoint: bool = True, var: float = 0.01) -> torch.Tensor:
    """Gaussian tile weights [height, width] in float64, as the official ``gaussian_weights``:
    ``exp(-(i - mid)^2 / n^2 / (2 var)) / sqrt(2 pi var)`` per axis, outer product y x x.

    ``official_midpoint=True`` reproduces the official asymmetry: the x profile is centred at
    ``(width - 1) / 2`` but the y profile at ``height / 2`` (so rows weigh slightly towards the bottom).
    ``False`` centres both at ``(n - 1) / 2`` (symmetric)."""
    if width < 1 or height < 1:
        raise ValueError(f"weights need a positive size, got {width}x{height}")

    def profile(n: int, mid: float) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float64)
        return torch.exp(-(i - mid) * (i - mid) / (n * n) / (2 * var)) / math.sqrt(2 * math.pi * var)

    x = profile(width, (width - 1) / 2)
    y = profile(height, height / 2 if official_midpoint else (height - 1) / 2)
    return torch.outer(y, x)


def tile_weights(width: int, height: int, weighting: str = "gaussian", official_midpoint: bool = True) -> torch.Tensor:
    """Weights [height, width] (float64) for one tile's output: ``"gaussian"`` or ``"uniform"`` (ones)."""
    if weighting == "gaussian":
        return gaussian_weights(width, height, official_midpoint)
    if weighting == "uniform":
        return torch.ones(height, width, dtype=torch.float64)
    raise ValueError(f"unknown tile weighting {weighting!r}; expected one of {WEIGHTINGS}")


def _as_fraction(scale) -> Fraction:
    fraction = Fraction(scale).limit_denominator(4096) if not isinstance(scale, Fraction) else scale
    if fraction <= 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return fraction


def scale_length(n: int, scale) -> int:
    """``floor(n * scale)``: the official ``int(n * scale)`` for up-scaling and ``int(n // k)`` for
    down-scaling by k (pass ``scale=Fraction(1, k)`` or ``1 / k``)."""
    fraction = _as_fraction(scale)
    return (n * fraction.numerator) // fraction.denominator


def count_tiles(h: int, w: int, size, stride) -> int:
    return len(sliding_windows(h, w, size, stride))


def tiled_apply(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    size,
    stride,
    scale=1,
    weighting: str = "gaussian",
    official_midpoint: bool = True,
    out_channels: int | None = None,
    out_dtype: torch.dtype | None = None,
    out_device: torch.device | str | None = None,
    pass_window: bool = False,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Runs ``fn`` on overlapping windows of ``x`` ([B, C, H, W]) and blends the results.

    - ``size``/``stride``: window size and step in input pixels (int or (h, w)).
    - ``scale``: output/input resolution ratio of ``fn`` (4 for a x4 model, 1/8 for a VAE encoder);
      window coordinates and the weight size are mapped with ``floor(n * scale)``.
    - ``weighting``: ``"gaussian"`` (official) or ``"uniform"``; ``official_midpoint`` as in
      ``gaussian_weights``. Weights are built once at the output size of a full window. Windows are
      never smaller than ``size`` unless the input itself is (then one window of the input covers the
      side; the weights are built for that size).
    - ``fn(tile)``, or ``fn(tile, window)`` with ``pass_window=True`` (window = input coordinates
      (top, bottom, left, right), e.g. to slice a condition tensor alongside).
    - ``out_channels``/``out_dtype``/``out_device``: of the result (default: those of ``x``); the tile
      outputs are moved there before accumulation, so a big result can live on the CPU while ``fn``
      runs elsewhere. Accumulation is in float32 (the official ``count`` is float32; its sum is in
      ``x``'s dtype, the same for float32 inputs).
    - ``on_tile(done, total)`` is called after each window (progress bars, cancellation).

    The official code divides by the summed weights everywhere; every output pixel is covered by at
    least one window, so the division is always defined.
    """
    if x.ndim != 4:
        raise ValueError(f"tiled_apply expects [batch, channels, height, width], got {tuple(x.shape)}")
    b, c, h, w = x.shape
    windows = sliding_windows(h, w, size, stride)
    out_h, out_w = scale_length(h, scale), scale_length(w, scale)
    out_device = torch.device(out_device) if out_device is not None else x.device
    out_dtype = out_dtype or x.dtype
    acc = None
    count = torch.zeros((1, 1, out_h, out_w), dtype=torch.float32, device=out_device)
    weight_cache: dict[tuple[int, int], torch.Tensor] = {}
    for index, (top, bottom, left, right) in enumerate(windows):
        tile = x[..., top:bottom, left:right]
        result = fn(tile, (top, bottom, left, right)) if pass_window else fn(tile)
        o_top, o_bottom, o_left, o_right = (scale_length(v, scale) for v in (top, bottom, left, right))
        expected = (o_bottom - o_top, o_right - o_left)
        if tuple(result.shape[-2:]) != expected:
            raise RuntimeError(f"the tiled function returned {tuple(result.shape[-2:])} for a "
                               f"{bottom - top}x{right - left} tile; expected {expected} (scale {scale})")
        if acc is None:
            channels = out_channels or result.shape[1]
            acc = torch.zeros((b, channels, out_h, out_w), dtype=torch.float32, device=out_device)
        weight = weight_cache.get(expected)
        if weight is None:
            weight = tile_weights(expected[1], expected[0], weighting, official_midpoint)
            weight = weight.to(dtype=torch.float32, device=out_device)[None, None]
            weight_cache[expected] = weight
        acc[..., o_top:o_bottom, o_left:o_right] += result.to(device=out_device, dtype=torch.float32) * weight
        count[..., o_top:o_bottom, o_left:o_right] += weight
        del result
        if on_tile is not None:
            on_tile(index + 1, len(windows))
    return (acc / count).to(out_dtype)
