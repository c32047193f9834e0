"""The engine: runs the segments tile by tile with whole-image GroupNorm statistics, either in
lockstep (fast, parks the waiting tiles' tensors) or by replay (parks only each segment's input)."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.ops
import torch

from .. import host_memory
from .planning import segment_owns
from .segments import Segment, out_step, output_origin
from .tiles import TiledMap, own_slices

log = logging.getLogger("DiffBIR")


MOMENT_CHUNK = 2**20  # elements of a tile converted to float64 at a time for its GroupNorm moments


def _merge(a: tuple, b: tuple) -> tuple:
    """Moments (elements, mean, sum of squared deviations) of two parts together (Chan et al.)."""
    if a is None:
        return b
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta * delta * (na * nb / n)


def _remove(whole: tuple, part: tuple) -> tuple:
    """Moments of ``whole`` less its ``part`` (Chan et al.'s update run backwards)."""
    (n, mean, m2), (nb, mb, m2b) = whole, part
    na = n - nb
    ma = (mean * n - mb * nb) / na
    return na, ma, (m2 - m2b - (mb - ma) ** 2 * (na * nb / n)).clamp_min(0)


def _moments(x: torch.Tensor, groups: int) -> tuple:
    """(elements, mean, sum of squared deviations) per group of ``x`` [B, C, H, W], float64 [B, groups]
    on the CPU, from PyTorch's own GroupNorm kernel (vectorised; eps 0, so the variance comes back
    exactly from ``rstd``) run on float64 copies of chunks of rows. Why float64: the channels-last
    kernel sums x and x squared in float32, which lost 2e-5 of a variance for data 3 standard
    deviations from zero (measured; 1e-12 in float64). A chunk of rows of a channels-last tensor is one
    block of memory, so its copy is fast and stays small. The own moments of a 128 x 262 x 262 tile
    took 15 ms on a 2-core CPU, against 10 ms for the float32 kernel over a default-layout tile: small
    beside what the channels-last convolutions save (about 20 ms per convolution of that tile)."""
    b, c, h, w = x.shape
    step = max(1, MOMENT_CHUNK // (b * c * w))
    total = None
    for top in range(0, h, step):
        chunk = x[..., top:top + step, :].double()
        if not (chunk.device.type == "cpu" and chunk.is_contiguous(memory_format=torch.channels_last)):
            chunk = chunk.contiguous()  # the CPU kernel takes either dense layout, the others the default one
        _, mean, rstd = torch.ops.aten.native_group_norm(chunk, None, None, b, c, chunk.shape[2] * w, groups, 0.0)
        n = c // groups * chunk.shape[2] * w
        total = _merge(total, (n, mean, rstd.pow(-2) * n))
    n, mean, m2 = total
    return n, mean.cpu(), m2.cpu()


def _own_moments(t: torch.Tensor, rows: slice, cols: slice, groups: int) -> tuple:
    """Moments of a tile's own region ``t[..., rows, cols]``: those of its own rows (whole, so their
    chunks are dense) less those of the halo columns left and right of it. In float64 the
    subtraction loses nothing that matters."""
    own = _moments(t[..., rows, :], groups)
    for halo in (t[..., rows, :cols.start], t[..., rows, cols.stop:]):
        if halo.numel():
            own = _remove(own, _moments(halo, groups))
    return own


class _Stats:
    """Whole-image GroupNorm statistics from per-tile partial ones."""

    def __init__(self):
        self.moments = None

    def add(self, t: torch.Tensor, rows: slice, cols: slice, groups: int) -> None:
        """Adds the own region ``t[..., rows, cols]`` of tile ``t``."""
        if t[..., rows, cols].numel():
            self.moments = _merge(self.moments, _own_moments(t, rows, cols, groups))

    def result(self):
        n, mean, m2 = self.moments
        return mean, m2 / n


def _affine(norm, mean: torch.Tensor, var: torch.Tensor, device) -> tuple:
    """The GroupNorm with the given (whole-image) group statistics as a per-channel (scale, shift), float32
    on ``device``: statistics and affine weights folded in float64 on [1, C] numbers, as PyTorch's own
    GroupNorm kernel does with its own statistics. ``network.normalize`` applies it in one pass."""
    per_group = norm.num_channels // norm.num_groups
    inv = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)  # [1, C], float64
    mean = mean.repeat_interleave(per_group, dim=1)
    if norm.affine:
        weight, bias = comfy.ops.cast_bias_weight(norm, dtype=torch.float64, device=mean.device,
                                                   bias_dtype=torch.float64)
        scale, shift = inv * weight, bias - mean * inv * weight
    else:
        scale, shift = inv, -mean * inv
    return (scale.to(device=device, dtype=torch.float32).reshape(-1),
            shift.to(device=device, dtype=torch.float32).reshape(-1))


HAND_BACK_PARKED_BYTES = 512 * 2**20  # hand back after every tile where lockstep parks this much or more


def hands_back(segment: Segment, source: TiledMap, target: TiledMap, device) -> bool:
    """Whether each tile of ``segment`` hands the pages its freed working tensors left in glibc's heaps back
    to the system (``host_memory.release``) before the next tile runs: on a CPU, where lockstep parks at
    least ``HAND_BACK_PARKED_BYTES`` (twice the block's output channels over the whole map).

    Why: inside a whole restore the decode starts on heaps that loading and sampling left with free space
    between the weights' blocks; the tiles' tensors under glibc's 32 MiB mmap threshold land on other free
    pages tile after tile, and at 1024 px the resident memory grew 0.6 GiB above the tensors in use by the
    first full-resolution pass (decode peak 1.57-1.87 GiB above the weights, 1.17-1.21 handing back after
    every tile; docs/tiling.md). Below the bound it only costs: at 512 px (full resolution parks 256 MiB)
    the hand-backs and the pages mapped again after them made a decode 8 % slower and lowered nothing. Once
    per pass instead of per tile did not help (docs/development.md). Touches no live memory; on a GPU the
    tiles' working tensors are not in host memory."""
    if torch.device(device).type != "cpu":
        return False
    sample = next((c for c in source.chunks if c is not None), None)
    size = sample.element_size() if sample is not None else 4
    return target.height * target.width * 2 * segment.channels[1] * size >= HAND_BACK_PARKED_BYTES


def _nothing() -> None:
    pass


class Meter:
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


def _lockstep(segment: Segment, source: TiledMap, target: TiledMap, device, park, on_pass, meter,
              after_tile) -> None:
    """Every tile advances to the segment's next GroupNorm; what it hands out is parked until the
    whole-image statistics are known. Fast; parks up to twice ``out_channels`` per element."""
    programs, requests, origins = {}, {}, {}
    stats = _Stats()

    def advance(i, request_or_value, finished):
        own = target.own(i)
        rows, cols = own_slices(own, origins[i])
        if finished:
            target.chunks[i] = request_or_value[..., rows, cols].to(park)
            return
        norm, t, carry = request_or_value
        stats.add(t, rows, cols, norm.num_groups)
        requests[i] = (norm, t.to(park), tuple(c.to(park) for c in carry))

    for i, x in source.consume(segment.halo):
        origins[i] = output_origin(source.region(i, segment.halo), segment.resample)
        programs[i] = segment.program([x.to(device)])
        del x
        advance(i, next(programs[i]), False)
        after_tile()
        if meter:
            meter.measure(source.tensors(), [t for r in requests.values() for t in (r[1], *r[2])])
    on_pass()
    while requests:
        # every waiting tile stopped at the same GroupNorm of the segment
        affine = _affine(next(iter(requests.values()))[0], *stats.result(), device)
        stats = _Stats()
        comfy.model_management.throw_exception_if_processing_interrupted()
        for i in list(requests):
            _, t, carry = requests.pop(i)
            sent = ([t.to(device), *(c.to(device) for c in carry)], affine)
            del t, carry  # the tile empties the box in ``sent`` (network.resume): no reference left here
            try:
                advance(i, programs[i].send(sent), False)
            except StopIteration as done:
                advance(i, done.value, True)
                del programs[i]
            finally:
                del sent
            after_tile()
            if meter:
                meter.measure(target.tensors(), [t for r in requests.values() for t in (r[1], *r[2])])
        on_pass()


def _replay(segment: Segment, source: TiledMap, target: TiledMap, device, park, on_pass, meter,
            after_tile) -> None:
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
            origin = output_origin(source.region(i, segment.halo), segment.resample)
            rows, cols = own_slices(target.own(i), origin)
            program = segment.program([x.to(device)])
            del x
            try:
                request = next(program)
                for affine in known:
                    _, t, carry = request
                    del request
                    sent = ([t, *carry], affine)
                    del t, carry
                    request = program.send(sent)
                    del sent
            except StopIteration as done:
                if not final:
                    raise RuntimeError("a VAE segment ended before its GroupNorms") from None
                target.chunks[i] = done.value[..., rows, cols].to(park)
                del done
                after_tile()
                if meter:
                    meter.measure(source.tensors(), target.tensors())
                continue
            norm, t, _ = request
            del request
            stats.add(t, rows, cols, norm.num_groups)
            del t
            program.close()
            after_tile()
            if meter:
                meter.measure(source.tensors(), target.tensors())
        on_pass()
        if final:
            return
        known.append(_affine(norm, *stats.result(), device))  # the GroupNorm every tile stopped at
        comfy.model_management.throw_exception_if_processing_interrupted()


def _run(segments: list[Segment], plan: list[list], first: TiledMap, device, park, replay: set[int], on_pass,
         meter) -> TiledMap:
    source = first
    for segment, owns in zip(segments, plan):
        if owns != source.owns:
            source = source.regrid(owns)
        step = out_step(source.step, segment.resample)
        target = TiledMap(owns, step, source.height * source.step, source.width * source.step, source.memory_format)
        run = _replay if segment.level in replay else _lockstep
        after_tile = host_memory.release if hands_back(segment, source, target, device) else _nothing
        run(segment, source, target, device, park, on_pass, meter, after_tile)
        source = target
    return source


def run_tiled(segments, first: TiledMap, device, park, replay: set[int], bar, meter,
              full_resolution_owns: list | None = None) -> TiledMap:
    """Runs ``segments`` from ``first``; each with the tiles ``segment_owns`` gives it."""
    log.debug("DiffBIR tiled VAE: replaying levels %s", sorted(replay))
    plan = segment_owns(segments, first.step, first.owns, first.height * first.step, first.width * first.step,
                        full_resolution_owns)
    return _run(segments, plan, first, device, park, replay,
                (lambda: bar.update(1)) if bar is not None else (lambda: None), meter)
