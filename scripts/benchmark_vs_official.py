"""Side-by-side benchmark: the official DiffBIR code and this pack restore the same image with the same
random full-size weights on the same machine, one after the other, and the report gives per-stage
time and peak memory for both and their ratios (pack / official: below 1 is faster or smaller).

    .venv/bin/python -m scripts.benchmark_vs_official                      # 512x512 v2.1 x4, 10 steps, CPU
    .venv/bin/python -m scripts.benchmark_vs_official --size 2048 --tiled  # large image, tiled both sides
    .venv/bin/python -m scripts.benchmark_vs_official --variant small --steps 2 --size 256   # quick check
    .venv/bin/python -m scripts.benchmark_vs_official --sides pack --comfy-args=--bf16-unet  # a ComfyUI option
    .venv/bin/python -m scripts.benchmark_vs_official --size 1024 --count-tensors   # what each stage holds

Needs the official code's environment beside the pack's (``scripts/setup.sh``): ``.venv-official``
(``tools/goldens/setup.sh``) and a clone of the official repository (tools/goldens/official.py says
where); the official code runs at its pinned commit. ``--python PATH`` runs everything with one
interpreter instead, where one environment holds both sides' requirements (a lent GPU machine:
``scripts/device_benchmarks.sh``).

What runs, per side, in a fresh process each (so peak memory is its own), sides alternating for
``--rounds`` rounds so that background load hits both alike:
- the official v2.1 path: ``BSRInferenceLoop.after_load_lq`` (PIL bicubic x4) and
  ``SwinIRPipeline.run`` with the v2.1 defaults (EDM DPM++ 3M SDE, cfg 6, wavelet colour fix, final
  bicubic resize), fp32 on the CPU; on a GPU at ``--precision`` (the models cast and the run under
  autocast, as the official inference loop does);
- the pack: the shipped workflow "DiffBIR v2.1 super-resolution (SwinIR)" (or "... large images
  (tiled)" with ``--tiled``) as a user gets it, executed by ComfyUI's own executor in process with
  ComfyUI's default settings (its text encoder in fp16 included), or with ``--comfy-args`` added to
  its command line (to measure what a ComfyUI option does). The prompt runs in a thread of its own, as in
  ComfyUI's server. ``--env`` sets environment variables for both sides (glibc's malloc tunables, say).
Each process restores twice (two different crops): a two-step warm-up run that loads the weights
(the official DPM++ 3M SDE fails with one step; at 512 px output at most, one tile of the tiled path,
so that a large size is not restored twice), then the reported run (weights loaded, as in a
batch or a second press of Run; the pack's executor keeps the text encoding of unchanged prompts,
the official code encodes them again).

Stages: stage 1 (cleaner), text encoding, VAE encode, sampling (also per cfg step: the median over
steps of one step's model calls, cond + uncond), VAE decode, colour fix + resize. Peak memory: the
process's peak resident set (Linux VmHWM, reset at each stage) and, on CUDA, max_memory_allocated.
``--count-tensors`` also counts, exactly, the bytes of tensors alive at once in the reported run, per
stage (devkit/live_memory.py; the weights, loaded before it, are not counted; what earlier stages left
alive is, and the report splits each stage's peak by the stage that created the tensors): what each
side's code holds, without the allocator's share of the resident peak. The count
slows the run, so its times are not comparable with a run without it.
Weights: the random-weight models of devkit/model_factory.py in the published layouts ("full": the
sizes of SD 2.1, DiffBIR_v2.1.pt and realesrgan_s4_swinir_100k.pth; built once, cached).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from diffbir_modules import cpu_features  # plain Python: no ComfyUI import
from scripts import in_worker_thread, recorded_command

REPO = Path(__file__).resolve().parent.parent
SEED = 231
STAGE1 = "realesrgan_s4_swinir_100k.pth"
WORKFLOWS = {False: "DiffBIR v2.1 super-resolution (SwinIR)", True: "DiffBIR v2.1 large images (tiled)"}
WARM_UP_MAX_SIZE = 512
STAGES = ("stage1", "text", "vae_encode", "sampling", "vae_decode", "colour_fix_resize")
# The pack's node types -> stage (nodes not listed, loaders and the like, count as "other").
NODE_STAGES = {
    "DiffBIRDegradationRemoval": "stage1",
    "DiffBIRTextEncode": "text", "CLIPTextEncode": "text",
    "DiffBIRApplyIRControlNet": "vae_encode", "DiffBIRVAEEncodeTiled": "vae_encode",
    "SamplerCustomAdvanced": "sampling", "SamplerCustom": "sampling", "KSampler": "sampling",
    "DiffBIRTiledSampling": "sampling",
    "DiffBIRVAEDecodeTiled": "vae_decode", "VAEDecode": "vae_decode",
    "DiffBIRCropToStage1": "colour_fix_resize", "DiffBIRColorFix": "colour_fix_resize",
    "DiffBIRResizeToOutputSize": "colour_fix_resize",
}


# --- memory and clocks (both sides) -------------------------------------------------------------------

def _vm(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> None:
    """Starts a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak() -> dict:
    import torch

    out = {"peak_rss": _vm("VmHWM"), "rss": _vm("VmRSS")}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def runtime(device: str) -> dict:
    """The torch version and the device a side ran on (its GPU's name on CUDA)."""
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else cpu_features.describe()
    return {"torch": torch.__version__, "device": name}


