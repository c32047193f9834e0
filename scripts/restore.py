#!/usr/bin/env python
"""Restore images with DiffBIR through a headless ComfyUI: the main job of this pack.

    .venv/bin/python -m scripts.restore --input photo.png --output restored/
    .venv/bin/python -m scripts.restore --input folder/ --output out/ --task denoise --version v2 --steps 50

It starts ComfyUI's own ``main.py`` (the runtime scripts/setup.sh prepared, or COMFYUI_PATH) with
this pack, loads the example workflow for the task and version (the same JSON users open in the
web UI), sets the image, upscale, steps, seed and cfg, runs it, and writes the restored images.
Weights are looked up in ComfyUI's model folders (``--models-dir``, default: the runtime's
``models/``); a missing file is named with its download URL and target folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from diffbir_modules import downloads, weights  # plain Python: no ComfyUI import
from scripts import comfy_headless

REPO = comfy_headless.REPO
WORKFLOWS = REPO / "example_workflows"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}

# (task, version) -> example workflow file name (in example_workflows/)
WORKFLOW_FOR = {
    ("sr", "v2.1"): "DiffBIR v2.1 super-resolution (SwinIR).json",
    ("sr", "v2"): "DiffBIR v2 super-resolution (BSRNet).json",
    ("sr", "v1"): "DiffBIR v1 general.json",
    ("denoise", "v2"): "DiffBIR v2 denoising (SCUNet).json",
    ("denoise", "v1"): "DiffBIR v1 general.json",
    ("face", "v2.1"): "DiffBIR aligned face (v2.1).json",
    ("face", "v1"): "DiffBIR v1 aligned face.json",
    ("face_in_the_wild", "v2.1"): "DiffBIR faces in the wild (v2.1).json",
    ("face_in_the_wild", "v1"): "DiffBIR v1 faces in the wild.json",
}
VERSIONS = ("v2.1", "v2", "v1")  # newest first: a task's default
VERSION_HELP = "DiffBIR version (default: the newest the task has: v2.1, v2 for denoise)"


def default_version(task: str) -> str:
    """The newest version with a workflow for ``task``."""
    return next(v for v in VERSIONS if (task, v) in WORKFLOW_FOR)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, type=Path, help="folder for the restored images")
    parser.add_argument("--task", default="sr", choices=sorted({t for t, _ in WORKFLOW_FOR}))
    parser.add_argument("--version", default=None, choices=sorted(VERSIONS), help=VERSION_HELP)
    parser.add_argument("--upscale", type=float, default=None, help="output size / input size (default: workflow's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: workflow's)")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: workflow's)")
    parser.add_argument("--seed", type=int, default=231, help="sampling seed (official default 231)")
    parser.add_argument("--min-short-side", type=int, default=None,
                        help="stage-1 output short side at least this (official: 512; 0 turns it off)")
    parser.add_argument("--workflow", type=Path, default=None, help="run this UI-format workflow instead")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="ComfyUI models folder holding the weights (default: the runtime's models/)")
    parser.add_argument("--timeout", type=float, default=24 * 3600)
    return parser.parse_args(argv)


def input_images(path: Path) -> list[Path]:
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return images
    if not path.is_file():
        raise SystemExit(f"input {path} does not exist")
    return [path]


def choose_workflow(args) -> Path:
    if args.workflow:
        return args.workflow
    if args.version is None:
        args.version = default_version(args.task)
    name = WORKFLOW_FOR.get((args.task, args.version))
    if name is None:
        versions = sorted(v for t, v in WORKFLOW_FOR if t == args.task)
        raise SystemExit(f"task {args.task!r} has no {args.version} workflow; available versions: {versions}")
    path = WORKFLOWS / name
    if not path.exists():
        raise SystemExit(f"example workflow {path} is missing")
    return path


def ensure_weights(workflow: dict, models_dir: Path) -> bool:
    """Checks that every model file the workflow names (its loaders' ``properties.models``, the web
    UI's metadata) is in ``models_dir``; downloads missing ones when allowed (resumable, checksum
    verified), otherwise prints each missing file with its URL and the folder to put it in."""
    needed = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):
            continue
        for model in node.get("properties", {}).get("models", []):
            needed[(model["directory"], model["name"])] = model
    missing = [m for (folder, name), m in needed.items() if not (models_dir / folder / name).exists()]
    if not missing:
        return True
    allowed, why_not = downloads.downloads_allowed()
    failed = []
    for model in missing:
        entry = weights.by_filename(model["name"])
        if allowed and entry is not None:
            target = models_dir / model["directory"]
            target.mkdir(parents=True, exist_ok=True)
            try:
                downloads.fetch(entry, directory=str(target))
                continue
            except downloads.DownloadError as error:
                model = {**model, "error": str(error)}
        failed.append(model)
    if failed:
        print(f"DiffBIR: {len(failed)} model file(s) missing" + (f" ({why_not})" if why_not else "")
              + ". Download each and put it in the folder shown:", file=sys.stderr)
        for model in failed:
            print(f"  - {model['name']}\n      url:    {model['url']}\n"
                  f"      folder: {models_dir / model['directory']}", file=sys.stderr)
            if model.get("error"):
                print(f"      error:  {model['error']}", file=sys.stderr)
    return not failed


def patch_prompt(prompt: dict, image_name: str, prefix: str, args) -> dict:
    """Sets the run's image and options on the API-format prompt, by input name: the image on
    LoadImage, upscale on the stage-1 node, seed/steps/cfg wherever a node has them."""
    loaders = [n for n in prompt.values() if n["class_type"] == "LoadImage"]
    savers = [n for n in prompt.values() if n["class_type"] == "SaveImage"]
    if len(loaders) != 1 or not savers:
        raise SystemExit("the workflow needs exactly one LoadImage node and a SaveImage node")
    loaders[0]["inputs"]["image"] = image_name
    for saver in savers:
        saver["inputs"]["filename_prefix"] = prefix
    overrides = {"upscale": args.upscale, "steps": args.steps, "cfg": args.cfg,
                 "seed": args.seed, "noise_seed": args.seed, "min_short_side": args.min_short_side}
    for node in prompt.values():
        for name, value in overrides.items():
            if value is not None and name in node["inputs"] and not isinstance(node["inputs"][name], list):
                if name == "upscale" and _fed_by(prompt, node["inputs"].get("image"), "DiffBIRFaceDetectAlign"):
                    continue  # aligned face crops keep their size; the upscale is the whole image's
                node["inputs"][name] = value
        if node["class_type"] == "ImageScaleBy" and args.upscale is not None:
            node["inputs"]["scale_by"] = args.upscale  # faces are found on the image at its output size
    return prompt


def _fed_by(prompt: dict, link, class_type: str) -> bool:
    """Whether the input ``link`` ([node id, output]) comes from a node of ``class_type``."""
    return isinstance(link, list) and prompt.get(str(link[0]), {}).get("class_type") == class_type


def output_path(output: Path, image: Path, n: int, suffix: str, inputs: set[Path]) -> Path | None:
    """Where the n-th result of ``image`` goes; None when that would overwrite one of the inputs."""
    target = output / (f"{image.stem}_diffbir" + (f"_{n}" if n else "") + suffix)
    return None if target.resolve() in inputs else target


def write_atomically(source: Path, target: Path) -> None:
    """Copies ``source`` to ``target`` through a temporary file in the same folder and a rename, so an
    interrupted run never leaves a half-written image under the final name."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


