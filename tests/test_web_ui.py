"""Every example workflow opens in ComfyUI's real web UI (comfyui-frontend-package 1.32.9, served by
the headless server) in headless Chromium: zero missing node types, every widget value as saved, and
the web UI's missing-models dialog naming the weights with their folders (from properties.models).
A screenshot of each lands in docs/images/workflows/ for the README.

Needs Debian's chromium package (.ci/run installs it). Without it the test is skipped, unless
DIFFBIR_REQUIRE_BROWSER=1 (set by CI), which turns the skip into a failure."""

import json
import os
import re
import time
from pathlib import Path

import browser
import pytest

from comfy_runtime import comfy_headless

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"
SHOTS = REPO / "docs" / "images" / "workflows"
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": False,
            "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.2, "Comfy.Workflow.ShowMissingModelsWarning": True}


LOAD_AND_LIST = """(async () => {
  await app.loadGraphData(WORKFLOW);
  return app.graph._nodes.map(n => ({id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
                                     values: (n.widgets || []).map(w => w.value)}));
})()"""
DIALOG_TEXT = "Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText).join('\\n')"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The web UI of a server of its own, with empty model folders (as for someone who was just sent
    the workflow)."""
    if browser.chromium_path() is None:
        if os.environ.get("DIFFBIR_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    base = comfy_headless.make_base_directory(tmp_path_factory.mktemp("web-ui"))
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS))
    with comfy_headless.ComfyServer(base) as server:
        b = browser.Browser(window=(2200, 1300))
        try:
            b.open(server.url, "!!(window.app && window.app.graph && window.LiteGraph)")
            yield b
        finally:
            b.close()


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removesuffix(".json")).strip("-")


@pytest.mark.server
@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_workflow_loads_in_web_ui(page, name):
    workflow = json.loads((EXAMPLES / name).read_text())
    nodes = page.evaluate(LOAD_AND_LIST.replace("WORKFLOW", json.dumps(workflow)))
    missing = sorted({n["type"] for n in nodes if not n["registered"]})
    assert not missing, f"missing node types in the web UI: {missing}"
    assert len(nodes) == len(workflow["nodes"])
    shown = {str(n["id"]): n["values"] for n in nodes}  # newer frontends give string ids
    for saved in workflow["nodes"]:
        values = saved.get("widgets_values") or []
        assert shown[str(saved["id"])][:len(values)] == values, (saved["type"], shown[str(saved["id"])], values)
    # the web UI read the model metadata: its missing-models dialog names each file and folder
    expected = {(m["directory"], m["name"]) for n in workflow["nodes"] for m in n["properties"].get("models", [])}
    deadline = time.monotonic() + 20
    dialog = ""
    while expected and time.monotonic() < deadline and "Missing Models" not in dialog:
        time.sleep(0.5)
        dialog = page.evaluate(DIALOG_TEXT)
    for directory, filename in expected:
        assert f"{directory} / {filename}" in dialog, f"{filename} not offered in the missing-models dialog"
    page.evaluate("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())")
    page.evaluate("(async () => { await app.extensionManager.command.execute('Comfy.Canvas.FitView'); })()")
    time.sleep(1.0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(SHOTS / f"{slug(name)}.png")