def now() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


# A child appends one JSON line per stage started and finished to this file (the driver names it), so
# that a side killed part-way (out of memory, timeout) still reports where it died and what it finished.
PROGRESS: Path | None = None


def progress(phase: str, stage: str, event: str, **fields) -> None:
    if PROGRESS is not None:
        with PROGRESS.open("a") as handle:
            handle.write(json.dumps({"phase": phase, "stage": stage, "event": event, "time": time.time(),
                                     "rss": _vm("VmRSS"), **fields}) + "\n")


def tensor_counter(spec: dict, phase: str, stage: str = "other"):
    """With --count-tensors, the exact counter of the tensors alive at once per stage for the reported
    run (devkit/live_memory.py), else None. What existed before it (the weights, every tensor Python can
    see) is not counted, even where the run hands out new views of it (ComfyUI's model loading does)."""
    if not spec.get("count_tensors") or phase != "run":
        return None
    import gc

    import torch

    from devkit.live_memory import StageTensorBytes

    existing = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]  # type(): no attribute lookups
    return StageTensorBytes(existing, stage=stage)


def tensor_peaks(counter) -> dict:
    """A run's result entries from its tensor counter: the peak per stage and over the whole run, and each
    stage's peak split by the stage that created the tensors, bytes."""
    if counter is None:
        return {}
    return {"tensor_peaks": dict(counter.peaks, whole=counter.peak),
            "tensor_peak_origins": counter.peak_origins}


def counted(counter, run):
    """``run()``, under ``counter`` where there is one (in the thread that does the work: a dispatch mode
    is per thread)."""
    if counter is None:
        return run()
    with counter:
        return run()


class StageClock:
    """Accumulates wall time and the peak memory per stage of one run (``phase``: warm_up or run); with a
    tensor ``counter``, each timed stage is the counter's stage while it runs."""

    def __init__(self, phase: str = "run", counter=None):
        self.phase = phase
        self.counter = counter
        self.stages: dict[str, dict] = {}
        self.steps: list[float] = []

    def add(self, stage: str, seconds: float, memory: dict) -> None:
        entry = self.stages.setdefault(stage, {"s": 0.0, "peak_rss": 0, "cuda_peak": 0})
        entry["s"] += seconds
        entry["peak_rss"] = max(entry["peak_rss"], memory.get("peak_rss") or 0)
        entry["cuda_peak"] = max(entry["cuda_peak"], memory.get("cuda_peak") or 0)

    def timed(self, stage: str, fn):
        def wrapper(*args, **kwargs):
            reset_peak()
            progress(self.phase, stage, "start")
            outer = self.counter.stage if self.counter is not None else None
            if self.counter is not None:
                self.counter.stage = stage
            start = now()
            out = fn(*args, **kwargs)
            seconds, memory = now() - start, peak()
            if self.counter is not None:
                self.counter.stage = outer
            self.add(stage, seconds, memory)
            progress(self.phase, stage, "end", s=seconds, peak_rss=memory.get("peak_rss"))
            return out
        return wrapper


