"""The engine: runs the segments tile by tile with whole-image GroupNorm statistics, either in
lockstep (fast, parks the waiting tiles' tensors) or by replay (parks only each segment's input)."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.ops
import torch

from .segments import Segment, out_step, output_origin
from .tiles import TiledMap, own_slices

log = logging.getLogger("DiffBIR")


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
        stats.add(t[..., rows, cols], norm.num_groups)
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


def _run(segments: list[Segment], first: TiledMap, device, park, replay: set[int], on_pass, meter) -> TiledMap:
    source = first
    for segment in segments:
        step = out_step(source.step, segment.resample)
        target = TiledMap(source.owns, step, source.height * source.step, source.width * source.step)
        run = _replay if segment.level in replay else _lockstep
        run(segment, source, target, device, park, on_pass, meter)
        source = target
    return source


def run_tiled(segments, first: TiledMap, device, park, replay: set[int], bar, meter) -> TiledMap:
    log.debug("DiffBIR tiled VAE: replaying levels %s", sorted(replay))
    return _run(segments, first, device, park, replay, (lambda: bar.update(1)) if bar is not None else (lambda: None),
                meter)
