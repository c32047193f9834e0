"""PSNR/SSIM of the synthetic degradations against the clean photo, over many seeds.

    .venv/bin/python -m scripts.degradation_stats                     # astronaut + coffee, 20 seeds, both pipelines
    .venv/bin/python -m scripts.degradation_stats --seeds 50 --intensity 0.5 --json stats.json

Photos come from scikit-image's bundled data (no download). The degraded image is compared with the
original photo at full size (the node's default output: resized back to the input size), RGB, data range
[0, 1], SSIM with scikit-image's defaults (7x7 window, channel_axis=-1). Runs on the CPU without ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffbir_modules import degradations

PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea, "rocket": data.rocket}


def measure(photo: np.ndarray, pipeline: str, seeds: int, intensity: float, sharpen: bool) -> dict:
    x = torch.from_numpy(photo.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    psnr, ssim = [], []
    for seed in range(seeds):
        degraded, _ = degradations.synthesize(x, pipeline, seed, intensity=intensity, sharpen=sharpen)
        out = degraded[0].permute(1, 2, 0).numpy().astype(np.float64)
        ref = photo.astype(np.float64) / 255.0
        psnr.append(float(peak_signal_noise_ratio(ref, out, data_range=1.0)))
        ssim.append(float(structural_similarity(ref, out, data_range=1.0, channel_axis=-1)))

    def summary(v):
        return {"min": min(v), "median": statistics.median(v), "mean": statistics.fmean(v), "max": max(v)}

    return {"psnr": summary(psnr), "ssim": summary(ssim), "psnr_all": psnr, "ssim_all": ssim}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", nargs="+", default=["astronaut", "coffee"], choices=sorted(PHOTOS))
    parser.add_argument("--pipelines", nargs="+", default=list(degradations.PIPELINES),
                        choices=degradations.PIPELINES)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--intensity", type=float, default=1.0)
    parser.add_argument("--no-sharpen", action="store_true", help="realesrgan without the USM sharpening step")
    parser.add_argument("--json", type=Path, help="also write the numbers (per seed) to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    print(f"seeds 0..{args.seeds - 1}, intensity {args.intensity}, usm_sharpen {not args.no_sharpen}")
    print(f"{'photo':<10} {'pipeline':<11} {'PSNR dB min / median / max':<30} {'SSIM min / median / max':<26} time")
    for name in args.photos:
        photo = PHOTOS[name]()
        for pipeline in args.pipelines:
            t0 = time.perf_counter()
            r = measure(photo, pipeline, args.seeds, args.intensity, not args.no_sharpen)
            r["seconds"] = time.perf_counter() - t0
            results[f"{name}/{pipeline}"] = r
            p, s = r["psnr"], r["ssim"]
            print(f"{name:<10} {pipeline:<11} {p['min']:6.2f} / {p['median']:6.2f} / {p['max']:6.2f}{'':<9} "
                  f"{s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f}{'':<5} {r['seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
