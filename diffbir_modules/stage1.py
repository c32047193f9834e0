"""DiffBIR stage 1, degradation removal: the size rules of the official pipelines around a
restoration network (SwinIR, BSRNet, SCUNet or any spandrel image model), tiled or whole.

The official code (``diffbir/pipeline.py`` and ``diffbir/inference/*_loop.py`` at v2.1.0 / main; the
same untiled rules at v2.0.0; ``inference.py`` of the v1 release 7bd5675) does, per pipeline:

- ``swinir`` (v1 and v2.1 every task, face in every version): the loop PIL-bicubic resizes the
  uint8 input by ``upscale`` (``int(n * upscale)``). Untiled: short side < 512 -> bicubic
  (antialias) resize of the short side to 512 *before* the network, zero-pad to a multiple of 64,
  run, crop. Tiled (only when the input is at least one tile on both sides; tile % 64 == 0): run
  tiled, then the short-side resize *after* the network.
- ``bsrnet`` (v2 sr): no pre-upscale; the network's own x4, tiled or not; then short side -> 512 if
  the requested size ``int(n * upscale)`` is < 512 on its short side, else a bicubic (antialias)
  resize to the requested size.
- ``scunet`` (v2 denoise): PIL pre-upscale, run (the network replicate-pads itself to 64), short
  side -> 512 after.
- ``v1_release`` (7bd5675): PIL pre-upscale with ``ceil`` sizes, then PIL bicubic resize of the short
  side to 512 (``ceil`` sizes), zero-pad to 64, run, crop (stage 1 never tiled there).

Plus ``generic`` for any other spandrel model ("auto" picks it): pre-upscale like SCUNet and pad to
the model's own size requirements.

Deliberate choices (see docs/stage1.md): the network is called directly (``descriptor.model``), not
through spandrel's ``__call__``, which clamps the output to [0, 1] and pads with its own rules; the
official pipelines do neither (the one clamp is at the very end, when the node returns an IMAGE).
SCUNet is replicate-padded to 64 here (the official network pads itself so; spandrel's copy reflects).

Pure torch/PIL down to ``run_batch``; ``load_cleaner`` and ``run_in_comfy`` import ComfyUI.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import comfy_compat, presets, tiling, weights_io

log = logging.getLogger(__name__)

RESAMPLERS = ("pil_uint8", "pil_float")


# -- rules -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rules:
    """What one official pipeline does around its network."""

    name: str
    pre_upscale: bool  # resize the input to the requested size first (1x cleaners); False: the model upscales
    ceil_sizes: bool  # v1 release: ceil(n * factor); others int(n * factor)
    short_side: str  # "swinir" (before untiled, after tiled) | "after" | "requested" (bsrnet) | "before_pil" (v1)
    pad_mode: str  # "constant" (zeros) | "replicate"
    pad_multiple: int | None  # fixed padding multiple; None: the model's own size requirement
    tile_multiple_required: bool  # the official code refuses tiles that are not a multiple of the model's


RULES = {
    "swinir": Rules("swinir", True, False, "swinir", "constant", None, True),
    "bsrnet": Rules("bsrnet", False, False, "requested", "replicate", None, False),
    "scunet": Rules("scunet", True, False, "after", "replicate", 64, False),
    "v1_release": Rules("v1_release", True, True, "before_pil", "constant", None, True),
    "generic": Rules("generic", True, False, "after", "replicate", None, False),
}


@dataclass(frozen=True)
class Cleaner:
    """A stage-1 network and what the size rules need to know about it."""

    module: torch.nn.Module  # called directly on [B, 3, H, W] in [0, 1]; output unclamped
    kind: str  # "swinir" | "bsrnet" | "scunet" | "other"
    scale: int
    multiple: int  # both sides must be a multiple of this
    minimum: int  # and at least this
    name: str = ""

    @classmethod
    def from_spandrel(cls, descriptor) -> Cleaner:
        """From a spandrel ImageModelDescriptor (ComfyUI's UPSCALE_MODEL)."""
        try:
            from spandrel import ImageModelDescriptor
        except ImportError:  # pragma: no cover - spandrel is a ComfyUI dependency
            ImageModelDescriptor = ()
        if ImageModelDescriptor and not isinstance(descriptor, ImageModelDescriptor):
            raise TypeError(
                f"the cleaner must be a single-image restoration model (a spandrel ImageModelDescriptor from "
                f"Load Upscale Model or DiffBIR Load Stage-1 Model), got {type(descriptor).__name__}")
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise ValueError(
                f"the cleaner {descriptor.architecture.name} takes {descriptor.input_channels} and returns "
                f"{descriptor.output_channels} channels; DiffBIR's stage 1 needs an RGB -> RGB model")
        arch = descriptor.architecture.id
        scale = int(descriptor.scale)
        if arch == "SwinIR":
            kind = "swinir"
        elif arch == "SCUNet":
            kind = "scunet"
        elif arch == "ESRGAN" and scale == 4:
            kind = "bsrnet"
        else:
            kind = "other"
        req = descriptor.size_requirements
        name = f"{descriptor.architecture.name} x{scale}"
        return cls(descriptor.model, kind, scale, max(1, req.multiple_of), max(1, req.minimum), name)


def auto_rules(cleaner: Cleaner) -> str:
    """The official pipeline for the network the model is: SwinIR -> swinir, SCUNet -> scunet,
    BSRNet (ESRGAN x4) -> bsrnet; another model upscaling by itself -> bsrnet, another 1x -> generic."""
    if cleaner.kind in ("swinir", "scunet", "bsrnet"):
        return cleaner.kind
    return "bsrnet" if cleaner.scale > 1 else "generic"


@dataclass(frozen=True)
class Settings:
    """The node's options. ``rules``: a key of RULES, a preset name ("v2.1 sr") or "auto"."""

    rules: str = "auto"
    upscale: float = 4.0
    min_short_side: int = presets.MIN_SHORT_SIDE  # 0 disables the short-side rule
    resample: str = "pil_uint8"
    tiled: bool = False
    tile_size: int = presets.CLEANER_TILE_SIZE
    tile_stride: int = presets.CLEANER_TILE_STRIDE
    weighting: str = "gaussian"
    official_midpoint: bool = True
    clamp: bool = True  # clip the result to [0, 1]; the official pipelines keep the network's values


def resolve_rules(name: str, cleaner: Cleaner) -> Rules:
    if name == "auto":
        return RULES[auto_rules(cleaner)]
    if name in RULES:
        return RULES[name]
    return RULES[presets.preset(name).stage1]


# -- sizes -----------------------------------------------------------------------------------------
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


# -- resizing and padding ---------------------------------------------------------------------------
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


# -- running ---------------------------------------------------------------------------------------
OOM_ERRORS = tuple({e for e in (getattr(torch, "OutOfMemoryError", None),
                                getattr(torch.cuda, "OutOfMemoryError", None)) if e is not None})


def is_oom(error: BaseException) -> bool:
    """GPU out-of-memory, or the CPU allocator failing (a RuntimeError saying so)."""
    if isinstance(error, MemoryError) or (OOM_ERRORS and isinstance(error, OOM_ERRORS)):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


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
    from . import images as image_utils

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


# -- ComfyUI glue ------------------------------------------------------------------------------------
def memory_estimate(cleaner: Cleaner, pixels: int, element_size: int = 4) -> int:
    """Bytes to free before running: weights plus activations, with ComfyUI's upscale-node heuristic
    (384 bytes of activations per input value and unit of scale)."""
    from comfy import model_management

    return int(model_management.module_size(cleaner.module) + pixels * 3 * element_size * max(cleaner.scale, 1)
               * 384.0)


def run_in_comfy(images: torch.Tensor, descriptor, settings: Settings, offload: bool = True) -> tuple[torch.Tensor,
                                                                                                        Plan]:
    """The node's work: the model on ComfyUI's device through its model management (a ModelPatcher,
    loaded fully, offloaded afterwards), a progress bar over tiles, cancel between tiles, and the
    out-of-memory fallback."""
    import comfy.model_management as mm
    import comfy.utils

    cleaner = Cleaner.from_spandrel(descriptor)
    validate_image(images)
    patcher = comfy_compat.upscale_model_patcher(descriptor)
    device = patcher.load_device
    dtype = next(cleaner.module.parameters()).dtype
    rules = resolve_rules(settings.rules, cleaner)

    def attempt(current: Settings) -> tuple[torch.Tensor, Plan]:
        the_plan = plan(images.shape[1], images.shape[2], rules, cleaner.scale, current)
        largest = (current.tile_size ** 2) if the_plan.tiled else the_plan.model_input[0] * the_plan.model_input[1]
        mm.load_models_gpu([patcher], memory_required=memory_estimate(cleaner, largest), force_full_load=True)
        # ComfyUI has unloaded what it could for the estimate; tile if the image still does not fit
        def activations(pixels: int) -> float:
            return memory_estimate(cleaner, pixels) - mm.module_size(cleaner.module)

        free = mm.get_free_memory(device)
        fitted = fit_to_memory(current, the_plan, cleaner, free, activations)
        if fitted != current:
            log.warning("DiffBIR stage 1: a %dx%d input to %s needs about %.1f GiB, more than the %.1f GiB free; "
                        "running it in %d px tiles (stride %d)", the_plan.model_input[1], the_plan.model_input[0],
                        cleaner.name, activations(largest) / 2**30, free / 2**30, fitted.tile_size,
                        fitted.tile_stride)
            current = fitted
            the_plan = plan(images.shape[1], images.shape[2], rules, cleaner.scale, current)
        per_image = tile_count(the_plan, current)
        bar = comfy.utils.ProgressBar(per_image * images.shape[0])

        def on_tile(done: int, total: int) -> None:
            bar.update(1)
            mm.throw_exception_if_processing_interrupted()

        mm.throw_exception_if_processing_interrupted()
        with torch.inference_mode():
            return run_batch(images, cleaner, current, device=device, dtype=dtype, on_tile=on_tile,
                             on_image=lambda index, image_plan: mm.throw_exception_if_processing_interrupted())

    def on_oom(error, following):
        mm.soft_empty_cache()

    try:
        return run_with_fallback(images, cleaner, settings, attempt, on_oom)
    finally:
        if offload:
            comfy_compat.unload_model(patcher)


# -- loading ---------------------------------------------------------------------------------------
def load_cleaner(path: str):
    """Loads a stage-1 file (any published DiffBIR stage-1 format or any spandrel image model) into a
    spandrel ImageModelDescriptor, with errors that say what the file is and what to do. Weights only:
    pickles that carry code are refused (torch.load weights_only)."""
    import os

    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    name = os.path.basename(path)
    expected = ("a stage-1 cleaner (DiffBIR's general_swinir_v1.ckpt, face_swinir_v1.ckpt, "
                "realesrgan_s4_swinir_100k.pth, KAIR's BSRNet.pth or scunet_color_real_psnr.pth, or another "
                "spandrel-supported restoration model)")
    sd = weights_io.tensors_only(weights_io.read_tensors(path, expected), name, expected)
    foreign = weights_io.wrong_kind(name, sd, "stage1", expected)
    if foreign:
        raise foreign
    try:
        descriptor = ModelLoader().load_from_state_dict(sd)
    except UnsupportedModelError as error:
        raise ValueError(f"{name}: spandrel recognises no architecture in its {len(sd)} tensors (first keys: "
                         f"{', '.join(list(sd)[:3])}). Expected {expected}.") from error
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ValueError(f"{name} is a {descriptor.architecture.name} {descriptor.purpose} model, not a single-image "
                         f"model. Expected {expected}.")
    descriptor.eval()
    comfy_compat.upscale_model_patcher(descriptor)  # what core "Upscale Image (using Model)" runs it through
    return descriptor
