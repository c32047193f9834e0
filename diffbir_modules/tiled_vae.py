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
- the high-resolution part is cut into segments (one resblock each, with the upsample, downsample or
  first conv in front of it). Between segments the feature map is kept as the tiles' own,
  non-overlapping regions, so it takes what the untiled map takes; a tile's input to the next segment
  is its own region plus a halo of that segment's receptive field (2-6 elements) cut from its
  neighbours (halo exchange): no tile carries the receptive field of the whole rest of the network;
- inside a segment the tiles run in lockstep: each advances to the next GroupNorm, the statistics are
  accumulated over the tiles' own regions with Chan's parallel mean/variance, and every tile is
  normalised with the whole-image statistics. Waiting tiles park what they hand out (up to twice the
  block's channels) on ComfyUI's intermediate device (CPU memory when the VAE runs on a GPU);
- where that parked state would not fit (more than 1/8 of the parking device's free memory), a level
  *replays* instead: only each segment's input is kept, each GroupNorm's statistics come from a pass
  that runs every tile from that input up to it, and a last pass produces the output. It costs the
  first half of each block again (about +40% for a decoder with its full-resolution level replayed)
  and halves the peak: one 128-channel full-resolution map instead of two.
Every value of a tile's own region is computed from exactly the values an untiled pass uses: the
result equals the untiled decode/encode to float rounding, and replay equals lockstep bit for bit.
Encoder tiles start on multiples of 8 pixels so the stride-2 convolutions keep the untiled grid.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Generator

import comfy.model_management
import comfy.ops
import comfy.utils
import torch

from . import comfy_compat
from .progress import per_block

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
    ``box`` holds the input and is emptied (see ``_request``). A channel-changing shortcut is applied
    before the second GroupNorm instead of at the end (the same values), so a waiting tile parks
    ``out_channels`` for it, not ``in_channels``."""
    x = box.pop()
    box[:] = [x, x]
    del x
    h, (x,) = yield _request(block.norm1, box)
    h = block.conv1(_silu(h))
    if block.in_channels != block.out_channels:
        x = block.conv_shortcut(x) if block.use_conv_shortcut else block.nin_shortcut(x)
    box[:] = [h, x]
    del h, x
    h, (x,) = yield _request(block.norm2, box)
    h = block.conv2(_silu(h))
    return x + h


ATTENTION_SLICE_BYTES = 256 * 2**20  # attention scores computed per slice of queries, at most this


def _mid_attention(block, x: torch.Tensor) -> torch.Tensor:
    """The mid block's self-attention over the whole latent-resolution map, with bounded memory.

    Why: where ComfyUI uses its split attention for the VAE (CPU, or no PyTorch attention), it sizes
    the slices of the score matrix to the free memory, so one attention over a 2048 px image (65536
    tokens, a 16 GiB score matrix) took about 9 GiB of a CPU-only machine's RAM at once: more than
    all of the tiled part. Here the queries go in slices of at most ``ATTENTION_SLICE_BYTES`` of
    scores (the same operations per query row: softmax over all keys). PyTorch's and xformers'
    memory-efficient attention are used as ComfyUI chose them."""
    if getattr(block.optimized_attention, "__name__", "") != "normal_attention":
        return block(x)
    h = block.norm(x)
    q, k, v = block.q(h), block.k(h), block.v(h)
    del h
    b, c, height, width = q.shape
    n = height * width
    q = q.reshape(b, c, n).permute(0, 2, 1)  # b, n, c
    k = k.reshape(b, c, n)
    v = v.reshape(b, c, n)
    out = torch.empty_like(v)
    scale = c ** -0.5
    rows = max(1, ATTENTION_SLICE_BYTES // (b * n * q.element_size()))
    for start in range(0, n, rows):
        scores = torch.bmm(q[:, start:start + rows], k) * scale
        weights = torch.softmax(scores, dim=2).permute(0, 2, 1)
        del scores
        out[:, :, start:start + rows] = torch.bmm(v, weights)
        del weights
    del q, k, v
    return x + block.proj_out(out.reshape(b, c, height, width))


# -- segments: the unit between whole-image feature maps ----------------------------------------------------
UP, SAME, DOWN = "up", "same", "down"
TILE_HALO_PX = 16  # for memory estimates: the largest halo of a segment, in image pixels


def _decoder_levels(dec) -> list[int]:
    return list(reversed(range(dec.num_resolutions)))


class _Segment:
    """One resblock (with the upsample, downsample or first conv in front of it), or the decoder's
    output head. Between segments the feature map exists exactly (every element computed by the tile
    that owns it), so a tile's next input is cut from it with only this segment's ``halo`` (its
    receptive field, in elements at its input resolution): no tile carries the receptive field of the
    rest of the network. ``resample``: UP/DOWN when the segment starts with a x2 upsample/downsample;
    ``norms``: how many GroupNorms it yields at; ``channels``: the block's (in, out) channels."""

    def __init__(self, level: int, program: Callable[[list], Generator], norms: int, halo: int, resample: str,
                 channels: tuple[int, int]):
        self.level, self.program, self.norms, self.halo, self.resample = level, program, norms, halo, resample
        self.channels = channels


def _decoder_segments(dec) -> list[_Segment]:
    """The decoder from the mid block's output to the image (levels from 1/8 to full resolution)."""
    levels = _decoder_levels(dec)

    def block(level: int, index: int, upsample: bool):
        def program(box: list) -> Generator:
            if upsample:
                box[:] = [dec.up[level + 1].upsample(box.pop())]
            return (yield from _resblock(dec.up[level].block[index], box))
        return program

    def head(box: list) -> Generator:
        h, _ = yield _request(dec.norm_out, box)
        h = dec.conv_out(_silu(h))
        if getattr(dec, "tanh_out", False):
            h = torch.tanh(h)
        return h

    segments = []
    for level in levels:
        for index in range(dec.num_res_blocks + 1):
            res = dec.up[level].block[index]
            upsample = index == 0 and level != levels[0]
            # 3x3 convs: two in the block, one after the nearest x2 upsample (3 elements = 2 before it)
            segments.append(_Segment(level, block(level, index, upsample), 2, 2, UP if upsample else SAME,
                                     (res.in_channels, res.out_channels)))
    last = dec.up[levels[-1]].block[-1].out_channels
    return segments + [_Segment(levels[-1], head, 1, 1, SAME, (last, last))]


def _encoder_segments(enc) -> list[_Segment]:
    """The encoder from the image to the input of its mid block (levels from full to 1/8 resolution)."""

    def block(level: int, index: int):
        def program(box: list) -> Generator:
            if index == 0:
                if level == 0:
                    box[:] = [enc.conv_in(box.pop())]
                else:
                    box[:] = [enc.down[level - 1].downsample(box.pop())]
            return (yield from _resblock(enc.down[level].block[index], box))
        return program

    segments = []
    for level in range(enc.num_resolutions):
        for index in range(enc.num_res_blocks):
            res = enc.down[level].block[index]
            if index:
                halo, resample = 2, SAME
            elif level == 0:
                halo, resample = 3, SAME  # conv_in + the block's two convs
            else:  # stride-2 conv (pad right/bottom) feeding two convs: 4 before, 5 after; even keeps the grid
                halo, resample = 6, DOWN
            segments.append(_Segment(level, block(level, index), 2, halo, resample,
                                     (res.in_channels, res.out_channels)))
    return segments


def _chain(segments: list[_Segment], box: list) -> Generator:
    """Segments one after the other on one tensor (a whole image, or a test's tile)."""
    for segment in segments:
        x = yield from segment.program(box)
        box[:] = [x]
        del x
    return box.pop()


def _decoder_program(dec, box: list) -> Generator:
    return _chain(_decoder_segments(dec), box)


def _encoder_program(enc, box: list) -> Generator:
    return _chain(_encoder_segments(enc), box)


# -- tiles -----------------------------------------------------------------------------------------------
def _splits(length: int, tile: int, unit: int = 8) -> list[tuple[int, int]]:
    """Even split of ``length`` pixels into ceil(length / tile) parts on multiples of ``unit``."""
    n = max(1, math.ceil(length / tile))
    units = length // unit
    bounds = [round(i * units / n) * unit for i in range(n + 1)]
    bounds[-1] = length
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _tiles(h: int, w: int, tile: int) -> list[tuple[int, int, int, int]]:
    """The tiles' own regions (top, bottom, left, right) in image pixels, on multiples of 8."""
    return [(top, bottom, left, right) for top, bottom in _splits(h, tile) for left, right in _splits(w, tile)]


def _scaled(region, step: int) -> tuple[int, int, int, int]:
    return tuple(v // step for v in region)


def _intersect(a, b):
    t, bo, le, r = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (t, bo, le, r) if t < bo and le < r else None


class _TiledMap:
    """A whole-image feature map [1, C, H/step, W/step] kept as the tiles' own regions: one chunk per
    tile, no overlap, so it takes exactly the memory of the untiled map. ``owns`` in image pixels."""

    def __init__(self, owns: list, step: int, height: int, width: int):
        self.owns, self.step = owns, step
        self.height, self.width = height // step, width // step
        self.chunks: list[torch.Tensor | None] = [None] * len(owns)

    def own(self, i: int):
        return _scaled(self.owns[i], self.step)

    def region(self, i: int, halo: int):
        t, b, left, r = self.own(i)
        return max(0, t - halo), min(self.height, b + halo), max(0, left - halo), min(self.width, r + halo)

    def _paste(self, out: torch.Tensor, region, source_region, source: torch.Tensor) -> None:
        part = _intersect(region, source_region)
        if part is not None:
            t, b, left, r = part
            out[..., t - region[0]:b - region[0], left - region[2]:r - region[2]] = \
                source[..., t - source_region[0]:b - source_region[0], left - source_region[2]:r - source_region[2]]

    def cut(self, i: int, halo: int) -> torch.Tensor:
        """Tile ``i``'s own region plus ``halo`` elements from its neighbours (a new tensor)."""
        region = self.region(i, halo)
        first = next(c for c in self.chunks if c is not None)
        out = first.new_empty((*first.shape[:2], region[1] - region[0], region[3] - region[2]))
        for j, chunk in enumerate(self.chunks):
            self._paste(out, region, self.own(j), chunk)
        return out

    def consume(self, halo: int) -> Generator:
        """(i, cut) for every tile, freeing each chunk as soon as its tile is cut: the neighbours'
        halo strips are copied out first, so the map never exists twice."""
        strips = []
        for i in range(len(self.owns)):
            region = self.region(i, halo)
            mine = []
            for j, chunk in enumerate(self.chunks):
                part = _intersect(region, self.own(j)) if j != i else None
                if part is not None:
                    own = self.own(j)
                    mine.append((part, chunk[..., part[0] - own[0]:part[1] - own[0],
                                             part[2] - own[2]:part[3] - own[2]].clone()))
            strips.append(mine)
        for i in range(len(self.owns)):
            region = self.region(i, halo)
            chunk = self.chunks[i]
            out = chunk.new_empty((*chunk.shape[:2], region[1] - region[0], region[3] - region[2]))
            self._paste(out, region, self.own(i), chunk)
            for part, strip in strips[i]:
                self._paste(out, region, part, strip)
            self.chunks[i] = None
            strips[i] = None
            del chunk
            yield i, out

    def tensors(self) -> list[torch.Tensor]:
        return [c for c in self.chunks if c is not None]


def _output_origin(region, resample: str) -> tuple[int, int]:
    """(top, left) of a segment's output for an input ``region``, at the output resolution."""
    if resample == UP:
        return region[0] * 2, region[2] * 2
    if resample == DOWN:  # stride 2 from an even start
        return region[0] // 2, region[2] // 2
    return region[0], region[2]


def _out_step(step: int, resample: str) -> int:
    return step // 2 if resample == UP else step * 2 if resample == DOWN else step


def _own_slices(own, origin):
    return slice(own[0] - origin[0], own[1] - origin[0]), slice(own[2] - origin[1], own[3] - origin[1])


# -- the engine --------------------------------------------------------------------------------------------
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


class _Meter:
    """Peak bytes of the parked state (feature maps, strips, waiting tiles' tensors), for tests and
    benchmarks: storages counted once, however many views share them."""

    def __init__(self):
        self.peak_bytes = 0

    def measure(self, *groups) -> None:
        seen = {}
        for group in groups:
            for t in group:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, sum(seen.values()))


def _lockstep(segment: _Segment, source: _TiledMap, target: _TiledMap, device, park, on_pass, meter) -> None:
    """Every tile advances to the segment's next GroupNorm; what it hands out is parked until the
    whole-image statistics are known. Fast; parks up to twice ``out_channels`` per element."""
    programs, requests, origins = {}, {}, {}
    stats = _Stats()

    def advance(i, request_or_value, finished):
        own = target.own(i)
        rows, cols = _own_slices(own, origins[i])
        if finished:
            target.chunks[i] = request_or_value[..., rows, cols].to(park)
            return
        norm, t, carry = request_or_value
        stats.add(t[..., rows, cols], norm.num_groups)
        requests[i] = (norm, t.to(park), tuple(c.to(park) for c in carry))

    for i, x in source.consume(segment.halo):
        origins[i] = _output_origin(source.region(i, segment.halo), segment.resample)
        programs[i] = segment.program([x.to(device)])
        del x
        advance(i, next(programs[i]), False)
        if meter:
            meter.measure(source.tensors(), [t for r in requests.values() for t in (r[1], *r[2])])
    on_pass()
    while requests:
        mean, var = stats.result()
        stats = _Stats()
        comfy.model_management.throw_exception_if_processing_interrupted()
        for i in list(requests):
            norm, t, carry = requests.pop(i)
            h = _group_norm(norm, t.to(device), mean, var)
            carry = tuple(c.to(device) for c in carry)
            del t
            try:
                advance(i, programs[i].send((h, carry)), False)
            except StopIteration as done:
                advance(i, done.value, True)
                del programs[i]
            finally:
                del h, carry
            if meter:
                meter.measure(target.tensors(), [t for r in requests.values() for t in (r[1], *r[2])])
        on_pass()


def _replay(segment: _Segment, source: _TiledMap, target: _TiledMap, device, park, on_pass, meter) -> None:
    """Parks only the segment's input: each GroupNorm's statistics come from a pass that runs every
    tile from the input up to that GroupNorm (the earlier ones normalised with their known
    statistics), and a last pass produces the output. Costs the segment's first half again per
    GroupNorm; parks ``max(in, out)`` channels per element instead of twice ``out``."""
    known = []
    while True:
        stats = _Stats()
        final = len(known) == segment.norms
        tiles = source.consume(segment.halo) if final else ((i, source.cut(i, segment.halo))
                                                             for i in range(len(source.owns)))
        for i, x in tiles:
            origin = _output_origin(source.region(i, segment.halo), segment.resample)
            rows, cols = _own_slices(target.own(i), origin)
            program = segment.program([x.to(device)])
            del x
            try:
                request = next(program)
                for mean, var in known:
                    norm, t, carry = request
                    del request
                    h = _group_norm(norm, t, mean, var)
                    del t
                    request = program.send((h, carry))
                    del h, carry
            except StopIteration as done:
                if not final:
                    raise RuntimeError("a VAE segment ended before its GroupNorms") from None
                target.chunks[i] = done.value[..., rows, cols].to(park)
                if meter:
                    meter.measure(source.tensors(), target.tensors())
                continue
            norm, t, _ = request
            del request
            stats.add(t[..., rows, cols], norm.num_groups)
            del t
            program.close()
            if meter:
                meter.measure(source.tensors(), target.tensors())
        on_pass()
        if final:
            return
        known.append(stats.result())
        comfy.model_management.throw_exception_if_processing_interrupted()


def _park_bytes(segment: _Segment, elements: int, element_size: int, replay: bool) -> int:
    """Parked bytes while ``segment`` runs, ``elements`` per channel at its output resolution."""
    c_in, c_out = segment.channels
    if not replay:  # the resampled input at the first GroupNorm, then the block's h and shortcut
        return max(c_in, 2 * c_out) * elements * element_size
    inputs = elements // 4 if segment.resample == UP else elements * 4 if segment.resample == DOWN else elements
    return max(c_in * inputs, c_out * elements) * element_size


def _choose_replay(segments: list[_Segment], steps: list[int], height: int, width: int, element_size: int,
                   budget: float) -> set[int]:
    """Levels to replay: none when lockstep's parked state fits ``budget`` bytes, else the level with
    the largest parked state, then the next, while that lowers the peak."""
    def peaks(replay: set[int]) -> dict[int, int]:
        out = {}
        for segment, step in zip(segments, steps):
            size = _park_bytes(segment, (height // step) * (width // step), element_size, segment.level in replay)
            out[segment.level] = max(out.get(segment.level, 0), size)
        return out

    replay: set[int] = set()
    while True:
        current = peaks(replay)
        worst = max(current.values())
        if worst <= budget or any(current[level] == worst for level in replay):
            return replay  # fits, or the largest is a replayed level already: replaying more cannot help
        replay |= {level for level, size in current.items() if size == worst}


def _segment_steps(segments: list[_Segment], step: int) -> list[int]:
    """Pixels per element at each segment's output."""
    out = []
    for segment in segments:
        step = _out_step(step, segment.resample)
        out.append(step)
    return out


def _run(segments: list[_Segment], first: _TiledMap, device, park, replay: set[int], on_pass, meter) -> _TiledMap:
    source = first
    for segment in segments:
        step = _out_step(source.step, segment.resample)
        target = _TiledMap(source.owns, step, source.height * source.step, source.width * source.step)
        run = _replay if segment.level in replay else _lockstep
        run(segment, source, target, device, park, on_pass, meter)
        source = target
    return source


def _passes(segments: list[_Segment]) -> int:
    return sum(segment.norms + 1 for segment in segments)


# -- public API ---------------------------------------------------------------------------------------
REPLAY_SHARE = 8  # lockstep may park up to 1/8 of the parking device's free memory; above, levels replay


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


def _replay_levels(segments, start_step: int, height: int, width: int, dtype, park, replay) -> set[int]:
    """``replay``: None = chosen from the parking device's free memory; True/False = every level / none;
    or the levels themselves (0 = full resolution)."""
    levels = {segment.level for segment in segments}
    if isinstance(replay, bool):
        return levels if replay else set()
    if replay is not None:
        return set(replay) & levels
    budget = comfy.model_management.get_free_memory(park) / REPLAY_SHARE
    return _choose_replay(segments, _segment_steps(segments, start_step), height, width,
                          comfy.model_management.dtype_size(dtype), budget)


def _tiled(segments, first: _TiledMap, device, park, replay: set[int], bar, meter) -> _TiledMap:
    log.debug("DiffBIR tiled VAE: replaying levels %s", sorted(replay))
    return _run(segments, first, device, park, replay, (lambda: bar.update(1)) if bar is not None else (lambda: None),
                meter)


def _progress_over(blocks: list[torch.nn.Module], images: int):
    """ComfyUI's untiled call with a bar step per block (none when ``blocks`` is empty)."""
    return per_block(blocks, images) if blocks else contextlib.nullcontext()


def _decoder_blocks(dec) -> list[torch.nn.Module]:
    """The decoder's resblocks, latent resolution first: progress steps for an untiled decode."""
    return [dec.mid.block_1, dec.mid.block_2, *(block for level in reversed(dec.up) for block in level.block)]


def _encoder_blocks(enc) -> list[torch.nn.Module]:
    """The encoder's resblocks, full resolution first: progress steps for an untiled encode."""
    return [*(block for level in enc.down for block in level.block), enc.mid.block_1, enc.mid.block_2]


def decode(vae, latent: torch.Tensor, tile_size: int = 0, progress: bool = True,
           replay: bool | set[int] | None = None, meter: _Meter | None = None, clamp: bool = True) -> torch.Tensor:
    """IMAGE [B, H, W, 3] from an unscaled LATENT [B, 4, h, w], tiled exactly (see module docstring),
    in [0, 1] when ``clamp``; unclipped ((x + 1) / 2 of the decoder output, as the official code takes it)
    otherwise. ``tile_size`` in image pixels; 0 = automatic (ComfyUI's untiled decode when the whole
    image fits in free memory). ``replay``: see ``_replay_levels`` (the result is the same)."""
    if not clamp:
        with comfy_compat.unclipped_vae_output(vae):
            return decode(vae, latent, tile_size, progress, replay, meter)
    validate_tile(tile_size)
    if not tile_size and not hasattr(vae.first_stage_model, "decoder"):
        return vae.decode(latent)
    _check_supported(vae)
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

    comfy.model_management.load_models_gpu([vae.patcher], memory_required=memory(tile_size or 256))
    free = comfy.model_management.get_free_memory(vae.device)
    tile = _pick_tile(lambda t: memory(t) < free, tile_size, max(h, w) * 8)
    if not tile or (tile >= h * 8 and tile >= w * 8):
        log.info("DiffBIR VAE decode: %dx%d px untiled", w * 8, h * 8)
        with _progress_over(_decoder_blocks(dec) if progress else [], b):
            return vae.decode(latent)
    device, park = _devices(vae)
    owns = _tiles(h * 8, w * 8, tile)
    segments = _decoder_segments(dec)
    levels = _replay_levels(segments, 8, h * 8, w * 8, dtype, park, replay)
    log.info("DiffBIR VAE decode: %dx%d px in %d exact tiles of %d px%s", w * 8, h * 8, len(owns), tile,
             f" (replaying levels {sorted(levels)} to save memory)" if levels else "")
    bar = comfy.utils.ProgressBar(b * _passes(segments)) if progress else None
    out = torch.empty((b, h * 8, w * 8, 3), dtype=torch.float32, device=vae.output_device)
    for i in range(b):
        with torch.inference_mode():
            z = latent[i:i + 1].to(device=device, dtype=dtype)
            x = fsm.post_quant_conv(z)
            x = dec.conv_in(x)
            x = dec.mid.block_1(x, None)
            x = _mid_attention(dec.mid.attn_1, x)
            x = dec.mid.block_2(x, None).to(park)
            first = _TiledMap(owns, 8, h * 8, w * 8)
            for j in range(len(owns)):
                t, bo, le, r = first.own(j)
                first.chunks[j] = x[..., t:bo, le:r]
            del x, z
            image = _tiled(segments, first, device, park, levels, bar, meter)
            for j, own in enumerate(owns):
                piece = vae.process_output(image.chunks[j].float())
                image.chunks[j] = None
                out[i, own[0]:own[1], own[2]:own[3]] = piece[0].movedim(0, -1).to(out.device)
    return out


def encode(vae, pixels: torch.Tensor, tile_size: int = 0, progress: bool = True,
           replay: bool | set[int] | None = None, meter: _Meter | None = None) -> torch.Tensor:
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
    dtype = vae.vae_dtype

    def memory(tile: int) -> float:
        if not tile:
            return vae.memory_used_encode((1, 3, h, w), dtype)
        t = tile + 2 * TILE_HALO_PX
        return vae.memory_used_encode((1, 3, min(h, t), min(w, t)), dtype)

    comfy.model_management.load_models_gpu([vae.patcher], memory_required=memory(tile_size or 256))
    free = comfy.model_management.get_free_memory(vae.device)
    tile = _pick_tile(lambda t: memory(t) < free, tile_size, max(h, w))
    if not tile or (tile >= h and tile >= w):
        log.info("DiffBIR VAE encode: %dx%d px untiled", w, h)
        with _progress_over(_encoder_blocks(enc) if progress else [], b):
            return vae.encode(pixels)
    device, park = _devices(vae)
    owns = _tiles(h, w, tile)
    segments = _encoder_segments(enc)
    levels = _replay_levels(segments, 1, h, w, dtype, park, replay)
    log.info("DiffBIR VAE encode: %dx%d px in %d exact tiles of %d px%s", w, h, len(owns), tile,
             f" (replaying levels {sorted(levels)} to save memory)" if levels else "")
    bar = comfy.utils.ProgressBar(b * _passes(segments)) if progress else None
    out = torch.empty((b, 4, h // 8, w // 8), dtype=torch.float32, device=vae.output_device)
    for i in range(b):
        with torch.inference_mode():
            x = vae.process_input(pixels[i:i + 1].movedim(-1, 1)).to(device=park, dtype=dtype)
            first = _TiledMap(owns, 1, h, w)
            for j in range(len(owns)):
                t, bo, le, r = first.own(j)
                first.chunks[j] = x[..., t:bo, le:r]
            del x
            features = _tiled(segments, first, device, park, levels, bar, meter)
            feature = torch.empty((1, features.chunks[0].shape[1], h // 8, w // 8), dtype=features.chunks[0].dtype,
                                  device=device)
            for j in range(len(owns)):
                t, bo, le, r = features.own(j)
                feature[..., t:bo, le:r] = features.chunks[j].to(device)
                features.chunks[j] = None
            x = enc.mid.block_1(feature, None)
            del feature
            x = _mid_attention(enc.mid.attn_1, x)
            x = enc.mid.block_2(x, None)
            x = enc.conv_out(_silu(enc.norm_out(x)))
            z = fsm.quant_conv(x)
            z, _ = fsm.regularization(z)
            out[i] = z[0].float().to(out.device)
    return out
