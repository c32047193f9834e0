"""Exact tiled VAE encode and decode for the SD KL autoencoder (ComfyUI's ``AutoencoderKL``).

Why not ComfyUI's ``VAE.decode_tiled`` / ``encode_tiled``: they run every tile through the whole
network on its own, so every GroupNorm normalises a tile with that tile's statistics; tiles of
different content come out with different brightness and contrast, and the feathered overlaps only
hide the borders (docs/tiling.md has the measured colour differences). The official DiffBIR v2.1 code
uses the multidiffusion "Tiled VAE", which shares GroupNorm statistics across tiles but averages
per-tile variances (missing the spread of the tile means), counts the overlaps twice and runs the
mid-block attention per tile, so it is close to, but not, an untiled decode.

What this module does (our own design, the same idea done exactly):
- the latent-resolution part that has global attention runs whole: for the decoder
  ``post_quant_conv, conv_in, mid`` (512 channels at 1/8 resolution: small), for the encoder
  ``mid, norm_out, conv_out, quant_conv`` after the tiled part;
- the high-resolution part runs on tiles in lockstep: every tile advances to the next GroupNorm, the
  statistics of that GroupNorm are accumulated over the tiles' own (non-overlapping) regions with
  Chan's parallel mean/variance, and every tile is normalised with the whole-image statistics;
- each tile carries a margin at least the receptive field of the rest of the network (computed from
  the network's structure: 13 latent pixels for the SD decoder, 80 pixels for the encoder), cropped
  level by level to what the remaining layers still need; encoder tiles start on multiples of 8
  pixels so the stride-2 convolutions keep the untiled grid.
So every value of a tile's own region is computed from exactly the values an untiled pass uses: the
result equals the untiled decode/encode to float rounding. Between GroupNorms a tile's state is
parked on ComfyUI's intermediate device (CPU memory when the VAE runs on a GPU), so GPU memory holds
one tile at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator

import comfy.model_management
import comfy.ops
import comfy.utils
import torch

log = logging.getLogger("DiffBIR")

TILE_MULTIPLE = 64
MIN_TILE = 64
AUTO_TILES = (1024, 768, 512, 256, 128)  # px, largest first


class TiledVAEError(ValueError):
    """Invalid tile settings or a VAE this module cannot tile; the message says what to do."""


def validate_tile(tile_size: int) -> None:
    if tile_size < 0:
        raise TiledVAEError("tile_size must be 0 (automatic) or positive")
    if tile_size and (tile_size < MIN_TILE or tile_size % TILE_MULTIPLE):
        raise TiledVAEError(f"VAE tile_size {tile_size} px is not valid: use 0 (automatic) or a multiple of "
                            f"{TILE_MULTIPLE} px, at least {MIN_TILE} (e.g. 256, 512, 1024)")


# -- the network's pieces -------------------------------------------------------------------------------
def _check_supported(vae) -> None:
    fsm = vae.first_stage_model
    dec, enc = getattr(fsm, "decoder", None), getattr(fsm, "encoder", None)
    ok = (dec is not None and enc is not None and hasattr(fsm, "post_quant_conv") and hasattr(fsm, "quant_conv")
          and getattr(fsm, "bn", None) is None and hasattr(dec, "up") and hasattr(enc, "down")
          and getattr(vae, "latent_dim", 2) == 2 and not getattr(dec, "give_pre_end", False))
    if ok:
        ok = all(len(level.attn) == 0 for level in dec.up) and all(len(level.attn) == 0 for level in enc.down)
    if not ok:
        raise TiledVAEError(f"this VAE ({type(fsm).__name__}) is not the SD KL autoencoder the exact tiled VAE knows "
                            "(SD 1.x/2.x/SDXL); use ComfyUI's VAE Decode (Tiled) / VAE Encode (Tiled) for it")


def _silu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(x)


def _request(norm, box: list) -> tuple:
    """(norm, tensor to normalise, carry) from ``box`` = [tensor, *carry], emptying the box.

    Why the box: a suspended generator keeps its local variables alive. If a tile's tensors stayed
    in locals across a ``yield``, every tile waiting in the lockstep would keep its activations on
    the GPU (the parked CPU copies would be extra, not instead), and GPU memory would grow with the
    number of tiles. Handing the only references out through the yielded tuple lets the engine park
    them, so the GPU holds one tile's tensors at a time."""
    t, carry = box[0], tuple(box[1:])
    box.clear()
    return norm, t, carry


