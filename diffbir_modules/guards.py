"""Checks at the door of the nodes: an input that would make a plausible-looking wrong image (NaN or
inf pixels, a start after the end, an image too small to encode) stops the run with a message that
names the node, the input and what to do. Each check is cheap (one reduction over the tensor)."""

from __future__ import annotations

import math

import torch


class InputError(ValueError):
    """An input a node cannot turn into a correct result; the message says which and what to do."""


def require_finite(node: str, name: str, x) -> None:
    """Stops when the floating-point tensor ``x`` (an IMAGE, MASK or LATENT) holds NaN or inf: one
    reduction, ``torch.isfinite(x).all()``; counted only when it fails."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        return
    if bool(torch.isfinite(x).all()):
        return
    nan = int(torch.isnan(x).sum())
    inf = int(torch.isinf(x).sum())
    raise InputError(
        f"{node}: the input '{name}' holds {nan} NaN and {inf} infinite values (of {x.numel()}), so the result "
        f"would be black or garbage. Check the node that made it (an upstream node that divides by zero, an fp16 "
        f"overflow: try the VAE or model in float32), or load the image again.")


def require_finite_settings(node: str, **settings: float) -> None:
    """Stops when a number setting is NaN or infinite: ComfyUI's min/max check lets them through (every
    comparison with NaN is false), and they come in from API prompts and linked primitives."""
    for name, value in settings.items():
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise InputError(f"{node}: the setting '{name}' is {value}, not a number this node can use: give a finite "
                             "value (the node's tooltip gives its range), or fix the node or prompt that sets it.")


def require_order(node: str, start_name: str, start: float, end_name: str, end: float) -> str | None:
    """The message when ``start`` is after ``end`` (None when they are in order, or when one of them is
    linked from another node: validation then sees None, and the node checks again when it runs)."""
    if start is not None and end is not None and float(start) > float(end):
        return (f"{node}: {start_name} ({start}) is after {end_name} ({end}), so the effect would be off for the "
                f"whole run. Set {start_name} <= {end_name} (0 and 1 apply it to every step).")
    return None


def require_range(name: str, value: float, low: float, high: float) -> str | None:
    """The message when ``value`` is outside [low, high] (for inputs whose range ComfyUI no longer checks
    because the node validates them itself); None (a linked input at validation time) passes."""
    if value is not None and not low <= float(value) <= high:
        return f"{name} must be between {low} and {high}, got {value}"
    return None


def require_min_size(node: str, name: str, x: torch.Tensor, minimum: int, why: str) -> None:
    """Stops when the IMAGE ``x`` [B,H,W,C] is smaller than ``minimum`` pixels on a side."""
    height, width = x.shape[1], x.shape[2]
    if height < minimum or width < minimum:
        raise InputError(f"{node}: the input '{name}' is {width}x{height} pixels; it needs at least {minimum}x"
                         f"{minimum} ({why}). Upscale or pad the image first.")
