"""The exact tiled encode: the full-resolution part in tiles, the latent-resolution part (with global
attention) whole; ComfyUI's own untiled encode (with a progress bar per block) when the image fits."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.utils
import torch

from .engine import Meter, run_tiled
from .network import encoder_blocks, mid_attention, silu, untiled_progress
from .planning import (
    check_supported,
    describe_tiles,
    devices,
    full_resolution_tile,
    load_and_pick_tile,
    replay_levels,
    tile_layout,
    tiles_beat_untiled,
    validate_tile,
    warn_if_emulated,
)
from .segments import TILE_HALO_PX, encoder_segments, passes
from .tiles import TiledMap, tile_regions

log = logging.getLogger("DiffBIR")


def encode(vae, pixels: torch.Tensor, tile_size: int = 0, progress: bool = True,
           replay: bool | set[int] | None = None, meter: Meter | None = None, moments: bool = False) -> torch.Tensor:
    """Unscaled LATENT samples [B, 4, H/8, W/8] (posterior mode, as ComfyUI's VAE.encode) from IMAGE
    [B, H, W, C], tiled exactly. ``tile_size`` in image pixels; 0 = automatic (untiled when the whole
    image fits in free memory, except a large image on a CPU in fp32: ``tiles_beat_untiled``).
    ``moments``: the posterior's mean and log-variance instead ([B, 8, H/8, W/8], ``quant_conv``'s
    output, float32; restoration guidance pulls toward them)."""
    validate_tile(tile_size)
    warn_if_emulated(vae, "encode")
    if not tile_size and not moments and not hasattr(vae.first_stage_model, "encoder"):
        return vae.encode(pixels)
    check_supported(vae)
    pixels = vae.vae_encode_crop_pixels(pixels)[..., :3]
    b, h, w, _ = pixels.shape
    fsm = vae.first_stage_model
    enc = fsm.encoder
    dtype = vae.vae_dtype

    def memory(tile: int) -> float:
        if not tile:
            return vae.memory_used_encode((1, 3, h, w), dtype)
        t = tile + 2 * TILE_HALO_PX
        return vae.memory_used_encode((1, 3, min(h, t), min(w, t)), dtype)

    longest = max(h, w)
    tile = load_and_pick_tile(vae, memory, tile_size, longest, prefer_tiles=tiles_beat_untiled(vae, "encode", longest))
    if not tile or (tile >= h and tile >= w):
        log.info("DiffBIR VAE encode: %dx%d px untiled", w, h)
        with untiled_progress(encoder_blocks(enc) if progress else [], b):
            if moments:
                return _untiled_moments(vae, pixels, memory(0))
            return vae.encode(pixels)
    device, park = devices(vae)
    owns = tile_regions(h, w, tile)
    fine_tile = full_resolution_tile(tile, device)
    fine = tile_regions(h, w, fine_tile)
    segments = encoder_segments(enc)
    levels = replay_levels("encode", segments, 1, h, w, dtype, park, replay, 0)  # the input image is already held
    log.info("DiffBIR VAE encode: %dx%d px %s", w, h, describe_tiles(owns, tile, fine, fine_tile, levels))
    bar = comfy.utils.ProgressBar(b * passes(segments)) if progress else None
    out = torch.empty((b, 8 if moments else 4, h // 8, w // 8), dtype=torch.float32, device=vae.output_device)
    for i in range(b):
        with torch.inference_mode():
            x = vae.process_input(pixels[i:i + 1].movedim(-1, 1)).to(device=park, dtype=dtype)
            first = TiledMap(owns, 1, h, w, tile_layout(device))
            for j in range(len(owns)):
                t, bo, le, r = first.own(j)
                first.chunks[j] = x[..., t:bo, le:r]
            del x
            features = run_tiled(segments, first, device, park, levels, bar, meter, fine)
            feature = torch.empty((1, features.chunks[0].shape[1], h // 8, w // 8), dtype=features.chunks[0].dtype,
                                  device=device, memory_format=first.memory_format)
            for j in range(len(features.owns)):
                t, bo, le, r = features.own(j)
                feature[..., t:bo, le:r] = features.chunks[j].to(device)
                features.chunks[j] = None
            x = enc.mid.block_1(feature, None)
            del feature
            x = mid_attention(enc.mid.attn_1, x)
            x = enc.mid.block_2(x, None)
            x = enc.conv_out(silu(enc.norm_out(x)))
            z = fsm.quant_conv(x)
            if not moments:
                z, _ = fsm.regularization(z)
            out[i] = z[0].float().to(out.device)
    return out


def _untiled_moments(vae, pixels: torch.Tensor, memory_required: float) -> torch.Tensor:
    """``encode(..., moments=True)`` for an image that fits: the whole encoder, one image at a time."""
    fsm = vae.first_stage_model
    comfy.model_management.load_models_gpu([vae.patcher], memory_required=memory_required)
    out = []
    with torch.inference_mode():
        for i in range(pixels.shape[0]):
            comfy.model_management.throw_exception_if_processing_interrupted()
            x = vae.process_input(pixels[i:i + 1].movedim(-1, 1)).to(device=vae.device, dtype=vae.vae_dtype)
            out.append(fsm.quant_conv(fsm.encoder(x)).float().to(vae.output_device))
    return torch.cat(out)
