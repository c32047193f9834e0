"""The exact tiled VAE against ComfyUI's own (untiled) VAE at the same size: time, peak resident
memory and the largest difference, encode and decode, SD 2.x KL autoencoder in its published shapes
(random weights, devkit/model_factory.py).

    .venv/bin/python -m scripts.benchmark_vae                        # 512 px, 256 px tiles, 3 rounds
    .venv/bin/python -m scripts.benchmark_vae --sizes 512 1024 --tile 512 --json vae.json
    .venv/bin/python -m scripts.benchmark_vae --sizes 1024 --tile 0      # the automatic choice
    .venv/bin/python -m scripts.benchmark_vae --sizes 2048 --tile 512 --rounds 1 --exact-only
    .venv/bin/python -m scripts.benchmark_vae --sizes 1024 --tile 512 --exact-only --replay full
    .venv/bin/python -m scripts.benchmark_vae --sizes 1024 --tile 512 --exact-only --count-tensors

``--tile 0`` measures the automatic choice (DiffBIR VAE Encode / Decode with tile_size 0); a tile
forces the tiled path a large image takes. The two sides alternate within each round, so a busy machine
slows both alike; the reported time is the median of the rounds. Everything runs in a worker thread, as
ComfyUI's server runs prompts (``--main-thread``: in the main thread; on Linux glibc's allocator treats
the two differently, see ``scripts.in_worker_thread``). ``--exact-only`` skips ComfyUI's side (at 2048 px its
untiled CPU pass takes minutes and most of the memory): time and peak of the exact tiles alone.
``--replay``: which levels of the exact tiles replay instead of parking their state (docs/tiling.md):
``auto`` as the nodes choose (from free memory), ``none``, ``full`` (the full-resolution level, what
``auto`` picks first when memory is short) or ``all``; the result is the same bit for bit, time and
memory differ. ``--full-resolution-tile``: the largest tile of the full-resolution segments on a CPU
(default as the nodes choose, 256 px; ``--full-resolution-tile 512`` with ``--tile 512`` measures the
same tiles everywhere); the result is the same bit for bit. Peaks are above the start of each call, so
compare two choices in two runs.
``--count-tensors``: after the timed rounds, one more call of each side and stage under an exact count
of the tensor bytes alive at once (devkit/live_memory.py; the weights and the input not counted): what
the code holds, without the allocator's retention that blurs the resident peak. Counting slows the call,
so it is not timed; ``--rounds 0 --count-tensors`` counts without timing (with a ``--replay`` other than
``auto``, which chooses from free memory, the counts do not depend on what else the machine runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from diffbir_modules import cpu_features  # plain Python: no ComfyUI import
from scripts import in_worker_thread, recorded_command
from scripts.benchmark_tiling import RssWatch

# --replay: the exact tiled VAE's ``replay`` argument ("full": the full-resolution level, auto's first pick)
REPLAY = {"auto": None, "none": False, "full": {0}, "all": True}


class _Recorder:
    """Wall time, CPU time (all threads; a busy machine inflates it less than the wall time) and peak
    resident memory above the start of each call, per key."""

    def __init__(self, keys):
        self.watch = RssWatch()
        self.seconds = {key: [] for key in keys}
        self.cpu_seconds = {key: [] for key in keys}
        self.peaks = dict.fromkeys(keys, 0)

    def __call__(self, key, run):
        self.watch.reset()
        started, cpu_started = time.perf_counter(), time.process_time()
        out = run()
        self.seconds[key].append(time.perf_counter() - started)
        self.cpu_seconds[key].append(time.process_time() - cpu_started)
        self.peaks[key] = max(self.peaks[key], self.watch.peak - self.watch.start)
        return out


def _count(call, existing) -> tuple:
    """``call()``'s result and the peak bytes of the tensors it held at once (``existing`` not counted)."""
    from devkit.live_memory import LiveTensorBytes

    counter = LiveTensorBytes(existing=existing)
    with counter:
        out = call()
    return out, counter.peak


