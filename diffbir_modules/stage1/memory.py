"""When stage 1 does not fit: tiles chosen before running from the free memory, and the
out-of-memory fallback (tiled, then smaller tiles) as ComfyUI's own upscale node does."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import torch

from .. import comfy_compat
from .architectures import Cleaner
from .rules import Settings
from .sizes import Plan

log = logging.getLogger(__name__)


OOM_ERRORS = tuple({e for e in (getattr(torch, "OutOfMemoryError", None),
                                getattr(torch.cuda, "OutOfMemoryError", None)) if e is not None})


def is_oom(error: BaseException) -> bool:
    """GPU out-of-memory (as torch or the running ComfyUI tells it), or the CPU allocator failing (a
    RuntimeError saying so)."""
    if isinstance(error, MemoryError) or (OOM_ERRORS and isinstance(error, OOM_ERRORS)):
        return True
    if comfy_compat.runtime_says_out_of_memory(error):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def halve_tiles(settings: Settings, floor: int) -> Settings | None:
    """The next try after an out-of-memory error: tiles on, then half the tile (and stride) down to
    ``floor``; None when there is nothing smaller left to try."""
    if not settings.tiled:
        return replace(settings, tiled=True)
    if settings.tile_size // 2 < floor:
        return None
    return replace(settings, tile_size=settings.tile_size // 2, tile_stride=max(1, settings.tile_stride // 2))


def tile_floor(cleaner: Cleaner) -> int:
    """The smallest tile worth trying: 64 px, or the model's own size multiple/minimum if larger."""
    return max(64, cleaner.multiple, cleaner.minimum)


def run_with_fallback(images: torch.Tensor, cleaner: Cleaner, settings: Settings,
                      attempt: Callable[[Settings], torch.Tensor],
                      on_oom: Callable[[BaseException, Settings], None] | None = None) -> torch.Tensor:
    """Calls ``attempt(settings)``; on out-of-memory retries tiled, halving the tile down to
    ``tile_floor`` (as ComfyUI's own upscale node does), then raises a clear error."""
    current = settings
    while True:
        try:
            return attempt(current)
        except Exception as error:  # noqa: BLE001 - re-raised unless it is an out-of-memory error
            if not is_oom(error):
                raise
            following = halve_tiles(current, tile_floor(cleaner))
            if following is None:
                size = f"{images.shape[2]}x{images.shape[1]}"
                message = (f"out of memory in DiffBIR stage 1 ({cleaner.name}) on a {size} image, even in tiles of "
                           f"{current.tile_size} px (the smallest tried). Free memory "
                           "(close other programs, unload models), run ComfyUI with --lowvram or on the CPU, or "
                           "lower the upscale factor.")
                oom_class = OOM_ERRORS[0] if OOM_ERRORS else MemoryError
                raise oom_class(message) from error
            if on_oom is not None:
                on_oom(error, following)
            log.warning("DiffBIR stage 1: out of memory; retrying with %d px tiles (stride %d)",
                        following.tile_size, following.tile_stride)
            current = following


def fit_to_memory(settings: Settings, the_plan: Plan, cleaner: Cleaner, free: float,
                  estimate: Callable[[int], float]) -> Settings:
    """Untiled settings whose model input would not fit in ``free`` bytes (``estimate(pixels)``)
    become tiled ones: the settings' tile, halved while a tile still does not fit (down to
    ``tile_floor``). Settings that already tile, or that fit, are returned unchanged. Why before
    trying: a CPU has no out-of-memory error to recover from, only swapping or the OS killing
    ComfyUI; on a GPU it saves a failed first try."""
    if settings.tiled or estimate(the_plan.model_input[0] * the_plan.model_input[1]) <= free:
        return settings
    current = replace(settings, tiled=True)
    while estimate(current.tile_size ** 2) > free:
        following = halve_tiles(current, tile_floor(cleaner))
        if following is None:
            break
        current = following
    return current