def _resblock(block, box: list) -> Generator:
    """ComfyUI's ResnetBlock forward (no time embedding, dropout off), yielding at its GroupNorms.
    ``box`` holds the input and is emptied (see ``_request``)."""
    x = box.pop()
    box[:] = [x, x]
    del x
    h, (x,) = yield _request(block.norm1, box)
    h = block.conv1(_silu(h))
    box[:] = [h, x]
    del h, x
    h, (x,) = yield _request(block.norm2, box)
    h = block.conv2(_silu(h))
    if block.in_channels != block.out_channels:
        x = block.conv_shortcut(x) if block.use_conv_shortcut else block.nin_shortcut(x)
    return x + h


def _decoder_levels(dec):
    return list(reversed(range(dec.num_resolutions)))


def decoder_margin(dec) -> int:
    """Receptive-field margin (latent pixels) of the decoder after its mid block: every 3x3 conv
    widens a tile-edge error by one element at its resolution; nearest upsampling doubles it."""
    width, scale = 0, 1
    for level in _decoder_levels(dec):
        width += 2 * (dec.num_res_blocks + 1)
        if level != 0:
            width = width * 2 + 1
            scale *= 2
    width += 1  # conv_out
    return math.ceil(width / scale)


def encoder_margin(enc) -> int:
    """Receptive-field margin (input pixels) of the encoder before its mid block, a multiple of 8: a
    3x3 conv widens a tile-edge error by one element; a stride-2 downsample maps e to ceil((e+2)/2)."""
    width, step = 1, 1  # conv_in
    for level in range(enc.num_resolutions):
        width += 2 * enc.num_res_blocks
        if level != enc.num_resolutions - 1:
            width = math.ceil((width + 2) / 2)
            step *= 2
    return math.ceil(width * step / 8) * 8


def _decoder_program(dec, box: list, geo) -> Generator:
    """The decoder from the mid block's output to the image, for one tile (yields at GroupNorms).
    ``box`` = [the tile's input], emptied (no local keeps a tensor across a yield: see ``_request``)."""
    levels = _decoder_levels(dec)
    remaining = _decoder_remaining(dec)
    for level in levels:
        box[:] = [geo.crop(box.pop(), remaining[level])]
        for i_block in range(dec.num_res_blocks + 1):
            x = yield from _resblock(dec.up[level].block[i_block], box)
            box[:] = [x]
            del x
        if level != 0:
            box[:] = [dec.up[level].upsample(box.pop())]
            geo.step //= 2
    h, _ = yield _request(dec.norm_out, box)
    h = dec.conv_out(_silu(h))
    if getattr(dec, "tanh_out", False):
        h = torch.tanh(h)
    return h


def _decoder_remaining(dec) -> dict:
    """Margin (image pixels) still needed at the start of each decoder level."""
    out = {}
    levels = _decoder_levels(dec)
    for index, level in enumerate(levels):
        width, scale_px = 0, 8 >> index  # element size in image px at this level
        for later in levels[index:]:
            width += 2 * (dec.num_res_blocks + 1)
            if later != 0:
                width = width * 2 + 1
                scale_px //= 2
        width += 1
        out[level] = math.ceil(width * scale_px / 8) * 8
    return out


def _encoder_program(enc, box: list, geo) -> Generator:
    """The encoder from the image to the input of its mid block, for one tile. ``box`` = [the tile's
    input], emptied (no local keeps a tensor across a yield: see ``_request``)."""
    remaining = _encoder_remaining(enc)
    box[:] = [enc.conv_in(box.pop())]
    for level in range(enc.num_resolutions):
        if level:
            box[:] = [geo.crop(box.pop(), remaining[level])]
        for i_block in range(enc.num_res_blocks):
            h = yield from _resblock(enc.down[level].block[i_block], box)
            box[:] = [h]
            del h
        if level != enc.num_resolutions - 1:
            box[:] = [enc.down[level].downsample(box.pop())]
            geo.step *= 2
    return box.pop()


