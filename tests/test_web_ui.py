"""Every example workflow opens in ComfyUI's real web UI (the frontend package of the ComfyUI under
test: 1.32.9 with 0.3.75, 1.49.6 with 0.33) in headless Chromium: zero missing node types, every
widget value as saved, and the web UI's list of missing models naming the weights with their folders
(from properties.models): a dialog in older frontends, the errors panel in newer ones.
A screenshot of each lands in .cache/screenshots/comfyui-VERSION/ (DIFFBIR_SCREENSHOTS_DIR=
docs/images/workflows refreshes the README's).

Needs Debian's chromium package (.ci/run installs it). Without it the test is skipped, unless
DIFFBIR_REQUIRE_BROWSER=1 (set by CI), which turns the skip into a failure."""

import json
import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

import browser
from scripts import comfy_headless

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": False,
            "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.2, "Comfy.Workflow.ShowMissingModelsWarning": True}


LOAD_AND_LIST = """(async () => {
  await app.loadGraphData(WORKFLOW);
  return app.graph._nodes.map(n => ({id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
                                     values: (n.widgets || []).map(w => w.value)}));
})()"""
# Older frontends open a "Missing Models" dialog; newer ones show an error toast whose "View details"
# opens an errors panel with a "Missing Models" section. Returns the text of whichever is there.
MISSING_MODELS_TEXT = """(() => {
  const dialogs = Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText).join('\\n');
  if (dialogs.includes('Missing Models')) return JSON.stringify({kind: 'dialog', text: dialogs});
  const details = Array.from(document.querySelectorAll('button')).find(b => /View details/.test(b.innerText));
  if (details) details.click();
  const text = document.body.innerText;
  const start = text.indexOf('Missing Models');
  if (start < 0) return JSON.stringify({kind: '', text: ''});
  const end = text.indexOf('Missing Inputs', start);
  return JSON.stringify({kind: 'panel', text: text.slice(start, end < 0 ? undefined : end)});
})()"""
# Every node's box on the canvas (title bar included), after the web UI has sized the nodes for their
# widgets and image previews.
NODE_BOXES = """(() => app.graph._nodes.map(n => {
  const title = n.constructor.title_mode === LiteGraph.NO_TITLE ? 0 : LiteGraph.NODE_TITLE_HEIGHT;
  return {id: n.id, type: n.type, title: n.title, box: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]};
}))()"""
# The nodes' bounding box in screenshot pixels (canvas position + (graph position + offset) x scale).
GRAPH_BOX_ON_SCREEN = """(() => {
  const rect = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds, ratio = window.devicePixelRatio || 1;
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const xs = app.graph._nodes.flatMap(n => [n.pos[0], n.pos[0] + n.size[0]]);
  const ys = app.graph._nodes.flatMap(n => [n.pos[1] - title, n.pos[1] + n.size[1]]);
  const sx = x => (rect.left + (x + ds.offset[0]) * ds.scale) * ratio;
  const sy = y => (rect.top + (y + ds.offset[1]) * ds.scale) * ratio;
  return [sx(Math.min(...xs)), sy(Math.min(...ys)), sx(Math.max(...xs)), sy(Math.max(...ys))];
})()"""
GRAPH_BOX_KEY = "diffbir-graph-box"
CLOSE_MISSING_MODELS = "document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())"


def screenshot_dir() -> Path:
    if os.environ.get("DIFFBIR_SCREENSHOTS_DIR"):
        return Path(os.environ["DIFFBIR_SCREENSHOTS_DIR"])
    version = (comfy_headless.comfyui_root() / "comfyui_version.py").read_text().split('"')[1]
    return REPO / ".cache" / "screenshots" / f"comfyui-{version}"


