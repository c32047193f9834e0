"""Every size one image goes through under a pipeline's rules (``plan``), with the official
rounding of each version."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import tiling
from .rules import Rules, Settings


def scaled_size(h: int, w: int, factor: float, ceil: bool = False) -> tuple[int, int]:
    """``(int(h * factor), int(w * factor))`` as the official loops compute it (PIL takes (w, h));
    ``ceil`` for the v1 release."""
    if ceil:
        return math.ceil(h * factor), math.ceil(w * factor)
    return int(h * factor), int(w * factor)


def short_edge_size(h: int, w: int, size: int) -> tuple[int, int]:
    """The official ``resize_short_edge_to``: short side to ``size``, long side ``int(long * size / short)``."""
    if h == w:
        return size, size
    if h < w:
        return size, int(w * (size / h))
    return int(h * (size / w)), size


def short_edge_size_v1(h: int, w: int, size: int) -> tuple[int, int]:
    """The v1 release ``auto_resize``: both sides ``ceil(n * size / short)`` when the short side is smaller."""
    if min(h, w) >= size:
        return h, w
    r = size / min(h, w)
    return math.ceil(h * r), math.ceil(w * r)


@dataclass(frozen=True)
class Plan:
    """Every size one image goes through (height, width)."""

    rules: Rules
    input: tuple[int, int]
    requested: tuple[int, int]  # the official output_size: what the whole DiffBIR pipeline returns in the end
    pre_resize: tuple[int, int] | None  # PIL bicubic (pre-upscale)
    short_before: tuple[int, int] | None  # short-side rule before the network
    model_input: tuple[int, int]
    tiled: bool  # tiles actually used (the official skip rule applied)
    model_output: tuple[int, int]
    back_to: tuple[int, int] | None  # a scaling model under 1x rules: its output is resized back to this
    post_resize: tuple[int, int] | None  # after the network: short side or requested size
    output: tuple[int, int]


def plan(h: int, w: int, rules: Rules, scale: int, settings: Settings) -> Plan:
    """The official sizes for an ``h`` x ``w`` input under ``rules`` for a network of ``scale``."""
    if h < 1 or w < 1:
        raise ValueError(f"the image is empty ({w}x{h} pixels)")
    if not settings.upscale > 0:
        raise ValueError(f"upscale must be positive, got {settings.upscale}")
    up = settings.upscale
    requested = scaled_size(h, w, up, rules.ceil_sizes)
    if rules.ceil_sizes and up == 1:
        requested = (h, w)
    if min(requested) < 1:
        raise ValueError(f"upscale {up} of a {w}x{h} image gives an empty {requested[1]}x{requested[0]} image")
    minimum = settings.min_short_side
    size = (h, w)
    pre_resize = short_before = None
    if rules.pre_upscale and requested != size:
        pre_resize = size = requested
    tiled = settings.tiled and tiling.tiling_applies(size[0], size[1], settings.tile_size)
    if rules.short_side == "before_pil" and minimum > 0:
        resized = short_edge_size_v1(*size, minimum)
        if resized != size:
            short_before = size = resized
        tiled = settings.tiled and tiling.tiling_applies(size[0], size[1], settings.tile_size)
    elif rules.short_side == "swinir" and not tiled and minimum > 0 and min(size) < minimum:
        short_before = size = short_edge_size(*size, minimum)
    model_input = size
    model_output = (size[0] * scale, size[1] * scale)
    size = model_output
    back_to = None
    if rules.pre_upscale and scale != 1:
        back_to = size = model_input
    post = None
    if rules.short_side == "requested":
        post = short_edge_size(*size, minimum) if minimum > 0 and min(requested) < minimum else requested
    elif rules.short_side in ("after", "swinir") and minimum > 0 and min(size) < minimum:
        if rules.short_side == "after" or tiled:
            post = short_edge_size(*size, minimum)
    if post is not None:
        size = post
    return Plan(rules, (h, w), requested, pre_resize, short_before, model_input, tiled, model_output, back_to, post,
                size)
