"""Batch throughput: images per minute with 1 and with N Ray workers on this machine, and the
scaling ratio. Run from the repository root (needs the scale extra, requirements-scale.txt):

    .venv/bin/python -m scripts.benchmark_batch --models-dir MODELS [--images 24 --size 64 --steps 2]

MODELS is a ComfyUI models folder holding the files of the shipped v2 denoising workflow (the real
weights, or the random-weight stand-ins the tests install in .cache/test-comfy-models). Each worker
count gets a fresh local Ray cluster; the workers start and restore two warm-up images first, so the
timed run (``--images`` random images of ``--size`` px into a fresh folder) measures steady
throughput, not model loading. CPU workers get ``--threads`` torch threads each; on a GPU machine
each worker is one GPU. Results are printed and written as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from batch import engine
from batch.workers import RayPool
from diffbir_modules import cpu_features  # plain Python: no ComfyUI import
from scripts import comfy_headless

WORKFLOW = comfy_headless.REPO / "example_workflows" / "DiffBIR v2 denoising (SCUNet).json"


def make_images(folder: Path, count: int, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def measure(workers: int, args, scratch: Path) -> dict:
    import ray

    ray.init(num_cpus=workers * args.threads, include_dashboard=False, log_to_driver=False)
    try:
        settings = {"upscale": None, "steps": args.steps, "cfg": None, "min_short_side": 0}
        kwargs = {"workflow": comfy_headless.load_workflow(WORKFLOW), "settings": settings,
                  "models_dir": str(args.models_dir)}
        started = time.monotonic()
        pool = RayPool(kwargs, workers=workers)
        startup = time.monotonic() - started
        engine.run(make_images(scratch / f"warm{workers}", 2 * workers, args.size, 1), scratch / f"warm-out{workers}",
                   pool, 231, log=lambda _: None)
        images = make_images(scratch / f"in{workers}", args.images, args.size, 2)
        started = time.monotonic()
        summary = engine.run(images, scratch / f"out{workers}", pool, 231, log=lambda _: None)
        seconds = time.monotonic() - started
        pool.close()
    finally:
        ray.shutdown()
    assert summary.restored == args.images and not summary.failed, summary
    return {"workers": workers, "threads_per_worker": args.threads, "images": args.images, "seconds": round(seconds, 2),
            "images_per_minute": round(60 * args.images / seconds, 2), "startup_s": round(startup, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU worker")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="diffbir-batch-bench-") as scratch:
        for workers in args.workers:
            results.append(measure(workers, args, Path(scratch)))
            print(json.dumps(results[-1]))
    base = results[0]["images_per_minute"]
    for result in results:
        result["scaling_vs_first"] = round(result["images_per_minute"] / base, 3)
    report = {"machine": {"platform": platform.platform(), "cpu": cpu_features.describe(), "loadavg_start": load},
              "workflow": WORKFLOW.name, "size": args.size, "steps": args.steps, "results": results}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
