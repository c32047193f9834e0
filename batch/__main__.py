"""Restore a folder, a zip / tar archive or a video with a shipped DiffBIR workflow, in this process
or across a Ray cluster. Run from the repository root (the folder holding this package):

    .venv/bin/python -m batch --input scans/ --output restored/ --task sr --version v2.1
    .venv/bin/python -m batch --input scans.zip --output restored/ --ray            # a local Ray cluster
    .venv/bin/python -m batch --input film.mp4 --output restored/ --ray auto        # the running cluster

Outputs are PNG files mirroring the input's names (a video's frames in <name>.frames/, then the
video itself with the original frame rate and audio). A manifest in the output folder
(diffbir-manifest.sqlite) records every item; running the same command again restores only what
is missing or failed."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scripts import comfy_headless
from scripts.restore import VERSION_HELP, VERSIONS, WORKFLOW_FOR, choose_workflow, ensure_weights

from . import engine


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m batch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--input", required=True, type=Path,
                        help="a folder, a .zip / .tar archive, a video or an image")
    parser.add_argument("--output", required=True, type=Path, help="folder for the restored images and the manifest")
    parser.add_argument("--task", default="sr", choices=sorted({t for t, _ in WORKFLOW_FOR}))
    parser.add_argument("--version", default=None, choices=sorted(VERSIONS), help=VERSION_HELP)
    parser.add_argument("--upscale", type=float, default=None, help="output size / input size (default: workflow's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: workflow's)")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: workflow's)")
    parser.add_argument("--seed", type=int, default=231,
                        help="run seed; each item's seed is derived from it and the item's name (a video's frames "
                             "share one)")
    parser.add_argument("--min-short-side", type=int, default=None,
                        help="stage-1 output short side at least this (official: 512; 0 turns it off)")
    parser.add_argument("--workflow", type=Path, default=None, help="run this UI-format workflow instead")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="ComfyUI models folder holding the weights (default: the runtime's models/)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run on Ray: alone, a new local cluster (or RAY_ADDRESS's); 'auto' or host:port, a "
                             "running one")
    parser.add_argument("--workers", type=int, default=None,
                        help="Ray workers (default: one per GPU; one CPU worker when the cluster has no GPU)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    workflow_path = choose_workflow(args)
    workflow = comfy_headless.load_workflow(workflow_path)
    models_dir = args.models_dir or comfy_headless.comfyui_root() / "models"
    if not ensure_weights(workflow, Path(models_dir)):
        return 2
    settings = {"upscale": args.upscale, "steps": args.steps, "cfg": args.cfg, "min_short_side": args.min_short_side}
    worker_kwargs = {"workflow": workflow, "settings": settings, "models_dir": str(models_dir)}
    print(f"DiffBIR batch: {args.input} -> {args.output}, workflow '{workflow_path.name}', models from {models_dir}")
    started = time.monotonic()
    if args.ray is None:
        from .workers import LocalPool

        pool = LocalPool(worker_kwargs)
    else:
        from .workers import RayPool

        try:
            pool = RayPool(worker_kwargs, address=args.ray, workers=args.workers)
        except ValueError as error:  # a --workers the cluster cannot hold
            print(f"DiffBIR batch: {error}", file=sys.stderr)
            return 2
        print(f"Ray: {pool.size} worker(s): {', '.join(pool.labels)}")
    try:
        summary = engine.run(args.input, args.output, pool, args.seed)
    finally:
        pool.close()
    print(f"restored {summary.restored}, already done {summary.skipped}, failed {len(summary.failed)}, "
          f"requeued after a lost worker {summary.requeued}, in {time.monotonic() - started:.0f} s")
    if summary.failed:
        print(f"{len(summary.failed)} item(s) could not be restored (also in {args.output}/diffbir-manifest.sqlite, "
              "status 'failed'); rerun to retry them:", file=sys.stderr)
        for name, error in summary.failed.items():
            print(f"  - {name}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
