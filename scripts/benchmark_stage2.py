"""Stage-2 benchmark: time per sampling step and peak memory of SD 2.1 + IRControlNet against the plain
SD 2.1 UNet, through the real ComfyUI runtime (issue 4).

Usage (from the repository root, with the environment scripts/setup.sh made):

    .venv/bin/python -m scripts.benchmark_stage2                      # 512 and 1024, cfg 4 and 1, 2 steps
    .venv/bin/python -m scripts.benchmark_stage2 --sizes 512 --steps 3 --cfgs 4
    .venv/bin/python -m scripts.benchmark_stage2 --device cpu --comfy-args "--use-pytorch-cross-attention"

Models: full-size SD 2.1 and IRControlNet layouts with deterministic random weights, built once by
devkit/model_factory.py and cached (.cache/test-models: a 2.6 GB fp16 SD 2.x checkpoint and a 1.45 GB
fp32 IRControlNet safetensors, the size of the published v2.pth). Random weights run the same
operations as the real ones, so the timings and memory hold for the published files.

Each case (output size x with/without IRControlNet) runs in a fresh subprocess, so its memory figures
are its own. The subprocess starts ComfyUI in process (devkit/comfy_runtime.py; on a machine with CUDA
ComfyUI's model management picks the GPU, else --cpu) and executes one API graph with ComfyUI's own
executor: CheckpointLoaderSimple, two CLIPTextEncode, DiffBIRIRControlNetLoader +
DiffBIRApplyIRControlNet (stage-1 image: scikit-image's astronaut photo resized to the size) or
EmptyLatentImage for the plain case, one KSampler (euler, normal schedule) per cfg, VAEDecode.

What is measured (hooks on ComfyUI's classes, installed only for the run):
- per step: the wall time between the sampler loop's start and each step callback (euler: one model
  evaluation per step, cond and uncond batched together at cfg > 1, uncond skipped at cfg 1). The
  first step carries one-off warm-up costs; "s/step" is the mean of the later steps (of step 1 when
  only one step is run). Inside the steps: time spent in the IRControlNet (get_control) and in the UNet
  (apply_model). On CUDA the clock is read after torch.cuda.synchronize() and the split is not taken.
- VAE encode (the condition) and VAE decode, each on its own.
- memory per phase: peak resident set (Linux: VmHWM, reset at each phase boundary through
  /proc/self/clear_refs; elsewhere a 10 ms psutil sampler), the resident set when sampling starts (all
  weights loaded: the loading baseline) and the peak while loading/encoding the text; on CUDA also
  torch.cuda.memory_allocated at the start and torch.cuda.max_memory_allocated of each phase.
- CPU seconds of the process per phase: on a shared machine cpu/wall below the thread count shows
  that the run was slowed by other load; the load average is recorded at the start and end of a case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from diffbir_modules import cpu_features  # plain Python: no ComfyUI import
from scripts import recorded_command

REPO = Path(__file__).resolve().parent.parent

DEFAULT_SIZES = (512, 1024)
DEFAULT_CFGS = (4.0, 1.0)
SEED = 231
POSITIVE = "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo-realistic"
NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"


# -- memory and time meters --------------------------------------------------------------------------
def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemoryMeter:
    """Peak resident set between resets (and CUDA allocator peaks when the device is CUDA)."""

    def __init__(self, cuda: bool):
        import torch

        self.torch = torch
        self.cuda = cuda
        self.linux = self._try_reset_hwm()
        self._sampled_peak = 0
        self._stop = None
        if not self.linux:
            import psutil

            self._process = psutil.Process()
            self._stop = threading.Event()
            threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def _try_reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _proc_status("VmHWM") is not None
        except OSError:
            return False

    def _sample(self):
        while not self._stop.is_set():
            self._sampled_peak = max(self._sampled_peak, self._process.memory_info().rss)
            time.sleep(0.01)

    def rss(self) -> int:
        if self.linux:
            return _proc_status("VmRSS")
        return self._process.memory_info().rss

    def reset(self):
        if self.linux:
            self._try_reset_hwm()
        else:
            self._sampled_peak = self.rss()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict:
        rss = _proc_status("VmHWM") if self.linux else max(self._sampled_peak, self.rss())
        out = {"peak_rss": rss}
        if self.cuda:
            out["cuda_peak_allocated"] = self.torch.cuda.max_memory_allocated()
            out["cuda_peak_reserved"] = self.torch.cuda.max_memory_reserved()
        return out

    def close(self):
        if self._stop is not None:
            self._stop.set()


class Probe:
    """Patches ComfyUI's sampler, VAE, model and the pack's IRControlNet control for one run; records
    phases (VAE encode, each sampling run, VAE decode) and the gaps between them. Use as a context
    manager: the original methods are restored on exit."""

    def __init__(self, runtime, cuda: bool):
        import comfy.model_base
        import comfy.samplers
        import comfy.sd
        import torch

        self.torch = torch
        self.cuda = cuda
        self.meter = MemoryMeter(cuda)
        self.phases: list[dict] = []
        self.gaps: list[dict] = []
        self._depth = 0
        self._current: dict | None = None
        irc = runtime.pack_module("diffbir_modules.ircontrolnet").IRControlNetControl
        self._targets = [(comfy.samplers.KSAMPLER, "sample", self._wrap_sample),
                         (comfy.sd.VAE, "encode", lambda f: self._wrap_phase(f, "vae_encode")),
                         (comfy.sd.VAE, "decode", lambda f: self._wrap_phase(f, "vae_decode")),
                         (irc, "get_control", lambda f: self._wrap_inner(f, "control_s")),
                         (comfy.model_base.BaseModel, "apply_model", lambda f: self._wrap_inner(f, "unet_s"))]
        self._saved = []

    def __enter__(self):
        for owner, name, wrap in self._targets:
            original = owner.__dict__[name]
            self._saved.append((owner, name, original))
            setattr(owner, name, wrap(original))
        self.meter.reset()
        self._gap_start = self._stamp()
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()
        self._close_gap("after")
        self.meter.close()

    # phases ------------------------------------------------------------------------------------
    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def _stamp(self) -> dict:
        out = {"t": time.perf_counter(), "cpu": time.process_time(), "rss": self.meter.rss()}
        if self.cuda:
            out["cuda_allocated"] = self.torch.cuda.memory_allocated()
        return out

    def _close_gap(self, before: str):
        self._sync()
        end = self._stamp()
        start = self._gap_start
        self.gaps.append({"before": before, "wall_s": end["t"] - start["t"], "cpu_s": end["cpu"] - start["cpu"],
                          **self.meter.peak()})

    def _begin(self, name: str, **extra) -> dict:
        self._close_gap(name)
        self.meter.reset()
        start = self._stamp()
        phase = {"name": name, "_start": start, "rss_start": start["rss"], **extra}
        if self.cuda:
            phase["cuda_allocated_start"] = start["cuda_allocated"]
        self._current = phase
        return phase

    def _end(self, phase: dict):
        self._sync()
        end = self._stamp()
        start = phase.pop("_start")
        phase.update(wall_s=end["t"] - start["t"], cpu_s=end["cpu"] - start["cpu"], **self.meter.peak())
        self.phases.append(phase)
        self._current = None
        self.meter.reset()
        self._gap_start = self._stamp()

    def _wrap_phase(self, original, name):
        probe = self

        def wrapper(vae, *args, **kwargs):
            if probe._depth:
                return original(vae, *args, **kwargs)
            probe._depth += 1
            pixels_or_latent = args[0] if args else None
            phase = probe._begin(name, shape=list(getattr(pixels_or_latent, "shape", [])))
            try:
                return original(vae, *args, **kwargs)
            finally:
                probe._depth -= 1
                probe._end(phase)

        return wrapper

    def _wrap_sample(self, original):
        probe = self

        def sample(sampler, model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs):
            if probe._depth:
                return original(sampler, model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs)
            probe._depth += 1
            phase = probe._begin("sampling", cfg=float(getattr(model_wrap, "cfg", float("nan"))),
                                 steps=len(sigmas) - 1, latent_shape=list(noise.shape), step_s=[], step_cpu_s=[],
                                 control_s=0.0, unet_s=0.0, control_cpu_s=0.0, unet_cpu_s=0.0, model_calls=0)
            last = [phase["_start"]["t"], phase["_start"]["cpu"]]

            def timed_callback(step, x0, x, total_steps):
                probe._sync()
                now, cpu = time.perf_counter(), time.process_time()
                phase["step_s"].append(now - last[0])
                phase["step_cpu_s"].append(cpu - last[1])
                if callback is not None:
                    callback(step, x0, x, total_steps)
                # the caller's callback (progress bar) is not part of a step
                last[:] = [time.perf_counter(), time.process_time()]

            try:
                samples = original(sampler, model_wrap, sigmas, extra_args, timed_callback, noise, *args, **kwargs)
                phase["finite"] = bool(probe.torch.isfinite(samples).all())
                return samples
            finally:
                probe._depth -= 1
                probe._end(phase)

        return sample

    def _wrap_inner(self, original, key):
        probe = self

        def wrapper(obj, *args, **kwargs):
            phase = probe._current
            if phase is None or phase.get("name") != "sampling" or probe.cuda:
                return original(obj, *args, **kwargs)
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return original(obj, *args, **kwargs)
            finally:
                phase[key] += time.perf_counter() - start
                phase[key.replace("_s", "_cpu_s")] += time.process_time() - cpu
                if key == "unet_s":
                    phase["model_calls"] += 1

        return wrapper


# -- one case ----------------------------------------------------------------------------------------
def stage1_image(size: int, directory: Path) -> str:
    """Writes the stage-1 stand-in (scikit-image's astronaut photo, 512 px, resized to ``size``) into
    ComfyUI's input folder; returns its name for LoadImage."""
    from PIL import Image

    name = f"benchmark_stage2_{size}.png"
    path = Path(directory) / name
    if not path.exists():
        try:
            import skimage.data

            photo = Image.fromarray(skimage.data.astronaut())
        except ImportError:  # any photo-like content does: the cost does not depend on it
            import numpy as np

            y, x = np.mgrid[0:512, 0:512]
            photo = Image.fromarray(np.stack([x / 2, y / 2, (x + y) / 4], -1).astype("uint8"))
        photo.convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(path)
    return name


def case_graph(ckpt_name: str, irc_name: str | None, image_name: str | None, size: int, steps: int,
               cfgs) -> tuple[dict, list[str]]:
    """API graph of one case: IRControlNet when ``irc_name`` is given, else the plain SD 2.1 txt2img
    at the same latent size. One KSampler per cfg (all from the same latent and seed); the first is
    decoded."""
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
    }
    if irc_name is not None:
        graph.update({
            "image": {"class_type": "LoadImage", "inputs": {"image": image_name}},
            "irc": {"class_type": "DiffBIRIRControlNetLoader", "inputs": {"ircontrolnet_name": irc_name,
                                                                          "version": "v2"}},
            "apply": {"class_type": "DiffBIRApplyIRControlNet", "inputs": {
                "positive": ["pos", 0], "negative": ["neg", 0], "ircontrolnet": ["irc", 0], "vae": ["ckpt", 2],
                "image": ["image", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                "start_point": "noise", "padding": "64"}},
        })
        positive, negative, latent = ["apply", 0], ["apply", 1], ["apply", 2]
    else:
        graph["empty"] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size,
                                                                       "batch_size": 1}}
        positive, negative, latent = ["pos", 0], ["neg", 0], ["empty", 0]
    outputs = []
    for i, cfg in enumerate(cfgs):
        graph[f"sample{i}"] = {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": positive, "negative": negative, "latent_image": latent,
            "seed": SEED, "steps": steps, "cfg": float(cfg), "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}}
        outputs.append(f"sample{i}")
    graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample0", 0], "vae": ["ckpt", 2]}}
    return graph, ["decode", *outputs[1:]]


def run_case(runtime, ckpt_name: str, irc_name: str | None, size: int, steps: int = 2, cfgs=DEFAULT_CFGS) -> dict:
    """Runs one case in this process's (started) ComfyUI runtime; returns the measurements."""
    import comfy.model_management as mm
    import folder_paths
    import torch

    device = mm.get_torch_device()
    cuda = device.type == "cuda"
    image_name = stage1_image(size, Path(folder_paths.get_input_directory())) if irc_name else None
    graph, outputs = case_graph(ckpt_name, irc_name, image_name, size, steps, cfgs)
    result = {"size": size, "control": irc_name is not None, "steps": steps, "cfgs": [float(c) for c in cfgs],
              "device": mm.get_torch_device_name(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "loadavg_start": list(os.getloadavg()),
              "unet_dtype": str(mm.unet_dtype()), "attention": _attention_name()}
    start = time.perf_counter()
    with Probe(runtime, cuda) as probe:
        result["rss_before_graph"] = probe.meter.rss()
        out = runtime.run_prompt(graph, outputs=outputs)
    result["graph_wall_s"] = time.perf_counter() - start
    decoded = out["decode"][0]
    result["decoded_shape"] = list(decoded.shape)
    result["decoded_finite"] = bool(torch.isfinite(decoded).all())
    result["phases"] = probe.phases
    result["gaps"] = probe.gaps
    result["loadavg_end"] = list(os.getloadavg())
    # the peak of the whole graph; getrusage's ru_maxrss cannot be used where the probe reset the high-water
    # mark (Linux derives both from the same counter)
    result["peak_rss_graph"] = max(p["peak_rss"] for p in probe.phases + probe.gaps)
    if not probe.meter.linux:
        result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                                     else 1024)
    return result


def _attention_name() -> str:
    try:
        import comfy.ldm.modules.attention as attention

        return attention.optimized_attention.__name__
    except Exception:  # noqa: BLE001 - informative only
        return "unknown"


# -- subprocess side ---------------------------------------------------------------------------------
def child_main(spec: dict) -> None:
    from devkit import comfy_runtime

    scratch = Path(tempfile.mkdtemp(prefix="diffbir-bench-"))
    models = scratch / "models"
    for folder, path in (("checkpoints", spec["ckpt"]), ("diffbir", spec.get("irc"))):
        if path:
            (models / folder).mkdir(parents=True, exist_ok=True)
            (models / folder / Path(path).name).symlink_to(Path(path).resolve())
    comfy_runtime.start(scratch / "base", models, cpu=spec["device"] == "cpu", extra_args=spec["comfy_args"])
    result = run_case(comfy_runtime, Path(spec["ckpt"]).name, Path(spec["irc"]).name if spec.get("irc") else None,
                      spec["size"], spec["steps"], spec["cfgs"])
    result["comfy_args"] = spec["comfy_args"]
    Path(spec["out"]).write_text(json.dumps(result, indent=1))


# -- parent side -------------------------------------------------------------------------------------
def build_models(variant: str) -> tuple[Path, Path]:
    from devkit import model_factory

    ckpt = model_factory.sd2_checkpoint(variant)  # fp16 storage, as the published checkpoints
    irc = model_factory.ircontrolnet_file(variant, fmt="safetensors")  # fp32, as the published files
    return ckpt, irc


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu_model": cpu_features.model_name(), "cpu": cpu_features.describe()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total"] = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    return info


