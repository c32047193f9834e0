"""Peak memory and time of a tiled DiffBIR restoration at two output sizes, full-size random SD 2.1 +
IRControlNet (devkit/model_factory.py: "full" checkpoint and IRControlNet, random weights).

    .venv/bin/python -m scripts.benchmark_tiling                      # 1024 and 2048, 1 step each
    .venv/bin/python -m scripts.benchmark_tiling --sizes 1024 2048 --steps 2 --json out.json

Each size runs in its own subprocess (a fresh ComfyUI in process), so its peak resident memory
(``ru_maxrss``) is its own. The pipeline is the one a user wires, with every tiling on:
scikit-image's astronaut photo (512 x 512) upscaled bicubic to the output size (stage 1 stand-in: the
cleaner's own tiling is in the stage-1 node) -> DiffBIR Apply IRControlNet (padding 8, exact tiled VAE
encode, tile --vae-tile) -> DiffBIR Tiled Sampling (--tile / --stride, one tile per call) -> KSampler
(euler, cfg 4, --steps) -> DiffBIR VAE Decode (exact tiles, --vae-tile). Reported per size: peak RSS,
seconds per stage, seconds per sampling step, and the peak ratio between the sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffbir_modules import cpu_features  # plain Python: no ComfyUI import

REPO = Path(__file__).resolve().parent.parent


class RssWatch:
    """Resident memory of this process sampled every 20 ms in a thread: per-stage peaks (``ru_maxrss``
    only has the whole run's)."""

    def __init__(self):
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.now()
        threading.Thread(target=self._poll, daemon=True).start()

    def now(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page

    def _poll(self):
        while True:
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def reset(self):
        self.start = self.peak = self.now()


def child(size: int, steps: int, tile: int, stride: int, vae_tile: int, stages: str = "all", device: str = "cpu",
          variant: str = "full", comfy_args: str = "") -> dict:
    import torch

    from devkit import comfy_runtime, model_factory

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    base = Path(tempfile.mkdtemp(prefix="diffbir-bench-"))
    models_dir = model_factory.CACHE.parent / "test-comfy-models"
    models_dir.mkdir(parents=True, exist_ok=True)
    comfy_runtime.start(base / "b", models_dir, cpu=not cuda, extra_args=shlex.split(comfy_args))
    import numpy as np
    from PIL import Image
    from skimage import data

    if not cuda:
        torch.set_num_threads(2)
    ckpt = model_factory.sd2_checkpoint(variant)
    irc_file = model_factory.ircontrolnet_file(variant, fmt="safetensors")
    for folder, path in (("checkpoints", ckpt), ("diffbir", irc_file)):
        target = models_dir / folder / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(path)
    node = comfy_runtime.node_class
    photo = Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC)
    image = torch.from_numpy(np.asarray(photo).astype(np.float32) / 255.0)[None]
    times = {}
    peaks = {}
    rss = RssWatch()
    rss_stages = {}

    def stage_start():
        rss.reset()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        return 0

    def stage_end(name, allocated_at_start):  # CUDA: weights resident at the start, peak during the stage
        rss_stages[name] = {"start_gib": rss.start / 2**30, "peak_gib": rss.peak / 2**30}
        if cuda:
            torch.cuda.synchronize()
            peaks[name] = {"start_gib": allocated_at_start / 2**30,
                           "peak_gib": torch.cuda.max_memory_allocated() / 2**30}

    with torch.inference_mode():
        t = time.perf_counter()
        model, clip, vae = node("CheckpointLoaderSimple")().load_checkpoint(ckpt.name)
        control = node("DiffBIRIRControlNetLoader").execute(irc_file.name, "v2").result[0]
        encode = node("CLIPTextEncode")()
        pos, neg = encode.encode(clip, "a photo")[0], encode.encode(clip, "blurry")[0]
        times["load_and_prompts_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if stages == "all":
            m = stage_start()
            pos, neg, latent = node("DiffBIRApplyIRControlNet").execute(pos, neg, control, vae, image, 1.0, 0.0, 1.0,
                                                                       "noise", "8", vae_tile).result
            times["vae_encode_s"] = time.perf_counter() - t
            stage_end("vae_encode", m)
        else:  # sampling only: the condition of a quarter-size encode, upsampled to the full latent size
            small = image.movedim(-1, 1)
            small = torch.nn.functional.interpolate(small, size=(size // 4, size // 4), mode="bilinear")
            pos, neg, _ = node("DiffBIRApplyIRControlNet").execute(pos, neg, control, vae, small.movedim(1, -1), 1.0,
                                                                  0.0, 1.0, "noise", "8").result
            applied = pos[0][1]["control"]
            condition = torch.nn.functional.interpolate(applied.condition, size=(size // 8, size // 8),
                                                        mode="bilinear")
            applied.set_condition(condition, applied.strength, applied.timestep_percent_range, (size, size), "8")
            latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
        tiled = node("DiffBIRTiledSampling").execute(model, tile, stride, 1, "gaussian").result[0].clone()
        step_ends = []

        def mark_step(args):  # called once per step, after CFG: the step's end
            if cuda:
                torch.cuda.synchronize()
            step_ends.append(time.perf_counter())
            return args["denoised"]

        tiled.set_model_sampler_post_cfg_function(mark_step)
        m = stage_start()
        t = time.perf_counter()
        out = node("KSampler")().sample(tiled, 3, steps, 4.0, "euler", "normal", pos, neg, latent, denoise=1.0)[0]
        times["sampling_s"] = time.perf_counter() - t
        stage_end("sampling", m)
        # the first step also moves the weights to the device; later steps are the steady state
        later = [b - a for a, b in zip(step_ends, step_ends[1:])]
        times["first_step_s"] = step_ends[0] - t if step_ends else None
        times["per_step_s"] = sum(later) / len(later) if later else times["sampling_s"] / steps
        decoded = out["samples"]
        if stages == "all":
            m = stage_start()
            t = time.perf_counter()
            decoded = node("DiffBIRVAEDecodeTiled").execute(vae, out, vae_tile).result[0]
            times["vae_decode_s"] = time.perf_counter() - t
            stage_end("vae_decode", m)
    td = comfy_runtime.pack_module("diffbir_modules.tiled_diffusion")
    gpu = {}
    if cuda:  # the allocator's peaks over the whole run (weights included)
        gpu = {"device_name": torch.cuda.get_device_name(), "comfy_args": comfy_args,
               "peak_cuda_allocated_gib": max([p["peak_gib"] for p in peaks.values()]
                                              + [torch.cuda.max_memory_allocated() / 2**30]),
               "peak_cuda_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "cuda_stages": peaks}
    return {"variant": variant, "device": "cuda" if cuda else "cpu", **gpu, "size": size, "stages": stages,
            "steps": steps, "tile": tile, "stride": stride, "vae_tile": vae_tile,
            "tiles_per_step": td.tile_count(size, size, tile, stride), "output": list(decoded.shape),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_stages": rss_stages, **times}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--vae-tile", type=int, default=512)
    parser.add_argument("--stages", choices=["all", "sampling"], default="all", help=(
        "all: the whole restoration; sampling: the sampling stage alone (condition from a quarter-size encode, "
        "upsampled), to measure tiled sampling without the VAE's time"))
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help=(
        "cuda: ComfyUI's model management on the GPU, peaks from torch.cuda (weights included)"))
    parser.add_argument("--variant", choices=["full", "small", "tiny"], default="full", help=(
        "model size from devkit/model_factory.py (tiny: a quick check that the script runs)"))
    parser.add_argument("--comfy-args", default="", help=(
        "more ComfyUI options, e.g. '--reserve-vram 75' to make an 80 GB card act like a 5 GB one"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.steps, args.tile, args.stride, args.vae_tile, args.stages, args.device,
                       args.variant, args.comfy_args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = []
    for size in args.sizes:
        command = [sys.executable, "-m", "scripts.benchmark_tiling", "--child", str(size), "--steps", str(args.steps),
                   "--tile", str(args.tile), "--stride", str(args.stride), "--vae-tile", str(args.vae_tile), "--stages",
                   args.stages, "--device", args.device, "--variant", args.variant, "--comfy-args", args.comfy_args]
        run = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode or not lines:
            sys.stderr.write(run.stdout[-3000:] + run.stderr[-5000:])
            raise SystemExit(f"the {size} px case failed (exit {run.returncode})")
        result = json.loads(lines[-1][len("RESULT "):])
        results.append(result)
        print(json.dumps(result), flush=True)
    summary = {"cpu": cpu_features.describe(), "cases": results}
    if len(results) >= 2 and "peak_cuda_allocated_gib" in results[0]:
        summary["peak_cuda_ratio"] = results[-1]["peak_cuda_allocated_gib"] / results[0]["peak_cuda_allocated_gib"]
        print(f"peak CUDA allocated {results[0]['size']} px: {results[0]['peak_cuda_allocated_gib']:.2f} GiB, "
              f"{results[-1]['size']} px: {results[-1]['peak_cuda_allocated_gib']:.2f} GiB", flush=True)
    if len(results) >= 2:
        summary["peak_ratio"] = results[-1]["peak_rss_gib"] / results[0]["peak_rss_gib"]
        summary["pixel_ratio"] = (results[-1]["size"] / results[0]["size"]) ** 2
        print(f"peak RSS {results[0]['size']} px: {results[0]['peak_rss_gib']:.2f} GiB, {results[-1]['size']} px: "
              f"{results[-1]['peak_rss_gib']:.2f} GiB, ratio {summary['peak_ratio']:.2f} for "
              f"{summary['pixel_ratio']:.0f}x the pixels")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
