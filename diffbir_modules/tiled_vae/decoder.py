"""The exact tiled decode: the latent-resolution part (with global attention) whole, the rest in
tiles; ComfyUI's own untiled decode (with a progress bar per block) when the image fits."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.utils
import torch

from .. import comfy_compat
from .engine import Meter, run_tiled
from .network import decoder_blocks, mid_attention, untiled_progress
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
from .segments import TILE_HALO_PX, decoder_segments, passes
from .tiles import TiledMap, tile_regions

log = logging.getLogger("DiffBIR")


def _as_image(decoded: torch.Tensor) -> torch.Tensor:
    """ComfyUI's untiled decode as the tiled path returns it: float32 in one block of memory (core hands
    back a channels-last view, and newer releases their intermediate dtype, fp16 with
    --fp16-intermediates)."""
    return decoded.to(torch.float32).contiguous()


def decode(vae, latent: torch.Tensor, tile_size: int = 0, progress: bool = True,
           replay: bool | set[int] | None = None, meter: Meter | None = None, clamp: bool = True) -> torch.Tensor:
    """IMAGE [B, H, W, 3] from an unscaled LATENT [B, 4, h, w], tiled exactly (see the package docstring),
    in [0, 1] when ``clamp``; unclipped ((x + 1) / 2 of the decoder output, as the official code takes it)
    otherwise. ``tile_size`` in image pixels; 0 = automatic (ComfyUI's untiled decode when the whole
    image fits in free memory, except on a CPU in fp32: ``tiles_beat_untiled``). ``replay``: see
    ``replay_levels`` (the result is the same)."""
    if not clamp:
        with comfy_compat.unclipped_vae_output(vae):
            return decode(vae, latent, tile_size, progress, replay, meter)
    validate_tile(tile_size)
    warn_if_emulated(vae, "decode")
    if not tile_size and not hasattr(vae.first_stage_model, "decoder"):
        return _as_image(vae.decode(latent))
    check_supported(vae)
    fsm = vae.first_stage_model
    dec = fsm.decoder
    b, _, h, w = latent.shape
    dtype = vae.vae_dtype

    def memory(tile: int) -> float:
        if not tile:
            return vae.memory_used_decode((1, 4, h, w), dtype)
        t = (tile + 2 * TILE_HALO_PX) // 8
        whole_mid = 512 * h * w * 4 * comfy.model_management.dtype_size(dtype)
        return vae.memory_used_decode((1, 4, min(h, t), min(w, t)), dtype) + whole_mid

    longest = max(h, w) * 8
    tile = load_and_pick_tile(vae, memory, tile_size, longest, prefer_tiles=tiles_beat_untiled(vae, "decode", longest))
    if not tile or (tile >= h * 8 and tile >= w * 8):
        log.info("DiffBIR VAE decode: %dx%d px untiled", w * 8, h * 8)
        with untiled_progress(decoder_blocks(dec) if progress else [], b):
            return _as_image(vae.decode(latent))
    device, park = devices(vae)
    owns = tile_regions(h * 8, w * 8, tile)
    fine_tile = full_resolution_tile(tile, device)
    fine = tile_regions(h * 8, w * 8, fine_tile)
    segments = decoder_segments(dec)
    # the output image (fp32 RGB) is filled while the maps are parked
    image_bytes = b * h * w * 64 * 3 * 4 if torch.device(vae.output_device) == park else 0
    levels = replay_levels("decode", segments, 8, h * 8, w * 8, dtype, park, replay, image_bytes)
    log.info("DiffBIR VAE decode: %dx%d px %s", w * 8, h * 8, describe_tiles(owns, tile, fine, fine_tile, levels))
    bar = comfy.utils.ProgressBar(b * passes(segments)) if progress else None
    out = torch.empty((b, h * 8, w * 8, 3), dtype=torch.float32, device=vae.output_device)
    for i in range(b):
        with torch.inference_mode():
            z = latent[i:i + 1].to(device=device, dtype=dtype)
            x = fsm.post_quant_conv(z)
            x = dec.conv_in(x)
            x = dec.mid.block_1(x, None)
            x = mid_attention(dec.mid.attn_1, x)
            x = dec.mid.block_2(x, None).to(park)
            first = TiledMap(owns, 8, h * 8, w * 8, tile_layout(device))
            for j in range(len(owns)):
                t, bo, le, r = first.own(j)
                first.chunks[j] = x[..., t:bo, le:r]
            del x, z
            image = run_tiled(segments, first, device, park, levels, bar, meter, fine)
            for j, own in enumerate(image.owns):
                piece = vae.process_output(image.chunks[j].float())
                image.chunks[j] = None
                out[i, own[0]:own[1], own[2]:own[3]] = piece[0].movedim(0, -1).to(out.device)
    return out
