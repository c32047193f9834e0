"""The benchmarks that measure in child processes (one per case, so each peak is its own) start those
children as modules from the repository root, where they import devkit and the pack: run on the tiny
random models, one step, through the real subprocesses. No timings are checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffbir_modules import cpu_features

REPO = Path(__file__).resolve().parent.parent
# The benchmark tooling, not the user's path and not runtime-specific: default runtime only in CI.
pytestmark = pytest.mark.once


def run_module(*args: str) -> subprocess.CompletedProcess:
    """The benchmark run as a user runs it (``python -m scripts.NAME`` from the repository root), with no
    PYTHONPATH for the children to inherit: they must find the repository on their own."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_tiling_benchmark_child(tmp_path):
    report = tmp_path / "tiling.json"
    run_module("scripts.benchmark_tiling", "--variant", "tiny", "--sizes", "256", "--steps", "1", "--json",
               str(report))
    summary = json.loads(report.read_text())
    assert summary["cpu"] == cpu_features.describe()  # timings compare only on one CPU
    [result] = summary["cases"]
    assert result["output"] == [1, 256, 256, 3]
    assert all(math.isfinite(result[k]) and result[k] > 0 for k in ("vae_encode_s", "sampling_s", "vae_decode_s"))


def test_stage2_benchmark_child(tmp_path):
    run_module("scripts.benchmark_stage2", "--variant", "tiny", "--sizes", "64", "--steps", "1", "--cfgs", "4",
               "--control-only", "--device", "cpu", "--out-dir", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["machine"]["cpu"] == cpu_features.describe()
    [case] = report["cases"]
    assert case["decoded_shape"] == [1, 64, 64, 3] and case["decoded_finite"]