def steps_from_calls(calls: list[float], steps: int) -> list[float]:
    """Seconds per sampling step from the official model calls' times (cond and uncond: a step's calls)."""
    per_step = max(len(calls) // steps, 1)
    return [sum(calls[i:i + per_step]) for i in range(0, len(calls), per_step)]


def step_times(progress_events: list[tuple[float, int, int]], steps: int) -> list[float]:
    """Seconds per sampling step from the pack's progress events (time, value, total) while sampling:
    steps 2..N (no event marks the start of step 1). The sampler's bar counts steps; tiled sampling's
    counts tiles x steps on the same scale, so a step has ended when the completed fraction reaches
    the next whole step."""
    ends, done = [], 0
    for stamp, value, total in progress_events:
        reached = value * steps // max(total, 1)
        if reached > done:
            done = reached
            ends.append(stamp)
    return [b - a for a, b in zip(ends, ends[1:])]


def input_image(size: int, shift: int):
    """The low-quality input of one run, ``size / 4`` px square, from scikit-image's 512 px astronaut.

    Up to 512 px: the crop from ``(shift, shift)``, ``size`` px or up to the photo's edge; larger: the
    whole photo resized to ``size``, mirrored when ``shift``. Either way it is then downscaled x4
    (bicubic). A non-zero ``shift`` gives a different image, so the second run recomputes every node."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    if size <= photo.width:
        end = min(shift + size, photo.width)
        photo = photo.crop((shift, shift, end, end))
    else:
        photo = photo.resize((size, size), Image.BICUBIC)
        if shift:
            photo = photo.transpose(Image.FLIP_LEFT_RIGHT)
    return photo.resize((size // 4, size // 4), Image.BICUBIC)


def warm_up_then_run(spec: dict) -> tuple:
    """(crop shift, steps, output size) of the warm-up run and of the reported run."""
    return (0, 2, min(spec["size"], WARM_UP_MAX_SIZE)), (37, spec["steps"], spec["size"])


# --- the official side ----------------------------------------------------------------------------------

def official_child(spec: dict) -> dict:
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from tools.goldens import official

    official.activate("main")
    from diffbir import pipeline as pipelines
    from diffbir.inference.bsr_loop import BSRInferenceLoop
    from diffbir.model import ControlLDM, SwinIR
    from diffbir.sampler import EDMSampler
    from diffbir.utils.common import instantiate_from_config

    device = spec["device"]
    torch.set_num_threads(spec["threads"])
    reset_peak()
    start = now()
    root = official.source("main")
    cldm_config = OmegaConf.load(root / "configs/inference/cldm.yaml")
    if spec["variant"] != "full":
        cldm_config.params.unet_cfg.update(spec["official_unet"])
        cldm_config.params.controlnet_cfg.update(spec["official_unet"])
    cldm: ControlLDM = instantiate_from_config(cldm_config)
    from safetensors.torch import load_file

    cldm.load_pretrained_sd(load_file(spec["checkpoint"]))
    cldm.load_controlnet_from_ckpt(torch.load(spec["ircontrolnet"], map_location="cpu", weights_only=True))
    cldm.eval().to(device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[spec["precision"]]
    cldm.cast_dtype(dtype)
    cleaner = SwinIR(**spec["swinir_config"])
    cleaner.load_state_dict(torch.load(spec["stage1"], map_location="cpu", weights_only=True), strict=True)
    cleaner.eval().to(device)
    diffusion = instantiate_from_config(OmegaConf.load(root / "configs/inference/diffusion_v2.1.yaml")).to(device)
    load = {"s": now() - start, **peak()}

    original_sample = EDMSampler.sample
    original_forward = ControlLDM.forward.__get__(cldm)
    call_times = []

    def forward(*args, **kwargs):  # one model call (cond or uncond) of the sampler
        start = now()
        out = original_forward(*args, **kwargs)
        call_times.append(now() - start)
        return out

    cldm.forward = forward
    loop = object.__new__(BSRInferenceLoop)
    loop.args = type("Args", (), {"version": "v2.1", "upscale": 4.0})()
    pipe = pipelines.SwinIRPipeline(cleaner, cldm, diffusion, None, device)
    runs = []
    for phase, (shift, steps, size) in zip(("warm_up", "run"), warm_up_then_run(spec)):
        # outside the timed stages the official pipeline pads, colour-fixes and resizes
        clock = StageClock(phase, tensor_counter(spec, phase, stage="colour_fix_resize"))
        pipe.apply_cleaner = clock.timed("stage1", pipelines.SwinIRPipeline.apply_cleaner.__get__(pipe))
        cldm.clip.encode = clock.timed("text", type(cldm.clip).encode.__get__(cldm.clip))
        cldm.vae_encode = clock.timed("vae_encode", ControlLDM.vae_encode.__get__(cldm))
        cldm.vae_decode = clock.timed("vae_decode", ControlLDM.vae_decode.__get__(cldm))
        call_times.clear()
        timed_sample = clock.timed("sampling", original_sample)

        # (the loop's values bound as underscored defaults: the sampler takes a `steps` keyword itself)
        def sample(*args, _phase=phase, _timed=timed_sample, _steps=steps, **kwargs):
            out = _timed(*args, **kwargs)
            progress(_phase, "sampling", "calls", calls=list(call_times), steps=_steps)
            return out

        EDMSampler.sample = sample
        lq = loop.after_load_lq(input_image(size, shift))
        tiled = spec["tiled"]
        positive, negative, cfg = spec["prompts"]
        reset_peak()
        torch.manual_seed(SEED)
        start = now()
        # as the official loop runs it: under autocast to --precision (fp32: autocast disables itself)
        with torch.no_grad(), torch.autocast(device, dtype):
            out = counted(clock.counter, partial(
                pipe.run, lq[None], steps, 1.0, tiled, 512, 256, tiled, 256, tiled, 256, tiled, 512, 256,
                positive, negative, cfg, "noise", "edm_dpm++_3m_sde", 0, False, 0.0, 0.0, 300.0, 1.0, 1.0, 1))
        total = now() - start
        other = total - sum(v["s"] for v in clock.stages.values())
        clock.add("colour_fix_resize", max(other, 0.0), peak())
        clock.steps = steps_from_calls(call_times, steps)
        runs.append({"total_s": total, "stages": clock.stages, "steps": clock.steps, "rss_after": _vm("VmRSS"),
                     "output": list(np.asarray(out).shape), **tensor_peaks(clock.counter)})
    return {"load": load, "run": runs[-1], "warm_up": runs[0], "runtime": runtime(device)}


# --- the pack's side ------------------------------------------------------------------------------------

def set_widgets(prompt: dict, widgets: list) -> None:
    """``--set NODE.INPUT=VALUE`` pairs ([["NODE.INPUT", "VALUE"], ...]) applied to every node of that type."""
    for target, value in widgets:
        kind, name = target.split(".", 1)
        matching = [node for node in prompt.values() if node["class_type"] == kind]
        if not matching:
            raise ValueError(f"--set {target}: the workflow has no {kind} node")
        for node in matching:
            node["inputs"][name] = value


def pack_child(spec: dict) -> dict:
    import torch

    from scripts import comfy_headless, comfy_inprocess

    torch.set_num_threads(spec["threads"])
    base = Path(spec["scratch"]) / "comfy"
    models = Path(spec["scratch"]) / "models"
    for folder, source in (("checkpoints", spec["checkpoint"]), ("diffbir", spec["ircontrolnet"]),
                           ("upscale_models", spec["stage1"])):
        (models / folder).mkdir(parents=True, exist_ok=True)
        link = models / folder / Path(source).name
        if not link.exists():
            link.symlink_to(source)
    reset_peak()
    start = now()
    comfy_inprocess.start(base, models, cpu=spec["device"] == "cpu", extra_args=spec["comfy_args"])
    import execution
    from comfy import utils as comfy_utils

    # Every sampling step reaches the progress hook (newer ComfyUI throttles it: off for the benchmark).
    comfy_utils.PROGRESS_THROTTLE_MIN_INTERVAL = 0.0
    comfy_utils.PROGRESS_THROTTLE_MIN_PERCENT = 0.0

    class TimedServer(comfy_inprocess._ServerStandIn):
        """Timestamps the executor's messages: each "executing" starts a node, progress marks steps."""

        def __init__(self):
            super().__init__()
            self.events = []

        phase, running = "warm_up", None  # running: (stage, start) of the node executing now
        counter = None  # the reported run's tensor counter (--count-tensors)

        def send_sync(self, event, data, sid=None):
            stamp, memory = now(), (peak() if event == "executing" else None)
            self.events.append((stamp, event, data, memory))
            if event == "executing":
                if self.running is not None:
                    progress(self.phase, self.running[0], "end", s=stamp - self.running[1],
                             peak_rss=memory.get("peak_rss"))
                node = data.get("node")
                self.running = None
                if node is not None:
                    self.running = (NODE_STAGES.get(prompt[node]["class_type"], "other"), stamp)
                    progress(self.phase, self.running[0], "start", node=node)
                    if self.counter is not None:
                        self.counter.stage = self.running[0]
                reset_peak()
            super().send_sync(event, data, sid)

    workflow = comfy_headless.load_workflow(REPO / "example_workflows" / f"{WORKFLOWS[spec['tiled']]}.json")
    prompt = comfy_headless.workflow_to_prompt(workflow, comfy_inprocess.object_info())
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = Path(spec["checkpoint"]).name
        elif kind == "DiffBIRIRControlNetLoader":
            inputs["ircontrolnet_name"] = Path(spec["ircontrolnet"]).name
        elif kind == "DiffBIRStage1Loader":
            inputs["model_name"] = Path(spec["stage1"]).name
    set_widgets(prompt, spec.get("widgets", []))
    server = TimedServer()
    comfy_utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: server.events.append(
            (now(), "progress", {"value": value, "total": total}, None)))
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args=comfy_inprocess.pack_module(
                                            "diffbir_modules.comfy_compat").executor_cache_args())
    load = None
    runs = []
    for phase, (shift, steps, size) in zip(("warm_up", "run"), warm_up_then_run(spec)):
        server.phase, server.counter = phase, tensor_counter(spec, phase)
        name = f"benchmark_{shift}.png"
        input_image(size, shift).save(base / "input" / name)
        for node in prompt.values():
            if node["class_type"] == "LoadImage":
                node["inputs"]["image"] = name
            elif node["class_type"] in ("DiffBIREDMSigmas", "DiffBIRSpacedSigmas"):
                node["inputs"]["steps"] = steps
        server.events.clear()
        reset_peak()
        run_start = now()
        targets = [k for k, n in prompt.items() if n["class_type"] == "SaveImage"]
        in_worker_thread(partial(counted, server.counter, partial(
            executor.execute, prompt, f"benchmark-{shift}", {"client_id": "benchmark"}, targets)))
        total = now() - run_start
        if not executor.success:
            raise RuntimeError(f"the workflow failed: {executor.status_messages}")
        end_memory = peak()
        clock = StageClock(phase)
        current, started, progress_events = None, run_start, []
        for stamp, event, data, memory in [*server.events, (now(), "executing", {"node": None}, end_memory)]:
            if event == "executing":
                if current is not None:
                    stage = NODE_STAGES.get(prompt[current]["class_type"], "other")
                    clock.add(stage, stamp - started, memory)
                current, started = data.get("node"), stamp
            elif event == "progress" and current is not None and \
                    NODE_STAGES.get(prompt[current]["class_type"]) == "sampling":
                progress_events.append((stamp, data["value"], data["total"]))
        clock.steps = step_times(progress_events, steps)
        if load is None:  # ComfyUI started; it reads the weights during the first run
            load = {"s": run_start - start}
        runs.append({"total_s": total, "stages": clock.stages, "steps": clock.steps, "rss_after": _vm("VmRSS"),
                     **tensor_peaks(server.counter)})
    if spec.get("image_out"):  # the reported run's image: the newest one SaveImage wrote
        saved = max((base / "output").rglob("*.png"), key=lambda p: p.stat().st_mtime)
        shutil.copyfile(saved, spec["image_out"])
    return {"load": load, "run": runs[-1], "warm_up": runs[0], "runtime": runtime(spec["device"])}