def _cpu(machine: dict) -> str:
    """The CPU of a report's ``machine``; reports before ``cpu`` was recorded have only its model."""
    return machine.get("cpu") or f"{machine['cpu_model']}, {machine['cpus']} CPUs"


def watch(child: subprocess.Popen, timeout: float | None, min_available_gib: float) -> str | None:
    """Waits for a case subprocess; stops it (and says why) past ``timeout`` seconds or when the machine's
    available memory falls below ``min_available_gib`` (a shared machine: better a missing figure than the
    kernel's OOM killer picking another user's process)."""
    import psutil

    start = time.monotonic()
    low = min_available_gib * GB
    while child.poll() is None:
        reason = None
        if timeout and time.monotonic() - start > timeout:
            reason = f"stopped after {timeout:g} s (--case-timeout)"
        elif low and psutil.virtual_memory().available < low:
            reason = (f"stopped: the machine's available memory fell below {min_available_gib:g} GiB "
                      "(--min-available-gib)")
        if reason:
            child.kill()
            child.wait()
            return reason
        time.sleep(0.5)
    return None if child.returncode == 0 else f"failed with exit code {child.returncode}"


def run_all(args) -> dict:
    ckpt, irc = build_models(args.variant)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(),
              "command": recorded_command("scripts.benchmark_stage2", sys.argv[1:], "--out-dir"),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": list(os.getloadavg()),
              "models": {"checkpoint": ckpt.name, "ircontrolnet": irc.name}, "cases": []}
    for size in args.sizes:
        for control in (False, True) if not args.control_only else (True,):
            label = f"{size}px {'IRControlNet' if control else 'plain'}"
            spec = {"ckpt": str(ckpt), "irc": str(irc) if control else None, "size": size, "steps": args.steps,
                    "cfgs": args.cfgs, "device": device, "comfy_args": shlex.split(args.comfy_args),
                    "out": str(out_dir / f"case-{size}-{'control' if control else 'plain'}.json")}
            print(f"[benchmark] {label}: running (load average {os.getloadavg()[0]:.1f})", flush=True)
            log = out_dir / f"case-{size}-{'control' if control else 'plain'}.log"
            with open(log, "w") as log_file:
                command = [sys.executable, "-m", "scripts.benchmark_stage2", "--child", json.dumps(spec)]
                child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
                error = watch(child, args.case_timeout, args.min_available_gib)
            if error:
                print(f"[benchmark] {label}: {error}; see {log}", flush=True)
                report["cases"].append({"size": size, "control": control, "error": error, "log": str(log)})
                continue
            case = json.loads(Path(spec["out"]).read_text())
            report["cases"].append(case)
            print(summary_line(case), flush=True)
    report["loadavg_end"] = list(os.getloadavg())
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return report


