#!/usr/bin/env python
"""Soak benchmark: many prompts through one headless ComfyUI server, the example workflows in turn
(shrunk: small images, 2 steps), every Nth prompt interrupted mid-run. Reports the server's resident
memory after a warm-up and at the end (goal: growth <= 2%), the outputs written and the interrupts
the server reported.

    .venv/bin/python -m scripts.soak --models-dir <a ComfyUI models folder> --prompts 100

The models folder must hold the files the example workflows name (the test suite's random-weight
stand-ins under the published names work). Face workflows use MTCNN (the facenet-pytorch weights), so
no RetinaFace download is needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from scripts import comfy_headless

WORKFLOWS = comfy_headless.REPO / "example_workflows"


def shrink(prompt: dict, seed: int) -> dict:
    """Small and quick: 2 steps, no minimum short side, upscale at most 2, 128 px faces, MTCNN, no
    downloads; a new seed each time so nothing is served from ComfyUI's cache."""
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if "steps" in inputs:  # a literal, or linked to the preset loader's official count (10 to 50)
            inputs["steps"] = 2
        for name in ("seed", "noise_seed"):
            if name in inputs and not isinstance(inputs[name], list):
                inputs[name] = seed
        if kind == "DiffBIRDegradationRemoval":
            inputs["min_short_side"] = 0
            if not isinstance(inputs["upscale"], list):
                inputs["upscale"] = min(float(inputs["upscale"]), 2.0)
        if kind == "DiffBIRFaceDetectorLoader":
            inputs["detector"] = "mtcnn"
        if kind == "DiffBIRFaceDetectAlign":
            inputs["face_size"] = 128
        if kind == "DiffBIRFacePasteBack":
            inputs.pop("face_parser", None)
        if kind in ("DiffBIRPresetLoader",):
            inputs["download_missing"] = False
    return prompt


def memory_window(rss_mib: list[float], warmup: int, window: int) -> tuple[float, float]:
    """Resident memory after the warm-up and at the end: the median over ``window`` prompts (one of each
    workflow), so neither figure is one workflow's own level or an interrupted prompt's."""
    after_warmup = rss_mib[warmup:warmup + window] or rss_mib[-window:]
    return round(statistics.median(after_warmup), 1), round(statistics.median(rss_mib[-window:]), 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=None, help="default: the runtime's models/")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10, help="prompts before the baseline round")
    parser.add_argument("--interrupt-every", type=int, default=10, help="interrupt every Nth prompt (0: never)")
    parser.add_argument("--interrupt-after", type=float, default=1.0, help="seconds into the prompt")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)

    models_dir = args.models_dir or comfy_headless.comfyui_root() / "models"
    base = comfy_headless.make_base_directory(comfy_headless.scratch_base("diffbir-soak-"), models_dir)
    names = sorted(p.name for p in WORKFLOWS.glob("*.json") if "large images" not in p.name)
    workflows = {name: comfy_headless.load_workflow(WORKFLOWS / name) for name in names}
    pixels = (np.random.default_rng(0).random((32, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(base / "input" / "soak.png")

    report = {"prompts": args.prompts, "completed": 0, "interrupted": 0, "failed": [], "outputs": 0, "rss_mib": []}
    started = time.monotonic()
    with comfy_headless.ComfyServer(base) as server:
        info = server.object_info()
        process = psutil.Process(server.process.pid)
        for i in range(args.prompts):
            name = names[i % len(names)]
            prompt = shrink(comfy_headless.workflow_to_prompt(workflows[name], info), seed=1000 + i)
            for node in prompt.values():
                if node["class_type"] == "LoadImage":
                    node["inputs"]["image"] = "soak.png"
            interrupt = args.interrupt_every and (i + 1) % args.interrupt_every == 0
            prompt_id = server.queue(prompt)
            if interrupt:
                time.sleep(args.interrupt_after)
                server.post("/interrupt", {})
            try:
                entry = server.wait(prompt_id, timeout=1800)
                report["completed"] += 1
                report["outputs"] += len([p for p in server.output_images(entry) if p.is_file()])
                outcome = "done"
            except comfy_headless.PromptFailed as error:
                if "interrupted" in str(error):
                    report["interrupted"] += 1
                    outcome = "interrupted"
                else:
                    report["failed"].append(f"{name}: {error}")
                    outcome = "FAILED"
            rss = process.memory_info().rss / 2**20
            report["rss_mib"].append(round(rss, 1))
            print(f"[{i + 1}/{args.prompts}] {name}: {outcome}, server RSS {rss:.0f} MiB, "
                  f"{report['outputs']} outputs so far", flush=True)  # a partial run still has its figures
    baseline, final = memory_window(report["rss_mib"], args.warmup, len(names))
    report.update(seconds=round(time.monotonic() - started, 1), rss_after_warmup_mib=baseline, rss_end_mib=final,
                  rss_growth_percent=round(100 * (final - baseline) / baseline, 2))
    print(f"{report['completed']} completed, {report['interrupted']} interrupted, {len(report['failed'])} failed, "
          f"{report['outputs']} outputs; RSS after warm-up {baseline:.0f} MiB, end {final:.0f} MiB "
          f"({report['rss_growth_percent']:+.2f}%), {report['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if not report["failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
