"""Every example workflow (UI format, what users open in the web UI) is up to date with its
description in tools/workflows/ and runs end to end through a real headless ComfyUI, with random
weights saved under the published file names and in the published layouts. The runs use small
sizes and 2 steps (set on the converted prompt) so they stay fast on a CPU; everything else is
the workflow as shipped."""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devkit import face_data
from scripts import comfy_headless

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"
ALL = sorted(p.name for p in EXAMPLES.glob("*.json"))


def tool(name):
    return importlib.import_module(f"tools.workflows.{name}")


def shrink(prompt: dict) -> dict:
    """Small sizes and 2 steps; MTCNN (offline weights) instead of RetinaFace; no ParseNet."""
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if "steps" in inputs:
            inputs["steps"] = 2
        if kind == "DiffBIRDegradationRemoval":
            inputs["min_short_side"] = 0
            inputs["upscale"] = min(float(inputs["upscale"]) if not isinstance(inputs["upscale"], list) else 2.0, 2.0)
        if kind == "DiffBIRFaceDetectorLoader":
            inputs["detector"] = "mtcnn"
        if kind == "DiffBIRFaceDetectAlign":
            inputs["face_size"] = 128
        if kind == "DiffBIRFacePasteBack":
            inputs.pop("face_parser", None)
        if kind == "DiffBIRPresetLoader":
            inputs["download_missing"] = False
    return prompt


def without_core_spare_outputs(workflow: dict) -> dict:
    """The workflow without the unconnected outputs of core nodes: those belong to the ComfyUI release
    that builds the file (newer ones gave SaveImage an IMAGE output), and the web UI takes them from
    the running release when it loads a workflow. Our own nodes' outputs are compared in full."""
    nodes = []
    for node in workflow["nodes"]:
        if not node["type"].startswith("DiffBIR"):
            node = {**node, "outputs": [o for o in node["outputs"] if o.get("links")]}
        nodes.append(node)
    return {**workflow, "nodes": nodes}


@pytest.mark.parametrize("name", ALL)
def test_example_is_up_to_date(comfy_server, name):
    info = comfy_server.object_info()
    saved = json.loads((EXAMPLES / name).read_text())
    title = name.removesuffix(".json")
    built = {**tool("general").workflows(info), **tool("faces").workflows(info)}
    assert title in built, f"{name} has no description in tools/workflows/"
    assert without_core_spare_outputs(built[title]) == without_core_spare_outputs(saved), (
        f"{name} is out of date: run python -m tools.workflows.general / tools.workflows.faces")
    for node in saved["nodes"]:  # shared workflows name their models for the web UI
        if node["type"] in ("CheckpointLoaderSimple", "DiffBIRIRControlNetLoader", "DiffBIRStage1Loader",
                            "DiffBIRPresetLoader"):
            models = node["properties"].get("models")
            assert models and all(m["url"].startswith("https://") and m["directory"] for m in models), node["type"]


@pytest.mark.server
@pytest.mark.parametrize("name", ALL)
def test_example_runs_headless(comfy_server, published_models, name):
    workflow = json.loads((EXAMPLES / name).read_text())
    info = comfy_server.object_info()
    prompt = shrink(comfy_headless.workflow_to_prompt(workflow, info))
    [loader] = [n for n in prompt.values() if n["class_type"] == "LoadImage"]
    if "face" in name:
        pixels = (face_data.astronaut()[0, ::2, ::2].numpy() * 255).round().astype(np.uint8)  # 256 px, a face
        if "aligned" in name:
            pixels = pixels[:128, 64:192]
    else:
        pixels = (np.random.default_rng(0).random((24, 40, 3)) * 255).astype(np.uint8)
    image_name = f"example_{abs(hash(name)) % 10**8}.png"
    Image.fromarray(pixels).save(comfy_server.base / "input" / image_name)
    loader["inputs"]["image"] = image_name
    save_id = next(k for k, n in prompt.items() if n["class_type"] == "SaveImage")
    entry = comfy_server.run(prompt, timeout=1200)
    [path] = comfy_server.output_images(entry, save_id)
    out = np.asarray(Image.open(path).convert("RGB"))
    upscaling = ("super-resolution", "general", "LoRA", "wild", "large images", "guidance sweep")
    scale = 2 if any(word in name for word in upscaling) else 1
    h, w = pixels.shape[0] * scale, pixels.shape[1] * scale
    if "sweep" in name:  # one grid: the restoration at each of the 5 scales, side by side under labels
        assert out.shape[1] >= 5 * w and h < out.shape[0] <= h + 48, (out.shape, pixels.shape)
    else:
        assert out.shape[:2] == (h, w), (out.shape, pixels.shape)
    assert out.std() > 1.0, "constant output"