# -- reporting ---------------------------------------------------------------------------------------
GB = 1024**3


def sampling_phases(case: dict) -> list[dict]:
    return [p for p in case.get("phases", []) if p["name"] == "sampling"]


def phase(case: dict, name: str) -> dict | None:
    return next((p for p in case.get("phases", []) if p["name"] == name), None)


def per_step(p: dict, key: str = "step_s") -> float:
    """Mean time of the steps after the first (the first when there is only one)."""
    steps = p[key]
    later = steps[1:] or steps
    return sum(later) / len(later)


def summary_line(case: dict) -> str:
    parts = [f"{case['size']}px {'IRControlNet' if case['control'] else 'plain'}:"]
    for p in sampling_phases(case):
        parts.append(f"cfg {p['cfg']:g} {per_step(p):.2f} s/step (steps {', '.join(f'{s:.2f}' for s in p['step_s'])})"
                     f" peak {p['peak_rss'] / GB:.2f} GiB")
    for name in ("vae_encode", "vae_decode"):
        p = phase(case, name)
        if p:
            parts.append(f"{name} {p['wall_s']:.2f} s")
    return " ".join(parts)


def _fmt_mem(p: dict, key: str = "peak_rss") -> str:
    return f"{p[key] / GB:.2f}" if p and p.get(key) is not None else "-"