def measure(sizes: list[int], tile: int, rounds: int, threads: int, exact_only: bool = False,
            replay: str = "auto", count_tensors: bool = False, full_resolution_tile: int | None = None) -> dict:
    import torch

    from devkit import comfy_runtime, model_factory

    comfy_runtime.start(Path(tempfile.mkdtemp(prefix="diffbir-bench-vae-")), model_factory.MODELS_DIR)
    import comfy.sd
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    tiled_vae = comfy_runtime.pack_module("diffbir_modules.tiled_vae")
    planning = comfy_runtime.pack_module("diffbir_modules.tiled_vae.planning")
    if full_resolution_tile is not None:
        planning.CPU_FULL_RESOLUTION_TILE_MAX = full_resolution_tile
    prefix = "first_stage_model."
    weights = load_file(str(model_factory.sd2_checkpoint("tiny", dtype=torch.float32)))
    vae = comfy.sd.VAE(sd={k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    del weights
    report = {"tile": tile, "rounds": rounds, "threads": threads, "device": f"cpu ({cpu_features.describe()})",
              "torch": torch.__version__, "load_average_at_start": os.getloadavg(),
              "exact_only": exact_only, "replay": replay, "count_tensors": count_tensors,
              "cpu_full_resolution_tile_max": planning.CPU_FULL_RESOLUTION_TILE_MAX, "sizes": {}}
    weights_and_buffers = [*vae.first_stage_model.parameters(), *vae.first_stage_model.buffers()]
    for size in sizes:
        pixels = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(size))
        sides = ("exact",) if exact_only else ("comfyui", "exact")
        options = {"progress": False, "replay": REPLAY[replay]}
        record = _Recorder([f"{side}_{stage}" for stage in ("encode", "decode") for side in sides])
        with torch.inference_mode():
            for _ in range(rounds):
                exact_latent = record("exact_encode", partial(tiled_vae.encode, vae, pixels, tile, **options))
                latent = exact_latent if exact_only else record("comfyui_encode", partial(vae.encode, pixels))
                exact_image = record("exact_decode", partial(tiled_vae.decode, vae, latent, tile, **options))
                if not exact_only:
                    encode_error = float((exact_latent - latent).abs().max() / latent.abs().max())
                    image = record("comfyui_decode", partial(vae.decode, latent))
                    decode_error = float((exact_image - image).abs().max())
                del exact_image
            live = {}
            if count_tensors:
                existing = [*weights_and_buffers, pixels]
                latent, live["exact_encode"] = _count(partial(tiled_vae.encode, vae, pixels, tile, **options), existing)
                if not exact_only:
                    latent, live["comfyui_encode"] = _count(partial(vae.encode, pixels), existing)
                existing.append(latent)
                _, live["exact_decode"] = _count(partial(tiled_vae.decode, vae, latent, tile, **options), existing)
                if not exact_only:
                    _, live["comfyui_decode"] = _count(partial(vae.decode, latent), existing)
        row = {}
        if rounds:
            runs, peaks = record.seconds, record.peaks
            medians = {key: statistics.median(values) for key, values in runs.items()}
            cpu = {key: statistics.median(values) for key, values in record.cpu_seconds.items()}
            row.update({
                "seconds": {key: round(value, 2) for key, value in medians.items()},
                "all_seconds": {key: [round(v, 2) for v in values] for key, values in runs.items()},
                "cpu_seconds": {key: round(value, 2) for key, value in cpu.items()},
                "peak_above_start_gib": {key: round(value / 2**30, 3) for key, value in peaks.items()},
            })
        if count_tensors:
            row["live_tensor_peak_bytes"] = live
        if rounds and not exact_only:
            row.update({
                "encode_cpu_ratio": round(cpu["exact_encode"] / cpu["comfyui_encode"], 2),
                "decode_cpu_ratio": round(cpu["exact_decode"] / cpu["comfyui_decode"], 2),
                "encode_ratio": round(medians["exact_encode"] / medians["comfyui_encode"], 2),
                "decode_ratio": round(medians["exact_decode"] / medians["comfyui_decode"], 2),
                "encode_max_relative_difference": encode_error,
                "decode_max_difference": decode_error,
            })
        report["sizes"][str(size)] = row
    report["load_average_at_end"] = os.getloadavg()
    return report


def _summary(row: dict, exact_only: bool) -> list[str]:
    """The printed lines of one size: times and peaks where rounds ran, tensor counts where counted."""
    s, p, live = row.get("seconds"), row.get("peak_above_start_gib"), row.get("live_tensor_peak_bytes", {})
    sides = ("exact",) if exact_only else ("exact", "comfyui")
    lines = []
    for stage in ("encode", "decode"):
        parts = []
        if s and exact_only:
            parts.append(f"exact tiled {s['exact_' + stage]:.2f} s, peak +{p['exact_' + stage]:.2f} GiB")
        elif s:
            parts.append(f"exact tiled {s['exact_' + stage]:.2f} s vs ComfyUI {s['comfyui_' + stage]:.2f} s "
                         f"({row[stage + '_ratio']:.2f}x; CPU time {row[stage + '_cpu_ratio']:.2f}x), peak "
                         f"+{p['exact_' + stage]:.2f} vs +{p['comfyui_' + stage]:.2f} GiB")
        if live:
            names = {"exact": "exact tiled", "comfyui": "ComfyUI"}
            parts.append("tensors alive at once: " + ", ".join(
                f"{names[side]} {live[f'{side}_{stage}'] / 2**30:.3f} GiB" for side in sides))
        lines.append(f"  {stage}: " + "; ".join(parts))
    if s and not exact_only:
        lines.append(f"  largest difference: latent {row['encode_max_relative_difference']:.1e} relative, "
                     f"image {row['decode_max_difference']:.1e}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--tile", type=int, default=256,
                        help="exact tiled VAE tile, pixels (multiple of 64; 0 = the automatic choice)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds (0: no timing, only --count-tensors)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--exact-only", action="store_true", help="time the exact tiles only, not ComfyUI's VAE")
    parser.add_argument("--replay", choices=list(REPLAY), default="auto",
                        help="exact tiles: levels that replay instead of parking (auto: as the nodes choose)")
    parser.add_argument("--count-tensors", action="store_true",
                        help="also count the tensor bytes alive at once in one more (untimed) call of each side")
    parser.add_argument("--full-resolution-tile", type=int, default=None, metavar="PX",
                        help="exact tiles on a CPU: the largest tile of the full-resolution segments (default: as "
                             "the nodes choose; a value of --tile or more: the same tiles there as elsewhere)")
    parser.add_argument("--main-thread", action="store_true",
                        help="run in the main thread instead of a worker thread as ComfyUI's server runs prompts")
    args = parser.parse_args(argv)
    if args.rounds < 0 or (args.rounds == 0 and not args.count_tensors):
        parser.error("--rounds must be at least 1, or 0 with --count-tensors")
    report = in_worker_thread(partial(measure, args.sizes, args.tile, args.rounds, args.threads, args.exact_only,
                                      args.replay, args.count_tensors, args.full_resolution_tile),
                              args.main_thread)
    report["thread"] = "main" if args.main_thread else "worker, as ComfyUI's server runs prompts"
    # settings from the environment that change the measured memory or time (e.g. glibc's malloc tunables)
    report["environment"] = {name: os.environ[name] for name in ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX",
                                                                 "OMP_NUM_THREADS") if name in os.environ}
    report["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report["command"] = recorded_command("scripts.benchmark_vae", argv if argv is not None else sys.argv[1:], "--json")
    for size, row in report["sizes"].items():
        print(f"{size} px, {f'{args.tile} px tiles' if args.tile else 'automatic tile'}:")
        print("\n".join(_summary(row, args.exact_only)))
    start, end = (" ".join(f"{v:.2f}" for v in report[key]) for key in ("load_average_at_start", "load_average_at_end"))
    print(f"load average (1, 5, 15 min) at start {start}, at end {end}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