def offered(text: str, directory: str, filename: str) -> bool:
    """The file is listed with its folder: "folder / file" (dialog) or the file above its folder (panel)."""
    return f"{directory} / {filename}" in text or f"{filename}\n{directory}" in text


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The web UI of a server of its own, with empty model folders (as for someone who was just sent
    the workflow)."""
    if browser.chromium_path() is None:
        if os.environ.get("DIFFBIR_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    base = comfy_headless.make_base_directory(tmp_path_factory.mktemp("web-ui"))
    # The workflows' input images, in the shape that makes the tallest preview: a portrait photo.
    for name in ("example.png", "face.png"):
        Image.new("RGB", (600, 900), (120, 90, 60)).save(base / "input" / name)
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
    # The web UI read the model metadata. Older frontends list every file of properties.models in a
    # dialog; newer ones list, in their errors panel, the files that a loader's widget names (the
    # preset loader names none: it downloads what is missing itself when it runs).
    expected = {(m["directory"], m["name"]) for n in workflow["nodes"] for m in n["properties"].get("models", [])}
    named = {(m["directory"], m["name"]) for n in workflow["nodes"] for m in n["properties"].get("models", [])
             if m["name"] in (n.get("widgets_values") or [])}
    deadline = time.monotonic() + 20
    listing = {"kind": "", "text": ""}
    while expected and time.monotonic() < deadline:
        listing = json.loads(page.evaluate(MISSING_MODELS_TEXT))
        wanted = expected if listing["kind"] == "dialog" else named
        if listing["kind"] and all(offered(listing["text"], *e) for e in wanted):
            break
        time.sleep(0.5)
    wanted = expected if listing["kind"] == "dialog" else named
    assert listing["kind"] or not named, "the web UI listed no missing models"
    for directory, filename in wanted:
        assert offered(listing["text"], directory, filename), f"{filename} not offered:\n{listing['text']}"
    page.evaluate(CLOSE_MISSING_MODELS)
    page.evaluate("(async () => { await app.extensionManager.command.execute('Comfy.Canvas.FitView'); })()")
    time.sleep(1.0)
    shots = screenshot_dir()
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / f"{slug(name)}.png"
    page.screenshot(shot)
    # Where the nodes are on the screenshot, for the template thumbnails (tools/workflows/thumbnails.py)
    box = page.evaluate(GRAPH_BOX_ON_SCREEN)
    assert box[2] - box[0] > 200 and box[3] - box[1] > 100, box
    info = PngImagePlugin.PngInfo()
    info.add_text(GRAPH_BOX_KEY, ",".join(str(round(v)) for v in box))
    Image.open(shot).save(shot, pnginfo=info)


def overlaps(a: list, b: list) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.server
@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_workflow_nodes_do_not_overlap(page, name):
    """With the input image loaded as a tall portrait (the largest preview), no node box covers another."""
    page.evaluate(LOAD_AND_LIST.replace("WORKFLOW", (EXAMPLES / name).read_text()))
    page.evaluate(CLOSE_MISSING_MODELS)
    deadline = time.monotonic() + 10  # previews load asynchronously; the web UI then resizes the node
    while True:
        previews = page.evaluate("app.graph._nodes.filter(n => n.type === 'LoadImage' && n.imgs && n.imgs.length)"
                                 ".length")
        if previews or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert previews, "the Load Image preview did not show"
    time.sleep(0.5)
    page.evaluate("app.graph.setDirtyCanvas(true, true); app.canvas.draw(true, true)")
    boxes = page.evaluate(NODE_BOXES)
    hits = [(a["title"] or a["type"], b["title"] or b["type"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if overlaps(a["box"], b["box"])]
    assert not hits, f"overlapping nodes: {hits}"
    # Stage groups (where a workflow has them) stand apart, each around its own nodes.
    groups = page.evaluate("app.graph._groups.map(g => ({title: g.title,"
                           " box: Array.from(g.boundingRect || g._bounding)}))")
    hits = [(a["title"], b["title"]) for i, a in enumerate(groups) for b in groups[i + 1:]
            if overlaps(a["box"], b["box"])]
    assert not hits, f"overlapping groups: {hits}"
    for node in boxes:
        inside = [g["title"] for g in groups if overlaps(node["box"], g["box"])]
        assert not groups or len(inside) == 1, (node["title"] or node["type"], inside)


@pytest.mark.server
def test_template_browser_lists_every_workflow_with_its_thumbnail(page):
    """The template browser asks the server for /workflow_templates and shows
    /api/workflow_templates/<pack>/<workflow>.jpg as each card's picture (both frontends)."""
    listing = json.loads(page.evaluate("fetch('/api/workflow_templates').then(r => r.text())"))
    [(pack, names)] = [(k, v) for k, v in listing.items() if "DiffBIR v1 general" in v]
    assert sorted(names) == sorted(p.stem for p in EXAMPLES.glob("*.json"))
    for name in names:
        served = json.loads(page.evaluate(
            f"fetch('/api/workflow_templates/{pack}/' + encodeURIComponent({json.dumps(name)}) + '.jpg')"
            ".then(async r => JSON.stringify({status: r.status, type: r.headers.get('content-type'),"
            " size: (await r.arrayBuffer()).byteLength}))"))
        assert served["status"] == 200 and served["type"] == "image/jpeg" and served["size"] > 5000, (name, served)


# -- finding the nodes --------------------------------------------------------------------------------
PACK_NODES = """(() => Object.values(LiteGraph.registered_node_types)
  .filter(t => t.nodeData && String(t.nodeData.python_module || '').includes('comfyui-diffbir'))
  .map(t => ({type: t.type, category: t.nodeData.category, display: t.nodeData.display_name})))()"""
OUTPUT_LABELS = """(() => { const n = LiteGraph.createNode('DiffBIRDegradationRemoval');
  return n.outputs.map(o => o.label || o.localized_name || o.name); })()"""
