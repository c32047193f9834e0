"""The faces-in-the-wild workflow (UI format, built by tools/workflows/faces.py) through a real
headless ComfyUI: detect & align -> restore the crops as one batch -> paste back onto the background.

Here the restorations are stand-ins made of stock nodes on the random SD 2.x test checkpoint
(chain="stock"). The shipped face workflows themselves (chain="diffbir") run in
test_end_to_end_faces.py and are checked against the node definitions in test_example_workflows.py."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devkit import face_data

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"


def workflow_tools():
    from tools.workflows import faces

    return faces


@pytest.mark.server
def test_faces_in_the_wild_workflow_runs_headless(comfy_server, sd2_tiny):
    from scripts import comfy_headless

    tools = workflow_tools()
    pixels = (face_data.astronaut()[0, ::2, ::2].numpy() * 255).round().astype(np.uint8)  # 256x256, one face
    Image.fromarray(pixels).save(comfy_server.base / "input" / "faces_wild_test.png")
    info = comfy_server.object_info()
    nodes = tools.faces_in_the_wild(chain="stock", image="faces_wild_test.png", detector="mtcnn",
                                    checkpoint=sd2_tiny, face_size=128, parse=False)
    workflow = tools.build(nodes, info)
    prompt = comfy_headless.workflow_to_prompt(workflow, info)
    save_id = next(node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage")
    entry = comfy_server.run(prompt, timeout=900)
    [path] = comfy_server.output_images(entry, save_id)
    result = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
    assert result.shape == (512, 512, 3)  # the background path upscales 2x
    upscaled = np.asarray(Image.fromarray(pixels).resize((512, 512), Image.BICUBIC)).astype(np.float64)
    changed = np.abs(result - upscaled).max(axis=-1) > 24
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 2000, "the restored face was not pasted"
    # only around the astronaut's face (box ~ x 181-268, y 62-172 at 512 px) did the picture change
    assert 140 < xs.mean() < 310 and 30 < ys.mean() < 220, (xs.mean(), ys.mean())