def _encoder_remaining(enc) -> dict:
    out = {}
    for start in range(1, enc.num_resolutions):
        width, step = 0, 2 ** start
        for level in range(start, enc.num_resolutions):
            width += 2 * enc.num_res_blocks
            if level != enc.num_resolutions - 1:
                width = math.ceil((width + 2) / 2)
                step *= 2
        out[start] = math.ceil(width * step / 8) * 8
    return out


# -- tiles -----------------------------------------------------------------------------------------------
class _Geometry:
    """Where a tile's current tensor lies, in image pixels: ``cur`` (top, bottom, left, right) of the
    tensor, ``own`` the region this tile is responsible for; ``step`` image pixels per element."""

    def __init__(self, own, cur, step: int):
        self.own, self.cur, self.step = own, cur, step

    def own_slice(self):
        (t, b, left, r), (ct, _, cl, _), s = self.own, self.cur, self.step
        return slice((t - ct) // s, (b - ct) // s), slice((left - cl) // s, (r - cl) // s)

    def crop(self, x: torch.Tensor, margin: int) -> torch.Tensor:
        t, b, left, r = self.own
        ct, cb, cl, cr = self.cur
        nt, nb, nl, nr = max(ct, t - margin), min(cb, b + margin), max(cl, left - margin), min(cr, r + margin)
        s = self.step
        x = x[..., (nt - ct) // s:(nb - ct) // s, (nl - cl) // s:(nr - cl) // s]
        self.cur = (nt, nb, nl, nr)
        return x


def _splits(length: int, tile: int, unit: int = 8) -> list[tuple[int, int]]:
    """Even split of ``length`` pixels into ceil(length / tile) parts on multiples of ``unit``."""
    n = max(1, math.ceil(length / tile))
    units = length // unit
    bounds = [round(i * units / n) * unit for i in range(n + 1)]
    bounds[-1] = length
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _tiles(h: int, w: int, tile: int, margin: int) -> list[tuple[tuple, tuple]]:
    """(own, input) regions in image pixels; inputs are own +- margin, clipped to the image."""
    out = []
    for top, bottom in _splits(h, tile):
        for left, right in _splits(w, tile):
            own = (top, bottom, left, right)
            cur = (max(0, top - margin), min(h, bottom + margin), max(0, left - margin), min(w, right + margin))
            out.append((own, cur))
    return out


# -- the lockstep engine ---------------------------------------------------------------------------------
class _Stats:
    """Whole-image GroupNorm statistics from per-tile partial ones (Chan et al.'s parallel update)."""

    def __init__(self):
        self.n = None
        self.mean = None
        self.m2 = None

    def add(self, x: torch.Tensor, groups: int) -> None:
        b = x.shape[0]
        xg = x.float().reshape(b, groups, -1)
        n = xg.shape[-1]
        if n == 0:
            return
        mean = xg.mean(-1, dtype=torch.float32)
        m2 = ((xg - mean[..., None]) ** 2).sum(-1)
        mean, m2 = mean.double().cpu(), m2.double().cpu()
        if self.n is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total

    def result(self):
        return self.mean, self.m2 / self.n


def _group_norm(norm, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    b, c = x.shape[:2]
    groups = norm.num_groups
    dtype = x.dtype
    xf = x.float().reshape(b, groups, -1)
    mean = mean.to(device=x.device, dtype=torch.float32)[..., None]
    inv = torch.rsqrt(var.to(device=x.device, dtype=torch.float32) + norm.eps)[..., None]
    y = ((xf - mean) * inv).reshape(x.shape)
    if norm.affine:
        weight, bias = comfy.ops.cast_bias_weight(norm, y)
        y = y * weight.reshape(1, c, 1, 1) + bias.reshape(1, c, 1, 1)
    return y.to(dtype)


def _run_lockstep(make_program: Callable, inputs: list[torch.Tensor], geos: list[_Geometry], device, park,
                  on_step: Callable[[], None] | None = None) -> list[torch.Tensor]:
    """Runs one program per tile in lockstep between GroupNorms; returns each tile's output (parked)."""
    programs = []
    requests = []
    stats = _Stats()
    for x, geo in zip(inputs, geos):
        program = make_program([x.to(device)], geo)
        request = next(program)
        norm, t, carry = request
        rows, cols = geo.own_slice()
        stats.add(t[..., rows, cols], norm.num_groups)
        programs.append(program)
        requests.append((norm, t.to(park), tuple(c.to(park) for c in carry)))
        del request, t, carry
    outputs = [None] * len(programs)
    while any(r is not None for r in requests):
        mean, var = stats.result()
        stats = _Stats()
        comfy.model_management.throw_exception_if_processing_interrupted()
        for i, program in enumerate(programs):
            if requests[i] is None:
                continue
            norm, t, carry = requests[i]
            requests[i] = None
            h = _group_norm(norm, t.to(device), mean, var)
            carry = tuple(c.to(device) for c in carry)
            del t
            try:
                request = program.send((h, carry))
            except StopIteration as done:
                outputs[i] = done.value.to(park)
                continue
            finally:
                del h, carry
            norm, t, carry = request
            rows, cols = geos[i].own_slice()
            stats.add(t[..., rows, cols], norm.num_groups)
            requests[i] = (norm, t.to(park), tuple(c.to(park) for c in carry))
            del request, t, carry
        if on_step is not None:
            on_step()
    return outputs


def decoder_norm_count(dec) -> int:
    return dec.num_resolutions * (dec.num_res_blocks + 1) * 2 + 1


def encoder_norm_count(enc) -> int:
    return enc.num_resolutions * enc.num_res_blocks * 2


# -- public API ---------------------------------------------------------------------------------------
def _devices(vae):
    device = vae.device
    park = comfy.model_management.intermediate_device()
    if device.type == "cpu":
        park = device
    return device, park


def _pick_tile(fits: Callable[[int], bool], tile_size: int, longest: int) -> int:
    """Explicit tile, or 0 (untiled) when the whole image fits, else the largest automatic tile that fits."""
    if tile_size:
        return tile_size
    if fits(0):
        return 0
    for candidate in AUTO_TILES:
        if candidate < longest and fits(candidate):
            return candidate
    return AUTO_TILES[-1]


def decode(vae, latent: torch.Tensor, tile_size: int = 0, progress: bool = True) -> torch.Tensor:
    """IMAGE [B, H, W, 3] in [0, 1] from an unscaled LATENT [B, 4, h, w], tiled exactly (see module
    docstring). ``tile_size`` in image pixels; 0 = automatic (ComfyUI's untiled decode when the
    whole image fits in free memory)."""
    validate_tile(tile_size)
    if not tile_size and not hasattr(vae.first_stage_model, "decoder"):
        return vae.decode(latent)
    _check_supported(vae)
    fsm = vae.first_stage_model
    dec = fsm.decoder
    b, _, h, w = latent.shape
    margin = decoder_margin(dec) * 8
    dtype = vae.vae_dtype

    def memory(tile: int) -> float:
        if not tile:
            return vae.memory_used_decode((1, 4, h, w), dtype)
        t = (tile + 2 * margin) // 8
        whole_mid = 512 * h * w * 4 * comfy.model_management.dtype_size(dtype)
        return vae.memory_used_decode((1, 4, min(h, t), min(w, t)), dtype) + whole_mid

    comfy.model_management.load_models_gpu([vae.patcher], memory_required=memory(tile_size or 256))
    free = comfy.model_management.get_free_memory(vae.device)
    tile = _pick_tile(lambda t: memory(t) < free, tile_size, max(h, w) * 8)
    if not tile or (tile >= h * 8 and tile >= w * 8):
        log.info("DiffBIR VAE decode: %dx%d px untiled", w * 8, h * 8)
        return vae.decode(latent)
    device, park = _devices(vae)
    regions = _tiles(h * 8, w * 8, tile, margin)
    log.info("DiffBIR VAE decode: %dx%d px in %d exact tiles of %d px (margin %d px)", w * 8, h * 8, len(regions),
             tile, margin)
    bar = comfy.utils.ProgressBar(b * decoder_norm_count(dec)) if progress else None
    out = torch.empty((b, h * 8, w * 8, 3), dtype=torch.float32, device=vae.output_device)
    for i in range(b):
        with torch.inference_mode():
            z = latent[i:i + 1].to(device=device, dtype=dtype)
            x = fsm.post_quant_conv(z)
            x = dec.conv_in(x)
            x = dec.mid.block_1(x, None)
            x = dec.mid.attn_1(x)
            x = dec.mid.block_2(x, None)
            geos, inputs = [], []
            for own, cur in regions:
                geos.append(_Geometry(own, cur, 8))
                inputs.append(x[..., cur[0] // 8:cur[1] // 8, cur[2] // 8:cur[3] // 8].to(park))
            del x, z
            tiles = _run_lockstep(lambda t, g: _decoder_program(dec, t, g), inputs, geos, device, park,
                                  on_step=(lambda: bar.update(1)) if bar is not None else None)
            for geo, (own, _), tile_out in zip(geos, regions, tiles):
                rows, cols = geo.own_slice()
                piece = vae.process_output(tile_out[..., rows, cols].float())
                out[i, own[0]:own[1], own[2]:own[3]] = piece[0].movedim(0, -1).to(out.device)
    return out


def encode(vae, pixels: torch.Tensor, tile_size: int = 0, progress: bool = True) -> torch.Tensor:
    """Unscaled LATENT samples [B, 4, H/8, W/8] (posterior mode, as ComfyUI's VAE.encode) from IMAGE
    [B, H, W, C], tiled exactly. ``tile_size`` in image pixels; 0 = automatic."""
    validate_tile(tile_size)
    if not tile_size and not hasattr(vae.first_stage_model, "encoder"):
        return vae.encode(pixels)
    _check_supported(vae)
    pixels = vae.vae_encode_crop_pixels(pixels)[..., :3]
    b, h, w, _ = pixels.shape
    fsm = vae.first_stage_model
    enc = fsm.encoder
    margin = encoder_margin(enc)
    dtype = vae.vae_dtype

    def memory(tile: int) -> float:
        if not tile:
            return vae.memory_used_encode((1, 3, h, w), dtype)
        t = tile + 2 * margin
        return vae.memory_used_encode((1, 3, min(h, t), min(w, t)), dtype)

    comfy.model_management.load_models_gpu([vae.patcher], memory_required=memory(tile_size or 256))
    free = comfy.model_management.get_free_memory(vae.device)
    tile = _pick_tile(lambda t: memory(t) < free, tile_size, max(h, w))
    if not tile or (tile >= h and tile >= w):
        log.info("DiffBIR VAE encode: %dx%d px untiled", w, h)
        return vae.encode(pixels)
    device, park = _devices(vae)
    regions = _tiles(h, w, tile, margin)
    log.info("DiffBIR VAE encode: %dx%d px in %d exact tiles of %d px (margin %d px)", w, h, len(regions), tile,
             margin)
    bar = comfy.utils.ProgressBar(b * encoder_norm_count(enc)) if progress else None
    out = torch.empty((b, 4, h // 8, w // 8), dtype=torch.float32, device=vae.output_device)
    for i in range(b):
        with torch.inference_mode():
            x = vae.process_input(pixels[i:i + 1].movedim(-1, 1))
            geos, inputs = [], []
            for own, cur in regions:
                geos.append(_Geometry(own, cur, 1))
                inputs.append(x[..., cur[0]:cur[1], cur[2]:cur[3]].to(park))
            tiles = _run_lockstep(lambda box, g: _encoder_program(enc, [box.pop().to(dtype)], g), inputs, geos,
                                  device, park,
                                  on_step=(lambda: bar.update(1)) if bar is not None else None)
            feature = None
            for geo, (own, _), tile_out in zip(geos, regions, tiles):
                rows, cols = geo.own_slice()
                piece = tile_out[..., rows, cols].to(device)
                if feature is None:
                    feature = torch.empty((1, piece.shape[1], h // 8, w // 8), dtype=piece.dtype, device=device)
                feature[..., own[0] // 8:own[1] // 8, own[2] // 8:own[3] // 8] = piece
            del tiles
            x = enc.mid.block_1(feature, None)
            x = enc.mid.attn_1(x)
            x = enc.mid.block_2(x, None)
            x = enc.conv_out(_silu(enc.norm_out(x)))
            z = fsm.quant_conv(x)
            z, _ = fsm.regularization(z)
            out[i] = z[0].float().to(out.device)
    return out
