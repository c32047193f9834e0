"""The engine: runs the segments tile by tile with whole-image GroupNorm statistics, either in
lockstep (fast, parks the waiting tiles' tensors) or by replay (parks only each segment's input)."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.ops
import torch

from .planning import segment_owns
from .segments import Segment, out_step, output_origin
from .tiles import TiledMap, own_slices

log = logging.getLogger("DiffBIR")


def _moments(x: torch.Tensor, groups: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(elements, mean, sum of squared deviations) per group of ``x`` [B, C, H, W], float64 [B, groups]
    on the CPU, from PyTorch's own GroupNorm kernel (its vectorised moments; eps 0, so the variance
    comes back exactly from ``rstd``). ``var_mean`` is as exact but ~2.5x slower per element on the
    CPU, and far slower on the narrow strided strips of a halo frame (copied here: they are small)."""
    b, c, h, w = x.shape
    _, mean, rstd = torch.ops.aten.native_group_norm(x.float().contiguous(), None, None, b, c, h * w, groups, 0.0)
    n = c // groups * h * w
    return n, mean.double().cpu(), (rstd.double().pow(-2) * n).cpu()


def _own_moments(t: torch.Tensor, rows: slice, cols: slice, groups: int):
    """Moments of a tile's own region ``t[..., rows, cols]``: those of the whole tile less those of its
    halo frame (Chan et al.'s update run backwards). The own region is most of the tile (at least
    4/9 of it for the smallest tiles), so the subtraction loses no more than a factor ~2 of float32
    precision, and one fast pass over the contiguous tile replaces a copy of the strided own region."""
    n, mean, m2 = _moments(t, groups)
    frame = (t[..., :rows.start, :], t[..., rows.stop:, :], t[..., rows, :cols.start], t[..., rows, cols.stop:])
    for piece in frame:
        if piece.numel() == 0:
            continue
        nb, mb, m2b = _moments(piece, groups)
        na = n - nb
        ma = (mean * n - mb * nb) / na
        m2 = m2 - m2b - (mb - ma) ** 2 * (na * nb / n)
        n, mean = na, ma
    return n, mean, m2.clamp_min(0)


class _Stats:
    """Whole-image GroupNorm statistics from per-tile partial ones (Chan et al.'s parallel update)."""

    def __init__(self):
        self.n = None
        self.mean = None
        self.m2 = None

    def add(self, t: torch.Tensor, rows: slice, cols: slice, groups: int) -> None:
        """Adds the own region ``t[..., rows, cols]`` of tile ``t``."""
        if t[..., rows, cols].numel() == 0:
            return
        n, mean, m2 = _own_moments(t, rows, cols, groups)
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
    """GroupNorm of ``x`` with the given (whole-image) group statistics, in one pass over ``x``:
    the statistics and the affine weights are folded into a per-channel scale and shift first (in
    float64, on [B, C] numbers), as PyTorch's own GroupNorm kernel does with its own statistics.
    Applied by an inference batch norm over the B*C channels with mean 0, variance 1 and eps 0
    (``x * scale + shift`` exactly; its kernel is ~1.5x faster than ``addcmul`` on the CPU)."""
    b, c, height, width = x.shape
    per_group = c // norm.num_groups
    inv = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)  # [B, C], float64
    mean = mean.repeat_interleave(per_group, dim=1)
    if norm.affine:
        weight, bias = comfy.ops.cast_bias_weight(norm, dtype=torch.float64, device=mean.device,
                                                   bias_dtype=torch.float64)
        scale, shift = inv * weight, bias - mean * inv * weight
    else:
        scale, shift = inv, -mean * inv
    scale = scale.to(device=x.device, dtype=torch.float32).reshape(b * c)
    shift = shift.to(device=x.device, dtype=torch.float32).reshape(b * c)
    zeros, ones = torch.zeros_like(scale), torch.ones_like(scale)
    y = torch.nn.functional.batch_norm(x.float().reshape(1, b * c, height, width), zeros, ones, scale, shift,
                                       False, 0.0, 0.0)
    return y.reshape(x.shape).to(x.dtype)


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


def _lockstep(segment: Segment, source: TiledMap, target: TiledMap, device, park, on_pass, meter) -> None:
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


def _replay(segment: Segment, source: TiledMap, target: TiledMap, device, park, on_pass, meter) -> None:
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
            stats.add(t, rows, cols, norm.num_groups)
            del t
            program.close()
            if meter:
                meter.measure(source.tensors(), target.tensors())
        on_pass()
        if final:
            return
        known.append(stats.result())
        comfy.model_management.throw_exception_if_processing_interrupted()


def _run(segments: list[Segment], plan: list[list], first: TiledMap, device, park, replay: set[int], on_pass,
         meter) -> TiledMap:
    source = first
    for segment, owns in zip(segments, plan):
        if owns != source.owns:
            source = source.regrid(owns)
        step = out_step(source.step, segment.resample)
        target = TiledMap(owns, step, source.height * source.step, source.width * source.step)
        run = _replay if segment.level in replay else _lockstep
        run(segment, source, target, device, park, on_pass, meter)
        source = target
    return source


def run_tiled(segments, first: TiledMap, device, park, replay: set[int], bar, meter) -> TiledMap:
    """Runs ``segments`` from ``first``; each with the tiles ``segment_owns`` gives it."""
    log.debug("DiffBIR tiled VAE: replaying levels %s", sorted(replay))
    plan = segment_owns(segments, first.step, first.owns, first.height * first.step, first.width * first.step)
    return _run(segments, plan, first, device, park, replay,
                (lambda: bar.update(1)) if bar is not None else (lambda: None), meter)
