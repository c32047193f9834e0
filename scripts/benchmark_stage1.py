#!/usr/bin/env python
"""Stage-1 (degradation removal) figures on this machine, with the published network sizes (random
weights from devkit/model_factory.py: speed and memory do not depend on the values).

    .venv/bin/python -m scripts.benchmark_stage1 bench [--models swinir,bsrnet,scunet] [--sizes 256,512,1024]
    .venv/bin/python -m scripts.benchmark_stage1 seams [--out docs/images/stage1_tiled_vs_untiled.png]

``bench``: time and peak resident memory of one stage-1 run per (model, input size, tiled or not),
each case in a fresh subprocess (so peaks do not mix), after a 64x64 warm-up, best of --repeat runs.
Time is wall-clock and CPU time (user + system, all threads; less sensitive to other jobs on a
shared machine); memory is the peak RSS of that process and what the run added over the loaded
model. The cleaner runs at exactly the input size (upscale 1, BSRNet its own x4, short-side rule
off); tiled uses the official default tiles (512, stride 256) and the README's smaller ones
(256 / 128). SwinIR (the v2.1 cleaner) runs every size; BSRNet and SCUNet only up to --max-other
(on 2 CPU cores a 1024^2 BSRNet run, 4096^2 out, takes hours).

``seams``: tiled vs untiled on a real photo (scikit-image's coffee, 400x600; ``--align`` crops it to
384x576 so that every tile starts on SwinIR's 64 px attention-window grid): max and mean difference,
and how much of the difference sits on tile borders (mean difference within 8 px of a window edge /
mean elsewhere), for each tile weighting; writes a difference heat map.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from diffbir_modules import cpu_features  # plain Python: no ComfyUI import

REPO = Path(__file__).resolve().parent.parent

FILES = {"swinir": "realesrgan_s4_swinir_100k.pth", "bsrnet": "BSRNet.pth", "scunet": "scunet_color_real_psnr.pth"}
TILINGS = {"untiled": None, "tiled 512/256": (512, 256), "tiled 256/128": (256, 128)}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load(kind: str):
    from spandrel import ModelLoader

    from devkit import model_factory

    return ModelLoader().load_from_file(str(model_factory.stage1_file(FILES[kind], "full"))).eval()


def one_case(kind: str, size: int, tiling: str, threads: int, repeat: int = 1) -> dict:
    """Runs in the child process: load, warm up on 64x64, time the best of ``repeat`` runs, report."""
    from dataclasses import replace

    import torch

    from diffbir_modules import stage1

    torch.set_num_threads(threads)
    descriptor = load(kind)
    cleaner = stage1.Cleaner.from_spandrel(descriptor)
    tiles = TILINGS[tiling]
    # the network's own scale (1, or BSRNet's 4) and no short-side rule: it runs at exactly `size`
    settings = stage1.Settings(rules="auto", upscale=float(cleaner.scale), min_short_side=0,
                               tiled=tiles is not None, tile_size=(tiles or (512, 256))[0],
                               tile_stride=(tiles or (512, 256))[1])
    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # warm-up on a small image: one-time kernel selection and allocator set-up
        stage1.run_batch(image[:, :64, :64].contiguous(), cleaner, replace(settings, tiled=False))
    baseline = rss_mib()
    times, cpu_times = [], []
    for _ in range(repeat):
        usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with torch.inference_mode():
            out, plan = stage1.run_batch(image, cleaner, settings)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_times.append(after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(model=kind, size=size, tiling=tiling, tiles=stage1.tile_count(plan, settings), seconds=min(times),
                cpu_seconds=min(cpu_times), all_seconds=times, peak_rss_mib=peak, rss_before_run_mib=baseline,
                output=list(out.shape[1:3]))


def bench(args) -> None:
    from devkit import model_factory

    models = args.models.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    for kind in models:  # build the files once, outside the timed children
        model_factory.stage1_file(FILES[kind], "full")
    results = []
    for kind in models:
        for size in sizes:
            if kind != "swinir" and size > args.max_other:
                continue
            for tiling in TILINGS:
                command = [sys.executable, "-m", "scripts.benchmark_stage1", "_case", kind, str(size), tiling,
                           str(args.threads), str(args.repeat)]
                done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"case {kind} {size} {tiling} failed")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["load_average"] = os.getloadavg()[0]
                result["cpu"] = cpu_features.describe()
                results.append(result)
                added = result["peak_rss_mib"] - result["rss_before_run_mib"]
                print(f"{kind:7s} {size:5d}^2 {tiling:14s} tiles {result['tiles']:3d}  {result['seconds']:8.2f} s "
                      f"(CPU {result['cpu_seconds']:.1f} s)  "
                      f"peak RSS {result['peak_rss_mib']:8.0f} MiB (+{added:.0f} over the loaded model)  "
                      f"load avg {result['load_average']:.1f}", flush=True)
    print()
    print("| model | input | run | tiles | wall (s) | CPU (s) | peak RSS (MiB) | added by the run (MiB) | "
          "CPU time vs untiled | added memory vs untiled |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = next(b for b in results if b["model"] == r["model"] and b["size"] == r["size"] and
                    b["tiling"] == "untiled")
        added = r["peak_rss_mib"] - r["rss_before_run_mib"]
        base_added = base["peak_rss_mib"] - base["rss_before_run_mib"]
        print(f"| {r['model']} | {r['size']}^2 | {r['tiling']} | {r['tiles']} | {r['seconds']:.1f} | "
              f"{r['cpu_seconds']:.1f} | {r['peak_rss_mib']:.0f} | {added:.0f} | "
              f"{r['cpu_seconds'] / base['cpu_seconds']:.2f} | {added / max(base_added, 1):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def seams(args) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    from diffbir_modules import stage1, tiling

    torch.set_num_threads(args.threads)
    cleaner = stage1.Cleaner.from_spandrel(load("swinir"))
    image = torch.from_numpy(data.coffee().astype(np.float32) / 255.0)[None]
    if args.align:  # crop to multiples of 64 so every tile starts on SwinIR's attention-window grid
        image = image[:, : image.shape[1] // 64 * 64, : image.shape[2] // 64 * 64].contiguous()
    h, w = image.shape[1:3]
    base = stage1.Settings(rules="swinir", upscale=1.0, min_short_side=0, tile_size=args.tile, tile_stride=args.stride)
    with torch.inference_mode():
        untiled, _ = stage1.run_batch(image, cleaner, base)
    windows = tiling.sliding_windows(h, w, args.tile, args.stride)
    border = torch.zeros(h, w, dtype=torch.bool)
    for top, bottom, left, right in windows:
        for edge in (top, bottom):
            if 0 < edge < h:
                border[max(0, edge - args.band):edge + args.band, left:right] = True
        for edge in (left, right):
            if 0 < edge < w:
                border[top:bottom, max(0, edge - args.band):edge + args.band] = True
    print(f"coffee {w}x{h}, SwinIR (published size, random weights), tiles {args.tile}/{args.stride}: "
          f"{len(windows)} windows; border band +-{args.band} px = {float(border.float().mean()) * 100:.1f}% of pixels")
    print("| weighting | max abs diff | mean abs diff | mean on tile borders | mean elsewhere | border / elsewhere | "
          "max diff (8-bit levels) |")
    print("|---|---|---|---|---|---|---|")
    maps = {}
    for name, weighting, midpoint in (("gaussian (official)", "gaussian", True),
                                      ("gaussian (symmetric)", "gaussian", False), ("uniform", "uniform", True)):
        settings = stage1.Settings(**{**base.__dict__, "tiled": True, "weighting": weighting,
                                      "official_midpoint": midpoint})
        with torch.inference_mode():
            tiled, plan = stage1.run_batch(image, cleaner, settings)
        assert plan.tiled
        diff = (tiled - untiled).abs()[0].mean(-1)
        on, off = float(diff[border].mean()), float(diff[~border].mean())
        levels = int(((tiled * 255).round() - (untiled * 255).round()).abs().max())
        print(f"| {name} | {float(diff.max()):.4f} | {float(diff.mean()):.5f} | {on:.5f} | {off:.5f} | "
              f"{on / max(off, 1e-12):.2f} | {levels} |")
        maps[name] = diff
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        diff = maps["gaussian (official)"]
        scaled = (diff / max(float(diff.max()), 1e-12) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(scaled).save(out, optimize=True)
        print(f"heat map (|tiled - untiled| averaged over RGB, scaled to its max) -> {out}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_case":
        kind, size, tiling_name, threads, repeat = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), \
            int(sys.argv[6])
        print(json.dumps(one_case(kind, size, tiling_name, threads, repeat)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--models", default="swinir,bsrnet,scunet")
    b.add_argument("--sizes", default="256,512,1024")
    b.add_argument("--max-other", type=int, default=256, help="largest size for BSRNet and SCUNet")
    b.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    b.add_argument("--repeat", type=int, default=1, help="time the best of this many runs per case")
    b.add_argument("--json", default="")
    s = sub.add_parser("seams")
    s.add_argument("--tile", type=int, default=256)
    s.add_argument("--stride", type=int, default=128)
    s.add_argument("--band", type=int, default=8)
    s.add_argument("--align", action="store_true", help="crop the photo to multiples of 64 (tiles on the window grid)")
    s.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    s.add_argument("--out", default="docs/images/stage1_tiled_vs_untiled.png")
    args = parser.parse_args()
    {"bench": bench, "seams": seams}[args.command](args)


if __name__ == "__main__":
    main()
