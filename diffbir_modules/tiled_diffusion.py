"""Tiled sampling for large images: DiffBIR's ``--cldm_tiled`` as a MODEL patch for every ComfyUI
sampler.

The patch is a ``calc_cond_batch`` wrapper (``comfy.patcher_extension.WrappersMP.CALC_COND_BATCH``):
every evaluation of the model on the latent (cond and uncond, every step, every sampler) is replaced
by evaluations on overlapping latent windows whose outputs are blended with the official gaussian
weights (``tiling.tile_weights``). Because the wrapper sits *around* ComfyUI's whole cond batching,
everything inside runs per window with the window's own inputs:

- the noisy latent is sliced; the timestep is repeated for batched windows;
- the IRControlNet sees the same window through ``transformer_options["diffbir_window"]`` and slices
  its stored condition latent (never re-encoded per tile, never resized);
- a stock ControlNet chained with it gets its hint resized once to the whole latent's size, as
  ComfyUI would untiled, then sliced per window (so it is never squeezed into a tile, the usual
  per-tile ControlNet bug);
- masks of masked conditionings and spatial model conditions (``c_concat``) are sliced the same way.

What is blended: ComfyUI's model output is the denoised estimate ``x0 = c_skip * x + c_out * F``,
affine in the raw network output ``F`` (eps or v) with the same coefficients on every window of a
pixel, so blending ``x0`` equals the official blending of ``F`` (to float rounding). cfg, guidance
(``sampler_post_cfg_function``) and the sampler then run on the whole latent.

Official constraints and rules (``diffbir/pipeline.py``, ``make_tiled_fn``): tile size a multiple
of 64 px (tile // 8 in latent pixels, a multiple of 8 for the UNet's three downsamplings); stride in
pixels // 8; tiling is skipped when the latent is smaller than one tile on either side; windows as
``tiling.sliding_windows``; weights built once at the tile size, with the asymmetric y profile behind
``official_midpoint``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import comfy.conds
import comfy.controlnet
import comfy.model_management
import comfy.patcher_extension
import comfy.utils
import torch

from . import tiling
from .ircontrolnet import IRControlNetControl, control_chain_rebuilder

log = logging.getLogger("DiffBIR")

WRAPPER_KEY = "diffbir_tiled_diffusion"
LATENT_FACTOR = 8  # pixels per latent pixel (SD VAE)
TILE_MULTIPLE = 64  # px: the UNet downsamples the latent three times
MIN_TILE = 64
MIN_STRIDE = 8
AUTO_TILES = (1024, 768, 512, 384, 256)  # px, tried largest first when tile_size is automatic
OFFICIAL_TILE, OFFICIAL_STRIDE = 512, 256


class TilingError(ValueError):
    """Invalid tile settings or an unsupported combination; the message names the valid values."""


@dataclasses.dataclass(frozen=True)
class DiffusionTiling:
    """Settings (pixels). ``tile_size``/``tile_stride``/``tile_batch`` 0 = automatic."""

    tile_size: int = 0
    tile_stride: int = 0
    tile_batch: int = 0
    weighting: str = "gaussian"
    official_midpoint: bool = True

    def describe(self) -> str:
        size = f"{self.tile_size} px" if self.tile_size else "auto"
        stride = f"{self.tile_stride} px" if self.tile_stride else "auto"
        return f"tile {size}, stride {stride}, batch {self.tile_batch or 'auto'}, {self.weighting}"


def validate(tile_size: int, tile_stride: int, tile_batch: int = 0, weighting: str = "gaussian") -> None:
    """Raises TilingError for settings the official code refuses or that cannot work."""
    if tile_size < 0 or tile_stride < 0 or tile_batch < 0:
        raise TilingError("tile_size, tile_stride and tile_batch must be 0 (automatic) or positive")
    if tile_size:
        if tile_size < MIN_TILE:
            raise TilingError(f"tile_size {tile_size} px is smaller than the minimum {MIN_TILE} px. Valid: 0 "
                              f"(automatic) or a multiple of {TILE_MULTIPLE} px from {MIN_TILE} up, e.g. 256, 512 "
                              "(official), 768, 1024")
        if tile_size % TILE_MULTIPLE:
            lower = tile_size // TILE_MULTIPLE * TILE_MULTIPLE
            raise TilingError(f"tile_size {tile_size} px is not a multiple of {TILE_MULTIPLE} (the official code "
                              f"requires it: the UNet halves the latent tile three times). Use {lower} or "
                              f"{lower + TILE_MULTIPLE}, or 0 for automatic")
    if tile_stride:
        if tile_stride < MIN_STRIDE or tile_stride % LATENT_FACTOR:
            raise TilingError(f"tile_stride {tile_stride} px must be a multiple of {LATENT_FACTOR} px (one latent "
                              f"pixel), at least {MIN_STRIDE}; or 0 for automatic (half the tile)")
        if tile_size and tile_stride > tile_size:
            raise TilingError(f"tile_stride {tile_stride} px is larger than tile_size {tile_size} px: tiles would "
                              f"leave gaps. Valid strides: {MIN_STRIDE}..{tile_size} px in steps of {LATENT_FACTOR} "
                              f"(official: half the tile, {tile_size // 2})")
    if weighting not in tiling.WEIGHTINGS:
        raise TilingError(f"unknown weighting {weighting!r}; one of {', '.join(tiling.WEIGHTINGS)}")


def latent_windows(h: int, w: int, tile_px: int, stride_px: int) -> list[tiling.Window]:
    """The official windows (latent pixels) for an h x w latent; [] when tiling is skipped (the
    latent is smaller than one tile on either side, the official rule)."""
    tile, stride = tile_px // LATENT_FACTOR, max(1, stride_px // LATENT_FACTOR)
    if not tiling.tiling_applies(h, w, tile):
        return []
    return tiling.sliding_windows(h, w, tile, stride)


# -- conditionings per window -----------------------------------------------------------------------
def _stack_windows(t: torch.Tensor, windows, per_window: int, spatial_dims=(-2, -1)) -> torch.Tensor:
    """``t`` [b, ..., H, W] (b = 1 or per_window) sliced per window and stacked window-major, each window
    with ``per_window`` entries."""
    parts = []
    for y0, y1, x0, x1 in windows:
        part = t[..., y0:y1, x0:x1]
        if part.shape[0] != per_window:
            part = comfy.utils.repeat_to_batch_size(part, per_window)
        parts.append(part)
    return torch.cat(parts)


def _windowed_stock_controlnet(control, full_shape, windows, per_window: int, device):
    """A shallow copy of a stock ComfyUI ControlNet whose hint is its whole-latent hint (computed as
    ComfyUI computes it untiled, cached on the original) sliced to ``windows``."""
    cache = getattr(control, "_diffbir_full_hint", None)
    if cache is None or cache[0] != tuple(full_shape):
        ratio = control.compression_ratio
        if control.vae is not None:
            ratio *= control.vae.spacial_compression_encode()
        hint = comfy.utils.common_upscale(control.cond_hint_original, full_shape[-1] * ratio, full_shape[-2] * ratio,
                                          control.upscale_algorithm, "center")
        hint = control.preprocess_image(hint)
        if control.vae is not None:
            loaded = comfy.model_management.loaded_models(only_currently_used=True)
            hint = control.vae.encode(hint.movedim(1, -1))
            comfy.model_management.load_models_gpu(loaded)
        if control.latent_format is not None:
            hint = control.latent_format.process_in(hint)
        if len(control.extra_concat_orig) > 0:
            raise TilingError(f"{type(control).__name__} with extra concatenated inputs (inpainting ControlNets) is "
                              "not supported by DiffBIR tiled sampling; sample untiled")
        # ComfyUI broadcasts the hint batch to the latent batch the same way
        hint = comfy.controlnet.broadcast_image_to(hint, full_shape[0], 1)
        cache = (tuple(full_shape), hint.cpu())
        control._diffbir_full_hint = cache
    hint = cache[1]
    scale = hint.shape[-1] // full_shape[-1]
    scaled = [(y0 * scale, y1 * scale, x0 * scale, x1 * scale) for y0, y1, x0, x1 in windows]
    c = copy.copy(control)
    dtype = control.manual_cast_dtype or control.control_model.dtype
    c.cond_hint = _stack_windows(hint, scaled, per_window).to(device=device, dtype=dtype)
    return c


def _window_controls(conds, full_shape, windows, per_window: int, device):
    """Copies of the control chains in ``conds`` prepared for ``windows`` (stock ControlNets get
    sliced hints; IRControlNets read the windows from transformer_options). Objects shared between
    conditionings stay shared so ComfyUI keeps batching cond and uncond."""

    def replace(control):
        if isinstance(control, IRControlNetControl):
            return control
        if type(control) in (comfy.controlnet.ControlNet, comfy.controlnet.ControlLora):
            return _windowed_stock_controlnet(control, full_shape, windows, per_window, device)
        raise TilingError(
            f"a {type(control).__name__} is attached to the conditioning; DiffBIR tiled sampling slices the "
            "IRControlNet condition and stock ControlNet/ControlLoRA hints per tile, but cannot window this "
            "kind of control. Remove it or sample untiled.")

    rebuild = control_chain_rebuilder(replace)

    out = []
    for cond in conds:
        if cond is None:
            out.append(None)
            continue
        entries = []
        for d in cond:
            d = dict(d)
            if "area" in d:
                raise TilingError("a conditioning with an area (Conditioning Set Area) cannot be tiled exactly; use "
                                  "a mask (Conditioning Set Mask), which DiffBIR tiled sampling slices per tile, or "
                                  "sample untiled")
            if d.get("control") is not None:
                d["control"] = rebuild(d["control"])
            if "mask" in d:
                mask = d["mask"]
                mask = comfy.utils.repeat_to_batch_size(mask[:per_window], per_window)
                d["mask"] = _stack_windows(mask, windows, per_window)
            model_conds = d.get("model_conds")
            if model_conds:
                new_conds = {}
                for name, c in model_conds.items():
                    data = getattr(c, "cond", None)
                    if (isinstance(c, comfy.conds.CONDNoiseShape) and isinstance(data, torch.Tensor)
                            and tuple(data.shape[-2:]) == tuple(full_shape[-2:])):
                        c = c._copy_with(_stack_windows(data, windows, per_window))
                    new_conds[name] = c
                d["model_conds"] = new_conds
            entries.append(d)
        out.append(entries)
    return out


# -- automatic settings ---------------------------------------------------------------------------------
def _fits(model, shape, conds_count: int, free: float) -> bool:
    """ComfyUI's own test for running a batch (``_calc_cond_batch``): memory_required * 1.5 < free."""
    input_shape = [shape[0] * conds_count, *shape[1:]]
    return model.memory_required(input_shape) * 1.5 < free


