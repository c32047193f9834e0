"""Adds the web UI's model metadata (properties.models: file name, URL, model folder) to the loader nodes
of UI-format workflow files, from the pack's weights catalogue, so the ComfyUI frontend can name (and,
for .safetensors on Hugging Face, download) the missing files when someone opens a shared workflow.

    .venv/bin/python -m scripts.stamp_workflow_models example_workflows/*.json        # rewrite in place
    .venv/bin/python -m scripts.stamp_workflow_models --check example_workflows/*.json  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from diffbir_modules.weights import stamp_workflow_models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report files whose metadata is missing or stale")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        workflow = json.loads(path.read_text())
        stamped = copy.deepcopy(workflow)
        changed = stamp_workflow_models(stamped)
        if changed:
            stale.append(path)
            if not args.check:
                path.write_text(json.dumps(stamped, indent=2) + "\n")
            print(f"{path}: {changed} node(s) {'need' if args.check else 'got'} model metadata")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
