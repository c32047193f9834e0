"""The side-by-side benchmark's report (scripts/benchmark_vs_official.py): ratios, medians over rounds
and the table, from results in the children's format. The children themselves need the official
code's environment and full-size models, so they are run by hand (docs/development.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import benchmark_vs_official as bench

GIB = 1024 ** 3


def result(scale: float, steps: list[float], cached_text: bool = False) -> dict:
    stages = {name: {"s": 10.0 * scale, "peak_rss": int(7 * GIB * scale), "cuda_peak": 0}
              for name in bench.STAGES if not (cached_text and name == "text")}
    return {"load": {"s": 5.0 * scale},
            "warm_up": {"total_s": 20.0 * scale, "rss_after": int(6 * GIB * scale)},
            "run": {"total_s": 60.0 * scale, "stages": stages, "steps": steps}}


def test_report_ratios_medians_and_table():
    results = {"official": [result(2.0, [4.0, 4.0, 5.0]), result(4.0, [8.0, 8.0])],
               "pack": [result(1.0, [1.0, 2.0, 2.0], cached_text=True)]}
    rows = {r["what"]: r for r in bench.report(results, {"device": "cpu"})["rows"]}
    whole = rows["whole restore (weights loaded)"]
    assert (whole["official"], whole["pack"]) == (180.0, 60.0)  # median of 120 and 240; one pack round
    assert abs(whole["ratio"] - 1 / 3) < 1e-12
    step = rows["per cfg step (median)"]
    assert (step["official"], step["pack"]) == (6.0, 2.0)  # median of the rounds' median steps (4 and 8)
    text = rows["  text"]
    assert text["pack"] is None and text["ratio"] is None  # the pack's executor kept the encoding
    assert rows["cold start: load + a 2-step restore (at 512 px at most)"]["official"] == 75.0
    assert abs(rows["peak RSS of the reported restore"]["pack"] - 7.0) < 1e-9
    assert "peak CUDA memory" not in rows

    table = bench.markdown({"rows": list(rows.values())}, {"date": "d", "device": "cpu", "command": "c"})
    assert "| whole restore (weights loaded) | 180.00 s | 60.00 s | 0.33x |" in table
    assert "|   text | 30.00 s | - | - |" in table


def test_input_image_is_a_quarter_of_the_size_and_differs_per_run():
    """Both sides get the same low-quality input, size / 4 px square; the second run's (shift) is a
    different image, or ComfyUI's cache would skip the recompute the benchmark times."""
    import numpy as np

    for size in (512, 2048):  # a crop of the 512 px photo, and the photo resized up
        first, second = bench.input_image(size, 0), bench.input_image(size, 37)
        assert first.size == second.size == (size // 4, size // 4)
        assert not np.array_equal(np.asarray(first), np.asarray(second))


def test_warm_up_is_at_most_one_tile():
    """The warm-up run loads the weights at 512 px at most (one tile of the tiled path), so a 2048 px
    benchmark does not restore the large image twice; the reported run is at the size asked."""
    assert bench.warm_up_then_run({"size": 2048, "steps": 10}) == ((0, 2, 512), (37, 10, 2048))
    assert bench.warm_up_then_run({"size": 256, "steps": 4}) == ((0, 2, 256), (37, 4, 256))


def test_a_side_that_dies_is_reported_with_what_it_finished(tmp_path):
    """A side killed part-way (the official tiled path at 2048 px ran out of memory on a 24 GiB
    machine) keeps the stages it finished and says where it died; the benchmark does not crash."""
    lines = [
        {"phase": "warm_up", "stage": "stage1", "event": "start", "time": 0.0, "rss": GIB},
        {"phase": "warm_up", "stage": "stage1", "event": "end", "time": 1.0, "rss": GIB, "s": 1.0, "peak_rss": GIB},
        {"phase": "run", "stage": "stage1", "event": "start", "time": 10.0, "rss": GIB},
        {"phase": "run", "stage": "stage1", "event": "end", "time": 13.0, "rss": 2 * GIB, "s": 3.0,
         "peak_rss": 3 * GIB},
        {"phase": "run", "stage": "sampling", "event": "start", "time": 13.0, "rss": 2 * GIB},
        {"phase": "run", "stage": "sampling", "event": "end", "time": 33.0, "rss": 2 * GIB, "s": 20.0,
         "peak_rss": 4 * GIB},
        {"phase": "run", "stage": "sampling", "event": "calls", "time": 33.0, "rss": 2 * GIB,
         "calls": [4.0, 5.0, 5.0, 6.0], "steps": 2},
        {"phase": "run", "stage": "vae_decode", "event": "start", "time": 33.0, "rss": 20 * GIB},
    ]
    progress = tmp_path / "side.progress"
    progress.write_text("".join(json.dumps(line) + "\n" for line in lines))
    dead = bench.partial_result("killed by signal 9", progress, ended=40.0)
    assert dead["failed"].startswith("killed by signal 9 in vae_decode of the reported run, 7 s into that stage")
    assert "20.00 GiB" in dead["failed"]
    assert dead["run"]["stages"]["sampling"]["s"] == 20.0 and dead["run"]["steps"] == [9.0, 11.0]
    assert "vae_decode" not in dead["run"]["stages"]

    summary = bench.report({"official": [dead], "pack": [result(1.0, [1.0, 2.0, 2.0])]}, {"device": "cpu"})
    rows = {r["what"]: r for r in summary["rows"]}
    assert rows["whole restore (weights loaded)"]["official"] is None  # never finished
    assert rows["peak RSS of the reported restore"]["official"] is None  # not a finished stage's peak
    assert rows["per cfg step (median)"]["official"] == 10.0 and rows["  sampling"]["official"] == 20.0
    assert summary["failed"] == {"official": [dead["failed"]]}
    assert "official did not finish: killed by signal 9 in vae_decode" in bench.markdown(summary, {
        "date": "d", "device": "cpu", "command": "c"})


def test_step_times_from_the_sampler_and_tiled_progress_bars():
    """Tiled sampling reports tiles x steps on the sampler's bar (5 tile batches of 9 windows here)
    beside the sampler's own step events: only whole steps count, not tile batches."""
    sampler = [(10.0, 1, 3), (25.0, 2, 3), (37.0, 3, 3)]
    assert bench.step_times(sampler, 3) == [15.0, 12.0]
    tiled = []
    for step in range(2):
        for k, window in enumerate((2, 4, 6, 8, 9)):
            tiled.append((100.0 * step + 20.0 * (k + 1), 9 * step + window, 18))
        tiled.append((100.0 * step + 100.0, step + 1, 2))  # the sampler's step event
    assert bench.step_times(tiled, 2) == [100.0]


def test_comfy_options_and_the_saved_image_reach_the_pack_side(tmp_path, monkeypatch):
    """--comfy-args goes to the pack's ComfyUI command line and --save-image asks for the image beside
    --out; the report records both, the image by file name only (no machine paths in the report)."""
    seen = []
    monkeypatch.setattr(bench, "build_models", lambda variant, python: {"checkpoint": str(tmp_path / "sd.safetensors")})
    monkeypatch.setattr(bench, "run_side", lambda side, spec, timeout: seen.append((side, dict(spec))) or result(
        1.0, [1.0]))
    out = tmp_path / "flags.json"
    assert bench.main(["--sides", "pack", "--comfy-args=--bf16-unet --use-pytorch-cross-attention",
                       "--save-image", "--out", str(out)]) == 0
    [(side, spec)] = seen
    assert side == "pack" and spec["comfy_args"] == ["--bf16-unet", "--use-pytorch-cross-attention"]
    assert spec["image_out"] == str(out.with_suffix(".png").resolve())
    shown = json.loads(out.read_text())["spec"]
    assert shown["image_out"] == "flags.png" and shown["checkpoint"] == "sd.safetensors"
    assert shown["comfy_args"] == ["--bf16-unet", "--use-pytorch-cross-attention"]


def test_set_changes_a_widget_of_the_shipped_workflow_on_the_pack_side(tmp_path, monkeypatch):
    """--set NODE.INPUT=VALUE reaches the pack side's spec and changes that input of every node of the type in
    the prompt; a type the workflow lacks is an error, and so is an argument without NODE. and =."""
    seen = []
    monkeypatch.setattr(bench, "build_models", lambda variant, python: {"checkpoint": str(tmp_path / "sd.safetensors")})
    monkeypatch.setattr(bench, "run_side", lambda side, spec, timeout: seen.append(dict(spec)) or result(1.0, [1.0]))
    assert bench.main(["--sides", "pack", "--set", "DiffBIRModelSampling.cpu_precision=bf16",
                       "--out", str(tmp_path / "set.json")]) == 0
    [spec] = seen
    assert spec["widgets"] == [["DiffBIRModelSampling.cpu_precision", "bf16"]]
    prompt = {"1": {"class_type": "DiffBIRModelSampling", "inputs": {"version": "v2.1"}},
              "2": {"class_type": "KSampler", "inputs": {"cfg": 6.0}}}
    bench.set_widgets(prompt, spec["widgets"])
    assert prompt["1"]["inputs"] == {"version": "v2.1", "cpu_precision": "bf16"}
    assert prompt["2"]["inputs"] == {"cfg": 6.0}
    with pytest.raises(ValueError, match="the workflow has no DiffBIRFaceRestore node"):
        bench.set_widgets(prompt, [["DiffBIRFaceRestore.strength", "1"]])
    for bad in ("cpu_precision=bf16", "DiffBIRModelSampling.cpu_precision"):
        with pytest.raises(SystemExit):
            bench.main(["--sides", "pack", "--set", bad, "--out", str(tmp_path / "bad.json")])


def test_env_reaches_the_side_process(tmp_path, monkeypatch):
    """--env NAME=VALUE is set in the side's process environment (on top of this one's); without = it is refused."""
    seen = []
    monkeypatch.setattr(bench, "build_models", lambda variant, python: {"checkpoint": str(tmp_path / "sd.safetensors")})

    def fake_run(command, env, **kwargs):
        seen.append(env)
        Path(command[-1]).write_text(json.dumps(result(1.0, [1.0])))

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setenv("DIFFBIR_BENCH_PROBE", "kept")
    assert bench.main(["--sides", "pack", "--env", "GLIBC_TUNABLES=glibc.malloc.arena_max=1", "--env", "A=b=c",
                       "--out", str(tmp_path / "env.json")]) == 0
    [env] = seen
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=1" and env["A"] == "b=c"
    assert env["DIFFBIR_BENCH_PROBE"] == "kept"
    with pytest.raises(SystemExit):
        bench.main(["--sides", "pack", "--env", "NOVALUE", "--out", str(tmp_path / "bad.json")])


def test_one_interpreter_for_both_sides(tmp_path, monkeypatch):
    """--python (a machine with one environment, as a lent GPU machine) runs both sides and the model
    build with that interpreter; the report names it by file name only and says what each side ran on."""
    commands, built = [], []
    python = tmp_path / "env" / "bin" / "python3"
    monkeypatch.setattr(bench, "build_models", lambda variant, python: built.append(python) or {
        "checkpoint": str(tmp_path / "sd.safetensors")})

    def fake_run(command, env, **kwargs):
        commands.append(command)
        ran = dict(result(1.0, [1.0]), runtime={"torch": "2.11.0", "device": "NVIDIA H100 80GB HBM3"})
        Path(command[-1]).write_text(json.dumps(ran))

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = tmp_path / "one.json"
    assert bench.main(["--python", str(python), "--device", "cuda", "--out", str(out)]) == 0
    assert built == [str(python)] and [c[0] for c in commands] == [str(python), str(python)]
    assert [c[c.index("--child") + 1] for c in commands] == ["official", "pack"]
    report = json.loads(out.read_text())
    assert report["spec"]["python"] == "python3" and str(tmp_path) not in json.dumps(report)
    assert report["meta"]["device"] == "NVIDIA H100 80GB HBM3"
    assert "--python python3 --device cuda" in report["meta"]["command"]


def test_a_cpu_side_names_its_cpu():
    """Model, cores and vector extensions: the same code's step differs 1.7-2.0x between two 2-core CPUs."""
    from diffbir_modules import cpu_features

    assert bench.runtime("cpu")["device"] == cpu_features.describe()


def test_count_tensors_per_stage(tmp_path, monkeypatch):
    """--count-tensors reaches the sides' spec; the reported run's counter follows the timed stages (and
    returns to what runs between them), the result carries the peaks per stage and over the run, and
    the report adds them as rows and says that the counted run's times are slowed."""
    import torch

    seen = []
    monkeypatch.setattr(bench, "build_models", lambda variant, python: {"checkpoint": str(tmp_path / "sd.safetensors")})
    monkeypatch.setattr(bench, "run_side", lambda side, spec, timeout: seen.append(dict(spec)) or result(1.0, [1.0]))
    assert bench.main(["--sides", "pack", "--count-tensors", "--out", str(tmp_path / "count.json")]) == 0
    assert seen[0]["count_tensors"] is True
    spec = {"count_tensors": True, "device": "cpu"}
    assert bench.tensor_counter(spec, "warm_up") is None and bench.tensor_counter({}, "run") is None
    clock = bench.StageClock("run", bench.tensor_counter(spec, "run", stage="colour_fix_resize"))
    megabyte = lambda: torch.ones(1024, 256)  # noqa: E731  (1 MiB of float32)
    kept = bench.counted(clock.counter, lambda: [clock.timed("stage1", megabyte)(),
                                                 clock.timed("vae_decode", lambda: torch.ones(1024, 512))()])
    assert clock.counter.stage == "colour_fix_resize" and len(kept) == 2
    peaks = bench.tensor_peaks(clock.counter)["tensor_peaks"]
    # the decode's peak counts the 1 MiB stage 1 left alive; nothing ran outside the stages
    assert peaks == {"stage1": 2**20, "vae_decode": 3 * 2**20, "whole": 3 * 2**20}
    counted_run = result(1.0, [1.0])
    counted_run["run"]["tensor_peaks"] = {**peaks, "sampling": 2**30}
    summary = bench.report({"official": [counted_run], "pack": [result(1.0, [1.0])]}, spec)
    rows = {r["what"]: r for r in summary["rows"]}
    assert rows["tensors alive at once, sampling"]["official"] == 1.0
    assert rows["tensors alive at once, whole run"]["official"] == 3 / 1024
    assert rows["tensors alive at once, vae_encode"]["official"] is None  # not counted: no figure, no ratio
    assert rows["tensors alive at once, sampling"]["pack"] is None
    assert "take times from a run without it" in bench.markdown(summary, {"date": "d", "device": "cpu", "command": "c"})
    assert "tensors alive at once, sampling" not in {r["what"] for r in bench.report(
        {"official": [counted_run], "pack": []}, {"device": "cpu"})["rows"]}