def choose_settings(model, x_shape, settings: DiffusionTiling, conds_count: int, free_memory: float,
                    on_cpu: bool = False) -> tuple[int, int, int]:
    """(tile px, stride px, tile batch) for a latent of ``x_shape``; tile 0 = untiled. Explicit settings
    win; automatic ones come from the memory ComfyUI reports: untiled when the whole latent fits, else
    the largest tile of AUTO_TILES that fits, stride half the tile; the batch is as many tiles as fit
    (at most the explicit tile_batch). On a CPU the automatic batch is one tile: two 1024 px tiles per
    call there took as long per tile as one and raised the sampling peak by 1.1 GiB (2048 px, AMD Zen 4,
    docs/performance.md)."""
    b, c, h, w = x_shape
    tile = settings.tile_size
    if not tile:
        if _fits(model, x_shape, conds_count, free_memory):
            return 0, 0, 1
        tile = AUTO_TILES[-1]
        for candidate in AUTO_TILES:
            if candidate // LATENT_FACTOR <= max(h, w) and _fits(
                    model, (b, c, candidate // LATENT_FACTOR, candidate // LATENT_FACTOR), conds_count, free_memory):
                tile = candidate
                break
    stride = settings.tile_stride or max(LATENT_FACTOR, tile // 2 // LATENT_FACTOR * LATENT_FACTOR)
    stride = min(stride, tile)
    t = tile // LATENT_FACTOR
    limit = settings.tile_batch or (1 if on_cpu else 16)
    batch = 1
    while batch < limit and _fits(model, (b * (batch + 1), c, t, t), conds_count, free_memory):
        batch += 1
    if settings.tile_batch:
        batch = min(batch, settings.tile_batch)
    return tile, stride, max(1, batch)


# -- the wrapper ------------------------------------------------------------------------------------
class TiledDiffusion:
    """The CALC_COND_BATCH wrapper (callable), installed by ``patch_model``."""

    def __init__(self, settings: DiffusionTiling):
        validate(settings.tile_size, settings.tile_stride, settings.tile_batch, settings.weighting)
        self.settings = settings
        self._logged = None
        self._progress = None

    # ComfyUI calls wrappers with the next executor first
    def __call__(self, executor, model, conds, x_in, timestep, model_options):
        settings = self.settings
        b, _, h, w = x_in.shape
        conds_count = sum(1 for c in conds if c is not None)
        free = comfy.model_management.get_free_memory(x_in.device)
        tile_px, stride_px, batch = choose_settings(model, tuple(x_in.shape), settings, conds_count, free,
                                                    on_cpu=x_in.device.type == "cpu")
        windows = latent_windows(h, w, tile_px, stride_px) if tile_px else []
        key = (tuple(x_in.shape), tile_px, stride_px, batch)
        if self._logged != key:
            self._logged = key
            if windows:
                log.info("DiffBIR tiled sampling: %dx%d latent (%dx%d px) in %d tiles of %d px, stride %d px, %d per "
                         "batch (%s)", w, h, w * LATENT_FACTOR, h * LATENT_FACTOR, len(windows), tile_px, stride_px,
                         batch, settings.describe())
            else:
                log.info("DiffBIR tiled sampling: %dx%d latent sampled whole (%s)", w, h,
                         "fits in memory" if not tile_px else f"smaller than a {tile_px} px tile")
        if not windows:
            return executor(model, conds, x_in, timestep, model_options)
        return self.tiled(executor, model, conds, x_in, timestep, model_options, windows, tile_px, batch)

    def tiled(self, executor, model, conds, x_in, timestep, model_options, windows, tile_px, batch):
        settings = self.settings
        t = tile_px // LATENT_FACTOR
        weight = tiling.tile_weights(t, t, settings.weighting, settings.official_midpoint)
        weight = weight.to(device=x_in.device, dtype=torch.float32)[None, None]
        acc = [torch.zeros(x_in.shape, device=x_in.device, dtype=torch.float32) for _ in conds]
        count = torch.zeros((1, 1, *x_in.shape[2:]), device=x_in.device, dtype=torch.float32)
        b = x_in.shape[0]
        progress = self._progress_for(model_options, len(windows), timestep)
        for start in range(0, len(windows), batch):
            comfy.model_management.throw_exception_if_processing_interrupted()
            group = windows[start:start + batch]
            k = len(group)
            x_win = _stack_windows(x_in, group, b)
            t_win = timestep.repeat(k) if timestep.ndim and timestep.shape[0] == b else timestep
            win_conds = _window_controls(conds, x_in.shape, group, b, x_in.device)
            options = dict(model_options)
            transformer_options = dict(options.get("transformer_options", {}))
            transformer_options["diffbir_window"] = group[0] if k == 1 else list(group)
            transformer_options["diffbir_tiles"] = {"windows": list(group), "latent_shape": tuple(x_in.shape)}
            options["transformer_options"] = transformer_options
            outputs = executor(model, win_conds, x_win, t_win, options)
            for i, out in enumerate(outputs):
                for j, (y0, y1, x0, x1) in enumerate(group):
                    acc[i][..., y0:y1, x0:x1] += out[j * b:(j + 1) * b].float() * weight
            for y0, y1, x0, x1 in group:
                count[..., y0:y1, x0:x1] += weight
            del outputs, x_win
            if progress is not None:
                progress(start + k)
        return [(a / count).to(x_in.dtype) for a in acc]

    def _progress_for(self, model_options, n_windows: int, timestep):
        """A progress callback over tiles x steps, consistent with the sampler's own step bar (same
        fraction at every step boundary), or None outside a sampler."""
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None or len(sigmas) < 2:
            return None
        steps = len(sigmas) - 1
        sigma = float(timestep.reshape(-1)[0])
        index = int(torch.argmin((sigmas.float().cpu() - sigma).abs()))
        index = min(index, steps - 1)
        total = steps * n_windows
        bar = comfy.utils.ProgressBar(total)

        def update(done: int):
            bar.update_absolute(index * n_windows + done, total)

        return update


def patch_model(model, settings: DiffusionTiling):
    """A clone of ``model`` (ModelPatcher) with tiled sampling; a previous DiffBIR tiling on it is
    replaced, never nested."""
    validate(settings.tile_size, settings.tile_stride, settings.tile_batch, settings.weighting)
    m = model.clone()
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, TiledDiffusion(settings))
    return m


def tile_count(h_px: int, w_px: int, tile_px: int, stride_px: int) -> int:
    return len(latent_windows(math.ceil(h_px / LATENT_FACTOR), math.ceil(w_px / LATENT_FACTOR), tile_px, stride_px))
