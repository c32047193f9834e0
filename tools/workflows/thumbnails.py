"""Template-browser thumbnails: ``example_workflows/<workflow>.jpg`` next to each workflow, the name the
web UI's template browser asks for (``/api/workflow_templates/<pack>/<workflow>.jpg``). Each is cut
from the web UI screenshot that tests/test_web_ui.py saves of the workflow (the node graph only, without
the web UI around it) and scaled down.

    DIFFBIR_SCREENSHOTS_DIR=docs/images/workflows ./scripts/test.sh tests/test_web_ui.py
    .venv/bin/python -m tools.workflows.thumbnails [--screenshots docs/images/workflows]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
WIDTH = 512  # px; the template cards show about 300 px
GRAPH_BOX_KEY = "diffbir-graph-box"  # written by tests/test_web_ui.py


def slug(name: str) -> str:
    """The screenshot's file name for a workflow (as tests/test_web_ui.py names it)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removesuffix(".json")).strip("-")


def graph_region(shot: Image.Image) -> Image.Image:
    """The part of the screenshot that holds the nodes: tests/test_web_ui.py stores their box (screen
    pixels) in the PNG as text."""
    box = shot.text.get(GRAPH_BOX_KEY) if hasattr(shot, "text") else None
    if not box:
        raise ValueError(f"{shot.filename} has no {GRAPH_BOX_KEY!r}: take the screenshots with tests/test_web_ui.py")
    x0, y0, x1, y1 = (int(v) for v in box.split(","))
    pad = 12
    return shot.crop((max(0, x0 - pad), max(0, y0 - pad), min(shot.width, x1 + pad), min(shot.height, y1 + pad)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", default=str(REPO / "docs" / "images" / "workflows"))
    parser.add_argument("--out", default=str(REPO / "example_workflows"))
    args = parser.parse_args(argv)
    for workflow in sorted(Path(args.out).glob("*.json")):
        shot = Path(args.screenshots) / f"{slug(workflow.name)}.png"
        region = graph_region(Image.open(shot))
        height = round(region.height * WIDTH / region.width)
        thumb = region.convert("RGB").resize((WIDTH, height), Image.Resampling.LANCZOS)
        target = workflow.with_suffix(".jpg")
        thumb.save(target, quality=85, optimize=True)
        print(f"wrote {target} ({WIDTH}x{height})")


if __name__ == "__main__":
    main()