def _seconds(value) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _pair(plain: dict | None, control: dict | None, fn) -> tuple:
    return tuple(fn(p) if p else None for p in (plain, control))


def _ratio(a, b) -> str:
    return f"{b / a:.2f}" if a and b else "-"


def markdown(report: dict) -> str:
    """The tables of docs/benchmark_stage2.md: time per step and memory, IRControlNet vs plain; per case."""
    cases = [c for c in report["cases"] if "error" not in c]
    cuda = any("cuda_peak_allocated" in p for c in cases for p in c.get("phases", []))
    by_key = {(c["size"], c["control"]): c for c in cases}
    rows = []
    for size in sorted({c["size"] for c in cases}):
        plain, control = by_key.get((size, False)), by_key.get((size, True))
        for cfg in [p["cfg"] for p in sampling_phases(control or plain)]:
            pp = next((p for p in sampling_phases(plain) if p["cfg"] == cfg), None) if plain else None
            cp = next((p for p in sampling_phases(control) if p["cfg"] == cfg), None) if control else None
            rows.append((size, cfg, pp, cp))
    lines = ["| size | cfg | plain s/step (CPU s) | IRControlNet s/step (CPU s) | ratio wall (CPU) "
             "| IRControlNet share of model CPU time |", "|---|---|---|---|---|---|"]
    for size, cfg, pp, cp in rows:
        wall = _pair(pp, cp, per_step)
        cpu = _pair(pp, cp, lambda p: per_step(p, "step_cpu_s"))
        cells = [f"{w:.1f} ({c:.1f})" if w is not None else "-" for w, c in zip(wall, cpu)]
        share = (f"{cp['control_cpu_s'] / (cp['control_cpu_s'] + cp['unet_cpu_s']):.0%}"
                 if cp and cp.get("unet_cpu_s") else "-")
        lines.append(f"| {size}² | {cfg:g} | {cells[0]} | {cells[1]} | {_ratio(*wall)} ({_ratio(*cpu)}) | {share} |")
    lines += ["", "| size | cfg | plain GiB: at start / peak | IRControlNet GiB: at start / peak | ratio of peaks "
              "| activations GiB (peak - start) plain / IRControlNet |" + (" CUDA peak GiB plain / IRControlNet |"
                                                                          if cuda else ""),
              "|---|---|---|---|---|---|" + ("---|" if cuda else "")]
    for size, cfg, pp, cp in rows:
        mem = [f"{_fmt_mem(p, 'rss_start')} / {_fmt_mem(p)}" if p else "-" for p in (pp, cp)]
        act = [f"{(p['peak_rss'] - p['rss_start']) / GB:.2f}" if p else "-" for p in (pp, cp)]
        row = (f"| {size}² | {cfg:g} | {mem[0]} | {mem[1]} | {_ratio(*_pair(pp, cp, lambda p: p['peak_rss']))} "
               f"| {act[0]} / {act[1]} |")
        if cuda:
            row += f" {_fmt_mem(pp, 'cuda_peak_allocated')} / {_fmt_mem(cp, 'cuda_peak_allocated')} |"
        lines.append(row)
    lines += ["", "| case | step times, s (CPU s) | VAE encode s (CPU s), peak GiB | VAE decode s (CPU s), peak GiB "
              "| loading peak GiB | sampling CPU/wall | load avg (1 min) start -> end |",
              "|---|---|---|---|---|---|---|"]
    for c in cases:
        enc, dec = phase(c, "vae_encode"), phase(c, "vae_decode")
        steps = "; ".join(f"cfg {p['cfg']:g}: " + ", ".join(f"{s:.1f} ({u:.1f})" for s, u in
                                                               zip(p["step_s"], p.get("step_cpu_s", p["step_s"])))
                          for p in sampling_phases(c))
        loading = [g["peak_rss"] for g in c["gaps"] if g["before"] in ("vae_encode", "sampling")]
        util = "; ".join(f"{p['cpu_s'] / p['wall_s']:.2f}" for p in sampling_phases(c))
        vae = [f"{p['wall_s']:.1f} ({p['cpu_s']:.1f}), {_fmt_mem(p)}" if p else "-" for p in (enc, dec)]
        name = f"{c['size']}² {'IRControlNet' if c['control'] else 'plain'}"
        lines.append(f"| {name} | {steps} | {vae[0]} | {vae[1]} | {max(loading) / GB:.2f} | {util} "
                     f"| {c['loadavg_start'][0]:.1f} -> {c['loadavg_end'][0]:.1f} |" if loading else
                     f"| {name} | {steps} | {vae[0]} | {vae[1]} | - | {util} | - |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="output sizes (square)")
    parser.add_argument("--cfgs", type=float, nargs="+", default=list(DEFAULT_CFGS),
                        help="cfg values, one KSampler each (cfg 1 skips the uncond evaluation)")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps per run (the first one is warm-up)")
    parser.add_argument("--variant", default="full", choices=("tiny", "small", "full"),
                        help="model size from devkit/model_factory.py (full = SD 2.1 + the published IRControlNet)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when torch sees it (ComfyUI's model management picks the GPU), else --cpu")
    parser.add_argument("--comfy-args", default="", help="more ComfyUI options, e.g. '--fp16-unet'")
    parser.add_argument("--control-only", action="store_true", help="skip the plain-UNet cases")
    parser.add_argument("--case-timeout", type=float, default=None, help="seconds per case subprocess")
    parser.add_argument("--min-available-gib", type=float, default=0.75,
                        help="stop a case when the machine's available memory falls below this (0: never)")
    parser.add_argument("--out-dir", default=str(REPO / ".cache" / "benchmark_stage2"),
                        help="where the per-case JSON and logs go")
    parser.add_argument("--render", nargs="+", metavar="REPORT_JSON",
                        help="print the tables of earlier runs (their report.json files, merged) and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    if args.render:
        reports = [json.loads(Path(p).read_text()) for p in args.render]
        for r in reports:
            print(f"{r['command']}: {_cpu(r['machine'])}, "
                  f"{r['started']} -> {r['finished']}, load average {r['loadavg_start']} -> {r['loadavg_end']}")
        print()
        print(markdown({"cases": [c for r in reports for c in r["cases"]]}))
        return 0
    report = run_all(args)
    path = Path(args.out_dir) / "report.json"
    path.write_text(json.dumps(report, indent=1))
    machine = report["machine"]
    print(f"\n{_cpu(machine)}; load average {report['loadavg_start']} -> "
          f"{report['loadavg_end']}; report: {path}\n")
    print(markdown(report))
    return 0 if all("error" not in c for c in report["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
