"""host_memory.release hands freed heap memory back to the system (glibc), which is what keeps a long
ComfyUI session's resident memory from creeping up after restores."""

import sys

import psutil
import pytest
import torch

from diffbir_modules import host_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")


def test_release_returns_freed_heap_memory():
    process = psutil.Process()
    rss = lambda: process.memory_info().rss / 2**20  # noqa: E731
    # Freeing a 16 MiB block raises glibc's dynamic mmap threshold to 16 MiB, so the 2 MiB blocks below
    # come from the heap (as a restore's activations do) instead of mappings of their own.
    raise_threshold = torch.empty(16 * 2**20 // 4)
    del raise_threshold
    blocks = [torch.ones(2**19) for _ in range(200)]  # 400 MiB, written so the pages are resident
    allocated = rss()
    del blocks[::2]  # 200 MiB of holes between live blocks: the heap cannot shrink from its top
    freed = rss()
    assert host_memory.release()
    released = rss()
    # Measured: the free gives back 0 MiB, the release 200 MiB. Bounds: the holes must stay resident
    # after the free for the test to mean anything (< 50 MiB returned), and the release must return
    # most of the 200 MiB (> 150).
    assert allocated - freed < 50, f"glibc returned {allocated - freed:.0f} MiB itself: the test shows nothing"
    assert freed - released > 150, f"the release returned only {freed - released:.0f} MiB of 200"
    del blocks
