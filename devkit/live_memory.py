"""Bytes of tensor storage alive at once, counted exactly while some code runs: a deterministic
stand-in for the resident-memory peak of the CPU allocator (which glibc's arenas blur), for tests
that bound how much a piece of code holds at a time and for the benchmarks' ``--count-tensors``.
Only what operations return is seen: buffers a kernel allocates and frees inside itself are not."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Counts every storage an operation creates inside the ``with`` block until it is freed, and
    keeps the peak of the sum. Storages that exist before (weights, inputs: pass their tensors as
    ``existing``) are not counted, whatever views of them the code takes."""

    def __init__(self, existing=()):
        super().__init__()
        self._ignored = {t.untyped_storage().data_ptr() for t in existing}
        self._alive: set[int] = set()
        self.live = self.peak = 0

    def _created(self, key: int, nbytes: int) -> None:
        self._alive.add(key)
        self.live += nbytes

    def _freed(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._alive or key in self._ignored:
                continue
            self._created(key, nbytes)
            # PyTorch keeps one Python object per storage: it dies with the storage's last tensor
            weakref.finalize(storage, self._freed, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


class StageTensorBytes(LiveTensorBytes):
    """LiveTensorBytes that also keeps the peak per stage: set ``stage`` as the code moves from one part
    to the next, and ``peaks[stage]`` is the most alive at once while it ran (counting what earlier
    stages left alive). ``peak_origins[stage]`` splits that peak by the stage that created each
    storage, so what an earlier stage left alive shows apart from the stage's own tensors."""

    def __init__(self, existing=(), stage: str = "other"):
        super().__init__(existing)
        self.stage = stage
        self.peaks: dict[str, int] = {}
        self.peak_origins: dict[str, dict[str, int]] = {}
        self._origin: dict[int, str] = {}
        self._live_by_origin: dict[str, int] = {}

    def _created(self, key: int, nbytes: int) -> None:
        super()._created(key, nbytes)
        self._origin[key] = self.stage
        self._live_by_origin[self.stage] = self._live_by_origin.get(self.stage, 0) + nbytes

    def _freed(self, key: int, nbytes: int) -> None:
        super()._freed(key, nbytes)
        self._live_by_origin[self._origin.pop(key)] -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.live > self.peaks.get(self.stage, -1):
            self.peaks[self.stage] = self.live
            self.peak_origins[self.stage] = {k: v for k, v in self._live_by_origin.items() if v}
        return out