class Progress:
    """One status line per node with its step progress, from the server's websocket messages."""

    def __init__(self, prompt: dict):
        self.titles = {k: v.get("_meta", {}).get("title", v["class_type"]) for k, v in prompt.items()}
        self.started = time.monotonic()

    def __call__(self, event, data):
        if event == "executing" and data.get("node"):
            print(f"\r  {time.monotonic() - self.started:7.1f} s  {self.titles.get(data['node'], data['node'])}"
                  + " " * 20, end="", flush=True)
        elif event == "progress":
            title = self.titles.get(data.get("node"), "")
            print(f"\r  {time.monotonic() - self.started:7.1f} s  {title}: {data['value']}/{data['max']}" + " " * 10,
                  end="", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    images = input_images(args.input)
    workflow_path = choose_workflow(args)
    workflow = comfy_headless.load_workflow(workflow_path)
    models_dir = args.models_dir or comfy_headless.comfyui_root() / "models"
    base = comfy_headless.make_base_directory(comfy_headless.scratch_base("diffbir-restore-"), models_dir)
    print(f"DiffBIR: {len(images)} image(s), workflow '{workflow_path.name}', models from {models_dir}")
    if not ensure_weights(workflow, Path(models_dir)):
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    inputs = {image.resolve() for image in images}
    failures = []
    with comfy_headless.ComfyServer(base) as server:
        object_info = server.object_info()
        for index, image in enumerate(images, 1):
            shutil.copy(image, base / "input" / image.name)
            prompt = patch_prompt(comfy_headless.workflow_to_prompt(workflow, object_info), image.name,
                                  f"restore_{index:05d}", args)
            print(f"[{index}/{len(images)}] {image}")
            try:
                entry = server.run_with_progress(prompt, Progress(prompt), timeout=args.timeout)
            except (comfy_headless.PromptRejected, comfy_headless.PromptFailed) as error:
                # One bad image does not stop the folder: reported here and in the summary.
                print(f"\n  failed: {error}", file=sys.stderr)
                failures.append(image)
                continue
            saved = [p for p in server.output_images(entry) if p.is_relative_to(base / "output")]  # no previews
            for n, produced in enumerate(saved):
                target = output_path(args.output, image, n, produced.suffix, inputs)
                if target is None:
                    print(f"\n  not written: the result would overwrite an input image in {args.output}; "
                          "choose another --output", file=sys.stderr)
                    if image not in failures:
                        failures.append(image)
                    continue
                write_atomically(produced, target)
                print(f"\n  -> {target}")
    if failures:
        print(f"DiffBIR: {len(failures)} of {len(images)} image(s) failed: "
              + ", ".join(str(p) for p in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
