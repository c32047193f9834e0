"""Stage 1 on images: input checks, one image through its plan (tiled or whole), a batch. Pure
torch/PIL: progress, cancel and devices come in from the caller."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import images as image_utils
from .. import tiling
from .architectures import Cleaner
from .resize import call_padded, pil_bicubic, torch_bicubic
from .rules import Rules, Settings, resolve_rules
from .sizes import Plan, plan


def validate_image(image: torch.Tensor) -> None:
    """IMAGE [B, H, W, C] checks with messages users can act on."""
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE [batch, height, width, channels], got shape {tuple(image.shape)}")
    b, h, w, c = image.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"the image is empty (batch {b}, {w}x{h} pixels): nothing to restore")
    if c not in (1, 3, 4):
        raise ValueError(f"expected 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {c}")
    finite = torch.isfinite(image.reshape(b, -1)).all(dim=1)
    if not bool(finite.all()):
        bad = [i for i in range(b) if not bool(finite[i])]
        raise ValueError(f"image(s) {bad} of the batch contain NaN or infinite values; the cleaner would turn "
                         "them into garbage. Fix the node that produced them (e.g. a VAE decode in fp16).")


def restore_one(x: torch.Tensor, cleaner: Cleaner, rules: Rules, settings: Settings, the_plan: Plan,
                device=None, dtype=None, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """One image [1, 3, H, W] float32 in [0, 1] (CPU) -> the stage-1 result [1, 3, h, w], unclamped,
    float32 on the CPU, following ``the_plan``."""
    x = x.contiguous()  # NCHW memory layout as the official tensors: other layouts pick other kernels (1e-6 apart)
    if the_plan.pre_resize is not None:
        x = pil_bicubic(x, the_plan.pre_resize, settings.resample)
    if the_plan.short_before is not None:
        if rules.short_side == "before_pil":
            x = pil_bicubic(x, the_plan.short_before, settings.resample)
        else:
            x = torch_bicubic(x, the_plan.short_before)
    run = lambda tile: call_padded(cleaner, rules, tile, device, dtype).to(device="cpu", dtype=torch.float32)
    if the_plan.tiled:
        if rules.tile_multiple_required and settings.tile_size % cleaner.multiple:
            raise ValueError(f"{cleaner.name}: the tile size must be a multiple of {cleaner.multiple} "
                             f"(got {settings.tile_size}), as the official code requires for this model")
        y = tiling.tiled_apply(run, x, settings.tile_size, settings.tile_stride, scale=cleaner.scale,
                               weighting=settings.weighting, official_midpoint=settings.official_midpoint,
                               out_device="cpu", out_dtype=torch.float32, on_tile=on_tile)
    else:
        y = run(x)
        if on_tile is not None:
            on_tile(1, 1)
    if not bool(torch.isfinite(y).all()):
        raise FloatingPointError(
            f"{cleaner.name} produced NaN or infinite values (weights in {dtype or 'their dtype'}). Use the model "
            "in float32, or check that the file is a trained stage-1 model.")
    if the_plan.back_to is not None:
        y = torch_bicubic(y, the_plan.back_to)
    if the_plan.post_resize is not None:
        y = torch_bicubic(y, the_plan.post_resize)
    return y


def tile_count(the_plan: Plan, settings: Settings) -> int:
    if not the_plan.tiled:
        return 1
    return tiling.count_tiles(*the_plan.model_input, settings.tile_size, settings.tile_stride)


def run_batch(images: torch.Tensor, cleaner: Cleaner, settings: Settings, device=None, dtype=None,
              on_tile: Callable[[int, int], None] | None = None,
              on_image: Callable[[int, Plan], None] | None = None) -> tuple[torch.Tensor, Plan]:
    """Stage 1 on an IMAGE batch [B, H, W, C] (RGB, gray or RGBA): each image on its own, with the
    official size rules; alpha is resized to the result and carried, never fed to the network.
    Returns (IMAGE [B, h, w, 3 or 4] float32 on the CPU, in [0, 1] when ``settings.clamp``, the plan)."""
    validate_image(images)
    rgb, alpha = image_utils.split_alpha(images)
    rules = resolve_rules(settings.rules, cleaner)
    outputs = []
    the_plan = None
    for i in range(rgb.shape[0]):
        the_plan = plan(rgb.shape[2], rgb.shape[3], rules, cleaner.scale, settings)
        if on_image is not None:
            on_image(i, the_plan)
        y = restore_one(rgb[i : i + 1], cleaner, rules, settings, the_plan, device, dtype, on_tile)
        outputs.append(y)
    out = torch.cat(outputs)
    return image_utils.join_alpha(out, alpha, clamp=settings.clamp), the_plan