# --- the driver -----------------------------------------------------------------------------------------

MODEL_FILES = ("checkpoint", "ircontrolnet", "stage1")  # the spec's keys that hold a weights file's path


def interpreter(side: str, python: str | None) -> Path:
    """``python`` (one environment for everything, e.g. a lent GPU machine), else the side's venv."""
    if python:
        return Path(python)
    path = REPO / (".venv-official" if side == "official" else ".venv") / "bin" / "python"
    if not path.exists():
        raise SystemExit(f"{path.parent.parent.name} is missing: run "
                         f"{'tools/goldens/setup.sh' if side == 'official' else 'scripts/setup.sh'} first")
    return path


def build_models(variant: str, python: str | None) -> dict:
    """Builds (once, cached) the random-weight files in the published layouts with the pack's interpreter."""
    code = ("import json, torch; from devkit import model_factory as m; "
            f"print(json.dumps({{'checkpoint': str(m.sd2_checkpoint({variant!r}, dtype=torch.float32)), "
            f"'ircontrolnet': str(m.ircontrolnet_file({variant!r})), "
            f"'stage1': str(m.stage1_file({STAGE1!r}, {variant!r})), "
            f"'swinir_config': m.STAGE1_CONFIGS['swinir'][{variant!r}]}}))")
    done = subprocess.run([str(interpreter("pack", python)), "-c", code], cwd=REPO, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_side(side: str, spec: dict, timeout: float) -> dict:
    """One side's results; a side that dies (killed for memory, timed out, failed) is reported as
    ``failed`` with the stages it finished and the one it died in, and the benchmark goes on."""
    python = interpreter(side, spec["python"])
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    out = Path(handle.name).with_suffix(".out.json")
    progress_file = out.with_suffix(".progress")
    try:
        subprocess.run([str(python), "-m", "scripts.benchmark_vs_official", "--child", side, handle.name, str(out)],
                       cwd=REPO, check=True, timeout=timeout, env={**os.environ, **spec["env"]})
        return json.loads(out.read_text())
    except subprocess.CalledProcessError as error:
        if error.returncode == -9:
            how = "killed by signal 9 (SIGKILL: on Linux usually the out-of-memory killer)"
        elif error.returncode < 0:
            how = f"killed by signal {-error.returncode}"
        else:
            how = f"exited with status {error.returncode} (its error is printed above)"
        return partial_result(how, progress_file, time.time())
    except subprocess.TimeoutExpired:
        return partial_result(f"stopped after the {timeout:.0f} s timeout", progress_file, time.time())
    finally:
        for path in (Path(handle.name), out, progress_file):
            path.unlink(missing_ok=True)


def partial_result(how: str, progress_file: Path, ended: float) -> dict:
    """What a side that died had finished, from its progress lines, in the children's format."""
    events = [json.loads(line) for line in progress_file.read_text().splitlines()] if progress_file.exists() else []
    phases: dict[str, dict] = {}
    died_in = None
    for e in events:
        run = phases.setdefault(e["phase"], {"total_s": None, "stages": {}, "steps": [], "rss_after": None})
        if e["event"] == "start":
            died_in = (e["phase"], e["stage"], e["time"])
        elif e["event"] == "end":
            entry = run["stages"].setdefault(e["stage"], {"s": 0.0, "peak_rss": 0, "cuda_peak": 0})
            entry["s"] += e["s"]
            entry["peak_rss"] = max(entry["peak_rss"], e.get("peak_rss") or 0)
            died_in = None
        elif e["event"] == "calls":
            run["steps"] = steps_from_calls(e["calls"], e["steps"])
    where = ""
    if died_in is not None:
        last_rss = max((e["rss"] or 0) for e in events if e["phase"] == died_in[0])
        where = (f" in {died_in[1]} of the {'reported' if died_in[0] == 'run' else 'warm-up'} run, "
                 f"{ended - died_in[2]:.0f} s into that stage (resident memory at its last record "
                 f"{last_rss / 1024 ** 3:.2f} GiB)")
    return {"failed": how + where, "load": None, "warm_up": phases.get("warm_up"), "run": phases.get("run")}


def median_of(results: list[dict], getter) -> float | None:
    """The median over rounds; a value a failed side never reached (None, or missing) is left out."""
    values = []
    for r in results:
        try:
            value = getter(r)
        except (KeyError, TypeError, ValueError):  # a failed side's partial result lacks it
            if "failed" not in r:
                raise
            value = None
        if value is not None:
            values.append(value)
    return statistics.median(values) if values else None


def _in_gib(count: int | None) -> float | None:
    return None if count is None else count / 1024 ** 3


def report(results: dict[str, list[dict]], spec: dict) -> dict:
    rows = []

    def row(name, getter, unit):
        o, p = median_of(results["official"], getter), median_of(results["pack"], getter)
        rows.append({"what": name, "unit": unit, "official": o, "pack": p,
                     "ratio": (p / o) if o and p is not None else None})

    row("whole restore (weights loaded)", lambda r: r["run"]["total_s"], "s")
    row("per cfg step (median)", lambda r: statistics.median(r["run"]["steps"]) if r["run"]["steps"] else None, "s")
    for stage in STAGES:
        row(f"  {stage}", lambda r, s=stage: r["run"]["stages"].get(s, {}).get("s"), "s")
    row("cold start: load + a 2-step restore (at 512 px at most)",
        lambda r: r["load"]["s"] + r["warm_up"]["total_s"], "s")
    gib = 1024 ** 3
    row("peak RSS of the reported restore", lambda r: None if "failed" in r else max(
        v["peak_rss"] for v in r["run"]["stages"].values()) / gib, "GiB")
    row("RSS with weights loaded (after warm-up)", lambda r: (r["warm_up"]["rss_after"] or 0) / gib, "GiB")
    for stage in ("stage1", "vae_encode", "sampling", "vae_decode"):
        row(f"  peak RSS {stage}", lambda r, s=stage: (r["run"]["stages"].get(s, {}).get("peak_rss") or 0) / gib,
            "GiB")
    if spec.get("count_tensors"):
        for stage in ("whole", "stage1", "vae_encode", "sampling", "vae_decode"):
            name = "tensors alive at once, " + ("whole run" if stage == "whole" else stage)
            row(name, lambda r, s=stage: _in_gib((r["run"].get("tensor_peaks") or {}).get(s)), "GiB")
    if spec["device"] != "cpu":
        row("peak CUDA memory", lambda r: max(v["cuda_peak"] for v in r["run"]["stages"].values()) / gib, "GiB")
    failed = {side: [r["failed"] for r in side_results if "failed" in r] for side, side_results in results.items()}
    return {"rows": rows, "failed": {side: reasons for side, reasons in failed.items() if reasons},
            "counted": bool(spec.get("count_tensors"))}


def markdown(summary: dict, meta: dict) -> str:
    lines = [f"{meta['date']}, {meta['device']}, {meta['command']}", "",
             "| what | official | pack | pack / official |", "|---|---|---|---|"]
    for r in summary["rows"]:
        official, pack = (("-" if v is None else f"{v:.2f} {r['unit']}") for v in (r["official"], r["pack"]))
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['what']} | {official} | {pack} | {ratio} |")
    for side, reasons in summary.get("failed", {}).items():
        lines += ["", *(f"{side} did not finish: {reason}" for reason in reasons)]
    if summary.get("counted"):
        lines += ["", "The reported runs ran under the exact tensor count (--count-tensors), which slows them: "
                  "take times from a run without it."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="output size (square); the input is size / 4")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (v2.1 default 10)")
    parser.add_argument("--tiled", action="store_true", help="tiled stage 1, VAE and sampling on both sides")
    parser.add_argument("--rounds", type=int, default=1, help="official / pack alternations (medians reported)")
    parser.add_argument("--variant", default="full", choices=("small", "full"), help="model sizes")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"), help="official --precision")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per side and round")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "benchmark_vs_official.json")
    parser.add_argument("--comfy-args", default="", metavar="ARGS",
                        help="the pack side's extra ComfyUI options, written with =, e.g. --comfy-args=--bf16-unet")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for both sides' processes (repeatable), e.g. "
                             "--env GLIBC_TUNABLES=glibc.malloc.arena_max=1")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", dest="widgets",
                        help="a widget of the shipped workflow changed on the pack side (repeatable), by node type, "
                             "e.g. --set DiffBIRModelSampling.cpu_precision=bf16")
    parser.add_argument("--count-tensors", action="store_true",
                        help="count the bytes of tensors alive at once per stage of the reported run, exactly "
                             "(not the allocator's resident memory); slows that run, so its times are not comparable")
    parser.add_argument("--save-image", action="store_true",
                        help="keep the pack's final image beside --out (same name, .png): to compare options")
    parser.add_argument("--sides", default="official,pack",
                        help="which sides to run, comma separated (official, pack); the other's column stays empty")
    parser.add_argument("--python", metavar="PATH",
                        help="one interpreter for both sides and the models (a machine with one environment, such "
                             "as a lent GPU machine: scripts/device_benchmarks.sh); default: .venv-official for "
                             "the official side, .venv for the rest")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        side, spec_path, out_path = args.child
        spec = json.loads(Path(spec_path).read_text())
        global PROGRESS
        PROGRESS = Path(out_path).with_suffix(".progress")
        result = (official_child if side == "official" else pack_child)(spec)
        Path(out_path).write_text(json.dumps(result))
        return 0

    sides = [side for side in ("official", "pack") if side in args.sides.split(",")]
    if not sides:
        parser.error("--sides names neither official nor pack")
    if any("=" not in item for item in args.env):
        parser.error("--env takes NAME=VALUE")
    if any("=" not in item or "." not in item.split("=", 1)[0] for item in args.widgets):
        parser.error("--set takes NODE.INPUT=VALUE")
    models = build_models(args.variant, args.python)
    from diffbir_modules import prompts  # plain Python (no ComfyUI import): the official v2.1 prompts

    spec = dict(models, size=args.size, steps=args.steps, tiled=args.tiled, variant=args.variant,
                device=args.device, precision=args.precision, threads=args.threads, python=args.python,
                comfy_args=args.comfy_args.split(), env=dict(item.split("=", 1) for item in args.env),
                widgets=[item.split("=", 1) for item in args.widgets], count_tensors=args.count_tensors,
                image_out=str(args.out.with_suffix(".png").resolve()) if args.save_image else None,
                prompts=list(prompts.default_prompts("v2.1")),
                official_unet=dict(channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[1, 2]))
    results = {"official": [], "pack": []}
    with tempfile.TemporaryDirectory(prefix="diffbir-bench-") as scratch:
        spec["scratch"] = scratch
        for round_index in range(args.rounds):
            for side in sides:
                print(f"[{time.strftime('%H:%M:%S')}] round {round_index + 1}/{args.rounds}: {side}", flush=True)
                results[side].append(run_side(side, spec, args.timeout))
    arguments = argv if argv is not None else sys.argv[1:]
    ran_on = sorted({r["runtime"]["device"] for side in results.values() for r in side if "runtime" in r})
    meta = {"date": time.strftime("%Y-%m-%d"), "device": ", ".join(ran_on) or args.device,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3, 1),
            "command": recorded_command("scripts.benchmark_vs_official", arguments, "--out", "--python"),
            "load_average": os.getloadavg()}
    summary = report(results, spec)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # the report names the model files, not where this machine keeps them
    shown = {k: Path(v).name if k in MODEL_FILES + ("image_out", "python") and v else v
             for k, v in spec.items() if k != "scratch"}
    args.out.write_text(json.dumps({"meta": meta, "spec": shown, "summary": summary, "results": results}, indent=1))
    print(markdown(summary, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
