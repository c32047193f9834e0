"""scripts/benchmark_vae.py runs and reports what it says: both sides timed, and the exact tiled VAE
equal to ComfyUI's untiled one (a smoke run at a small size; the figures themselves are the script's)."""

from __future__ import annotations

import pytest

from diffbir_modules import cpu_features
from scripts import benchmark_vae, in_worker_thread

# The benchmark tooling, not the user's path and not runtime-specific: default runtime only in CI.
pytestmark = pytest.mark.once


def test_benchmark_vae_small_run(comfy):
    report = benchmark_vae.measure([128], tile=64, rounds=1, threads=2)
    row = report["sizes"]["128"]
    for key in ("comfyui_encode", "exact_encode", "comfyui_decode", "exact_decode"):
        assert row["seconds"][key] > 0 and row["cpu_seconds"][key] > 0
    assert row["encode_ratio"] > 0 and row["decode_ratio"] > 0
    # exact tiles: the tiled-VAE tests measure <= 1.7e-5 relative (latent) and 2.2e-3 / 255 (image)
    assert row["encode_max_relative_difference"] < 1e-4
    assert row["decode_max_difference"] < 1e-4
    assert report["device"] == f"cpu ({cpu_features.describe()})"  # timings compare only on one CPU


def test_benchmark_vae_exact_only(comfy):
    """--exact-only times the exact tiles alone (no ComfyUI side, no ratios)."""
    row = benchmark_vae.measure([128], tile=64, rounds=1, threads=2, exact_only=True)["sizes"]["128"]
    assert set(row["seconds"]) == {"exact_encode", "exact_decode"} and min(row["seconds"].values()) > 0
    assert set(row["peak_above_start_gib"]) == {"exact_encode", "exact_decode"}


def test_benchmark_vae_counts_tensors(comfy):
    """--count-tensors reports, per side and stage, the exact bytes of tensors alive at once in one more
    call: not the weights (0.31 GiB here) and never less than the exact decode's floor; with no timed
    rounds it only counts."""
    row = benchmark_vae.measure([128], tile=64, rounds=0, threads=2, count_tensors=True)["sizes"]["128"]
    assert "seconds" not in row and "peak_above_start_gib" not in row
    live = row["live_tensor_peak_bytes"]
    assert set(live) == {"comfyui_encode", "exact_encode", "comfyui_decode", "exact_decode"}
    full_map = 128 * 128 * 128 * 4  # one 128-channel fp32 map at full resolution
    # the exact decode parks two such maps for its GroupNorm statistics, and returns the image
    assert live["exact_decode"] > 2 * full_map + 3 * 128 * 128 * 4
    # measured 0.024-0.040 GiB for the four calls; the weights alone would add 0.31 GiB
    assert all(0 < value < 0.1 * 2**30 for value in live.values()), live


def test_benchmark_vae_runs_in_a_worker_thread_as_comfyui_does():
    """The measurement runs in a thread of its own (ComfyUI's prompt worker), errors reach the caller,
    and --main-thread runs it in the caller's thread."""
    import threading

    import pytest

    def in_main() -> bool:
        return threading.current_thread() is threading.main_thread()

    assert in_worker_thread(in_main) is False
    assert in_worker_thread(in_main, main_thread=True) is True
    with pytest.raises(ZeroDivisionError):
        in_worker_thread(lambda: 1 / 0)


def test_benchmark_vae_replay_choice(comfy, monkeypatch):
    """--replay reaches the exact tiled VAE as its ``replay`` argument (auto: None, none: False, full: level 0,
    all: True)."""
    from devkit import comfy_runtime

    tiled_vae = comfy_runtime.pack_module("diffbir_modules.tiled_vae")
    seen = []
    for name in ("encode", "decode"):
        real = getattr(tiled_vae, name)
        monkeypatch.setattr(tiled_vae, name, lambda *a, _real=real, **k: seen.append(k["replay"]) or _real(*a, **k))
    for choice, expected in (("all", True), ("none", False), ("full", {0})):
        seen.clear()
        report = benchmark_vae.measure([128], tile=64, rounds=1, threads=2, exact_only=True, replay=choice)
        assert seen == [expected, expected] and report["replay"] == choice
