"""Workflows saved with an earlier release keep loading: tests/saved_workflows/<release>/ holds the
example workflows as that release shipped them, in the web UI's format (*.json, widget values by
position) and in the API format (api/*.json, inputs by name, what scripts POST to /prompt). Each is
checked by ComfyUI's own prompt validation against the nodes loaded now (node ids, input names,
types, combo values, ranges), with random-weight stand-ins under the published file names. Nothing
is executed: running the shipped examples is tests/test_example_workflows.py.

Never edit a saved file to make this pass: a failure means a change breaks users' saved workflows."""

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import comfy_headless
from scripts.comfy_inprocess import object_info

SAVED = Path(__file__).parent / "saved_workflows"
UI_FILES = sorted(SAVED.glob("*/*.json"))
API_FILES = sorted(SAVED.glob("*/api/*.json"))
IMAGE_NAME = "saved_workflow_input.png"


@pytest.fixture(scope="module")
def input_image(comfy):
    """An image in the in-process runtime's input folder, for every LoadImage of the saved files."""
    import folder_paths

    path = Path(folder_paths.get_input_directory()) / IMAGE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return IMAGE_NAME


def validate(prompt: dict, image: str) -> None:
    import execution

    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image
    valid, error, _, node_errors = asyncio.run(execution.validate_prompt("saved-workflow", prompt, None))
    # ComfyUI calls a prompt valid when one of its outputs is; every output must be here
    assert valid and not node_errors, f"{error}\n{json.dumps(node_errors, indent=1)}"


def test_every_release_has_both_formats():
    assert UI_FILES and len(API_FILES) == len(UI_FILES)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_saved_ui_workflow_loads(comfy, published_models, input_image, path):
    prompt = comfy_headless.workflow_to_prompt(json.loads(path.read_text()), object_info())
    validate(prompt, input_image)


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: f"{p.parents[1].name}/api/{p.name}")
def test_saved_api_prompt_loads(comfy, published_models, input_image, path):
    validate(json.loads(path.read_text()), input_image)