# the search box's result rows: PrimeVue autocomplete options (frontend 1.32), role=option rows (1.49)
SEARCH_OPTIONS = ("JSON.stringify(Array.from(document.querySelectorAll('.p-autocomplete-option, [role=option]'))"
                  ".map(e => e.innerText.split('\\n')[0].trim()))")
TOGGLE_NODE_LIBRARY = ("(async () => { await app.extensionManager.command.execute("
                       "'Workspace.ToggleSidebarTab.node-library'); })()")


def ui_screenshot(page, name: str) -> Path:
    """A screenshot of the web UI for the docs: .cache/screenshots/comfyui-VERSION/web-ui/, or
    DIFFBIR_UI_SCREENSHOTS_DIR (e.g. docs/images/web-ui/comfyui-VERSION)."""
    folder = Path(os.environ.get("DIFFBIR_UI_SCREENSHOTS_DIR") or screenshot_dir() / "web-ui")
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(folder / f"{name}.png")
    return folder / f"{name}.png"


def comfyui_version() -> tuple:
    text = (comfy_headless.comfyui_root() / "comfyui_version.py").read_text().split('"')[1]
    return tuple(int(v) for v in text.split("."))


def click(page, x: int, y: int, count: int = 1) -> None:
    for kind in ("mousePressed", "mouseReleased"):
        page.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": count})


def search(page, words: str) -> list[str]:
    """Types ``words`` into the node search box (opened by a double click on the empty canvas) and
    returns the titles it lists."""
    page.evaluate("app.graph.clear()")
    page.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Escape", "code": "Escape",
                                         "windowsVirtualKeyCode": 27})
    page.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Escape", "code": "Escape",
                                         "windowsVirtualKeyCode": 27})
    time.sleep(0.5)
    click(page, 900, 600)
    click(page, 900, 600, count=2)
    deadline = time.monotonic() + 10
    while not page.evaluate("!!document.querySelector('.p-autocomplete-input, input[role=combobox]')"):
        assert time.monotonic() < deadline, "the node search box did not open"
        time.sleep(0.25)
    page.call("Input.insertText", {"text": words})
    time.sleep(1.5)  # the box filters as one types
    return json.loads(page.evaluate(SEARCH_OPTIONS))


@pytest.mark.server
def test_pack_nodes_form_one_diffbir_category_tree(page):
    nodes = page.evaluate(PACK_NODES)
    assert len(nodes) >= 30, nodes
    outside = [(n["type"], n["category"]) for n in nodes if not n["category"].startswith("DiffBIR/")]
    assert not outside, f"pack nodes outside the DiffBIR/ tree: {outside}"
    # the node library, with the DiffBIR tree open, for the docs
    page.evaluate(TOGGLE_NODE_LIBRARY)
    time.sleep(1.0)
    page.evaluate("(() => { const box = document.querySelector('.node-lib-search-box input, "
                  "[placeholder*=\"Search\"]'); if (box) { box.focus(); } })()")
    page.call("Input.insertText", {"text": "DiffBIR"})
    time.sleep(1.5)
    ui_screenshot(page, "node-library-diffbir")
    page.evaluate(TOGGLE_NODE_LIBRARY)


@pytest.mark.server
def test_degradation_removal_outputs_are_named(page):
    labels = page.evaluate(OUTPUT_LABELS)
    assert labels == ["cleaned", "width", "height"], labels
    page.evaluate("app.graph.clear(); const n = LiteGraph.createNode('DiffBIRDegradationRemoval'); n.pos = [300, 200];"
                  " app.graph.add(n); app.canvas.ds.scale = 1.4; app.canvas.ds.offset = [0, 0];"
                  " app.graph.setDirtyCanvas(true, true)")
    time.sleep(0.5)
    ui_screenshot(page, "degradation-removal-node")


DEGRADATION_REMOVAL_TITLE = "DiffBIR Restore / Upscale: Degradation Removal (stage 1)"


@pytest.mark.server
@pytest.mark.parametrize("words", ["restore", "upscale", "face"])
def test_search_finds_degradation_removal(page, words):
    titles = search(page, words)
    ui_screenshot(page, f"search-{words}")
    page.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Escape", "code": "Escape",
                                         "windowsVirtualKeyCode": 27})
    if words not in DEGRADATION_REMOVAL_TITLE.lower() and comfyui_version() < (0, 4):
        # frontend 1.32.9 matches node ids and display names only: the aliases cannot reach it there,
        # so the words users type most are in the display name itself
        pytest.xfail(f"ComfyUI {comfyui_version()}: the web UI's search ignores search aliases; listed: {titles}")
    assert DEGRADATION_REMOVAL_TITLE in titles, titles
