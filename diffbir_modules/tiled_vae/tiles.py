"""Tile planning and halo exchange: the tiles' own regions on a grid of 8 pixels, and a whole-image
feature map kept as those regions, from which each tile's input is cut with its neighbours' halo."""

from __future__ import annotations

import math
from collections.abc import Generator

import torch


def splits(length: int, tile: int, unit: int = 8) -> list[tuple[int, int]]:
    """Even split of ``length`` pixels into ceil(length / tile) parts on multiples of ``unit``."""
    n = max(1, math.ceil(length / tile))
    units = length // unit
    bounds = [round(i * units / n) * unit for i in range(n + 1)]
    bounds[-1] = length
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def tile_regions(h: int, w: int, tile: int) -> list[tuple[int, int, int, int]]:
    """The tiles' own regions (top, bottom, left, right) in image pixels, on multiples of 8."""
    return [(top, bottom, left, right) for top, bottom in splits(h, tile) for left, right in splits(w, tile)]


def _scaled(region, step: int) -> tuple[int, int, int, int]:
    return tuple(v // step for v in region)


def _intersect(a, b):
    t, bo, le, r = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (t, bo, le, r) if t < bo and le < r else None


class TiledMap:
    """A whole-image feature map [1, C, H/step, W/step] kept as the tiles' own regions: one chunk per
    tile, no overlap, so it takes exactly the memory of the untiled map. ``owns`` in image pixels;
    the tiles cut from it are laid out in ``memory_format`` (see ``planning.tile_layout``)."""

    def __init__(self, owns: list, step: int, height: int, width: int,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.owns, self.step, self.memory_format = owns, step, memory_format
        self.height, self.width = height // step, width // step
        self.chunks: list[torch.Tensor | None] = [None] * len(owns)

    def _empty(self, like: torch.Tensor, region) -> torch.Tensor:
        return torch.empty((*like.shape[:2], region[1] - region[0], region[3] - region[2]), dtype=like.dtype,
                           device=like.device, memory_format=self.memory_format)

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
        return self._assemble(self.region(i, halo))

    def _assemble(self, region) -> torch.Tensor:
        out = self._empty(next(c for c in self.chunks if c is not None), region)
        for j, chunk in enumerate(self.chunks):
            self._paste(out, region, self.own(j), chunk)
        return out

    def regrid(self, owns: list) -> TiledMap:
        """The same map kept as other own regions (e.g. the whole image as one tile at a small level); this
        one is left empty, so that a caller still holding it (the first map of a pass) holds no memory."""
        out = TiledMap(owns, self.step, self.height * self.step, self.width * self.step, self.memory_format)
        out.chunks = [self._assemble(out.own(i)) for i in range(len(owns))]
        self.chunks = [None] * len(self.owns)
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
            out = self._empty(chunk, region)
            self._paste(out, region, self.own(i), chunk)
            for part, strip in strips[i]:
                self._paste(out, region, part, strip)
            self.chunks[i] = None
            strips[i] = None
            del chunk
            yield i, out

    def tensors(self) -> list[torch.Tensor]:
        return [c for c in self.chunks if c is not None]


def own_slices(own, origin):
    return slice(own[0] - origin[0], own[1] - origin[0]), slice(own[2] - origin[1], own[3] - origin[1])
