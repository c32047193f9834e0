"""Restoration guidance cost: time per sampling step (unguided vs latent vs rgb space) and the peak
memory of the rgb-space decoder back-propagation (full / checkpoint / tiled) at 512^2 and 1024^2.

    .venv/bin/python -m scripts.benchmark_guidance memory            # every memory case, one process each
    .venv/bin/python -m scripts.benchmark_guidance memory --size 512 --mode checkpoint   # one case
    .venv/bin/python -m scripts.benchmark_guidance steps --size 512   # time per step, tiny UNet

memory: a fresh process per case loads only the SD 2.x VAE (real architecture, random weights from
devkit/model_factory.py) as a ComfyUI VAE and runs one rgb-space guidance gradient (decode with
gradients + backward) through diffbir_modules/guidance/. Peak = the process's peak resident memory
(VmHWM, reset just before the call) minus its resident memory before the call: on the CPU that is
every tensor of the computation (fp32). "decode" is a plain VAE decode without gradients, for scale.

steps: the in-process ComfyUI runtime samples the random SD 2.x checkpoint (--variant; KSampler, euler,
cfg 4) at the given size, unguided and with guidance in latent and rgb space (w_mse); time per step
is the run's time over its steps, the guidance overhead is the difference to unguided.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MEMORY_CASES = [(512, "decode"), (512, "full"), (512, "checkpoint"), (512, "tiled"),
                (1024, "decode"), (1024, "checkpoint"), (1024, "tiled")]


# rough upper bounds (GiB, fp32 CPU) used to wait for free memory before starting a case
ESTIMATED_GIB = {(512, "decode"): 1.5, (512, "tiled"): 2, (512, "checkpoint"): 4, (512, "full"): 10,
                 (1024, "decode"): 5, (1024, "tiled"): 3, (1024, "checkpoint"): 12, (1024, "full"): 40}


def _meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/meminfo")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _vae():
    from devkit import comfy_runtime

    comfy_runtime.prepare_imports(["--cpu"])
    import comfy.sd
    import torch
    from safetensors import safe_open

    from devkit import model_factory

    path = model_factory.sd2_checkpoint("tiny")
    sd = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            if key.startswith("first_stage_model."):
                sd[key[len("first_stage_model."):]] = f.get_tensor(key).float()
    with torch.inference_mode():
        vae = comfy.sd.VAE(sd=sd)
    del sd
    return vae


def memory_case(size: int, mode: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    vae = _vae()
    import comfy.latent_formats

    from diffbir_modules import guidance as gm

    class Model:  # what the guidance reads of a ComfyUI BaseModel
        latent_format = comfy.latent_formats.SD15()

    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g)
    x0 = torch.randn(1, 4, size // 8, size // 8, generator=g)
    if mode != "decode":
        config = gm.GuidanceConfig(scale=0.5, loss="w_mse", space="rgb", rgb_memory=mode)
        rg = gm.RestorationGuidance(vae, image, config)
        rg.target(size, size)  # target and weight map outside the measured region
    with torch.inference_mode():
        vae.first_stage_model.decode(x0[..., :8, :8])  # warm-up (allocator, kernels)
        before = _status("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        if mode == "decode":
            out = vae.first_stage_model.decode(x0 / 0.18215)
        else:
            out, _ = rg.delta(x0, Model(), None, {}, rg._new_run())
        seconds = time.perf_counter() - start
        peak = _status("VmHWM")
    assert torch.isfinite(out).all()
    return {"size": size, "mode": mode, "peak_extra_bytes": peak - before, "seconds": seconds, "threads": threads}


def run_memory(args):
    cases = [(args.size, args.mode)] if args.size and args.mode else MEMORY_CASES
    if args.cases:
        cases = [(int(c.split(":")[0]), c.split(":")[1]) for c in args.cases]
    if len(cases) == 1 and args.inner:
        print(json.dumps(memory_case(cases[0][0], cases[0][1], args.threads)))
        return
    results = []
    for size, mode in cases:
        need = ESTIMATED_GIB.get((size, mode), 4.0) * 2**30
        waited = 0
        while _meminfo("MemAvailable") < need and waited < args.wait:
            time.sleep(30)  # a shared machine: wait for the memory rather than push others into OOM
            waited += 30
        if _meminfo("MemAvailable") < need:
            print(f"{size} {mode}: skipped, needs ~{need / 2**30:.0f} GiB free", flush=True)
            continue
        cmd = [sys.executable, "-m", "scripts.benchmark_guidance", "memory", "--size", str(size), "--mode", mode,
               "--threads", str(args.threads), "--inner"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode or not line:
            print(f"{size} {mode}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        result = json.loads(line[-1])
        results.append(result)
        print(f"{size}^2 {mode}: peak +{result['peak_extra_bytes'] / 2**30:.2f} GiB, {result['seconds']:.1f} s",
              flush=True)
    print()
    print("| image | rgb_memory | peak extra memory (fp32, CPU) | time (s, CPU) |")
    print("|---|---|---|---|")
    for r in results:
        label = "plain decode, no gradients" if r["mode"] == "decode" else r["mode"]
        print(f"| {r['size']}^2 | {label} | {r['peak_extra_bytes'] / 2**30:.2f} GiB | {r['seconds']:.1f} |")


def run_steps(args):
    import torch

    torch.set_num_threads(args.threads)
    from devkit import comfy_runtime, model_factory
    from devkit.model_factory import MODELS_DIR, install_model

    comfy_runtime.start(Path(tempfile.mkdtemp(prefix="diffbir-bench-")) / "in-process", MODELS_DIR)
    ckpt = install_model("checkpoints", model_factory.sd2_checkpoint(args.variant))

    def node(name, *a, **k):
        cls = comfy_runtime.node_class(name)
        with torch.inference_mode():
            if hasattr(cls, "define_schema"):
                return cls.execute(*a, **k).result
            return getattr(cls(), cls.FUNCTION)(*a, **k)

    model, clip, vae = node("CheckpointLoaderSimple", ckpt)
    pos = node("CLIPTextEncode", clip, "")[0]
    neg = node("CLIPTextEncode", clip, "blurry")[0]
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, args.size, args.size, 3, generator=g)
    latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
    rows = []
    cases = [("unguided", None), ("latent", "latent"), ("rgb (checkpoint)", "rgb")]
    for label, space in cases:
        m = model
        if space:
            m = node("DiffBIRRestorationGuidance", model, vae, image, scale=0.1, space=space)[0]
        node("KSampler", m, 1, 1, 4.0, "euler", "normal", pos, neg, latent, 1.0)  # warm-up, loads models
        start = time.perf_counter()
        node("KSampler", m, 1, args.steps, 4.0, "euler", "normal", pos, neg, latent, 1.0)
        per_step = (time.perf_counter() - start) / args.steps
        rows.append((label, per_step))
        print(f"{label}: {per_step:.2f} s/step", flush=True)
    base = rows[0][1]
    print()
    print(f"| {args.size}^2, {args.variant} UNet, euler, cfg 4, {args.threads} CPU threads | s/step "
          "| guidance overhead |")
    print("|---|---|---|")
    for label, per_step in rows:
        overhead = "" if label == "unguided" else f"+{per_step - base:.2f} s ({per_step / base:.2f}x)"
        print(f"| {label} | {per_step:.2f} | {overhead} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["memory", "steps"])
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--mode", choices=["decode", "full", "checkpoint", "tiled"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variant", default="tiny", choices=["tiny", "small", "full"], help=(
        "steps: the SD 2.x UNet size (the VAE is full size in all of them, so the guidance's own cost is the same)"))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    parser.add_argument("--wait", type=int, default=1800, help="seconds to wait for free memory per case")
    parser.add_argument("--cases", nargs="+", help="size:mode pairs, e.g. 512:tiled 1024:checkpoint")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what == "memory":
        run_memory(args)
    else:
        args.size = args.size or 512
        run_steps(args)


if __name__ == "__main__":
    main()
