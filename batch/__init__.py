"""Batch restoration of folders, zip / tar archives and videos with a shipped DiffBIR workflow,
in one process or across a Ray cluster (``python -m batch --help``).

Separate from the pack: ComfyUI never imports this package, so Ray and PyAV stay optional extras
(requirements-scale.txt). Modules: sources (what to restore), manifest (what is done), seeds,
video, workers (one in-process ComfyUI each; local or Ray actors), engine (the run loop)."""
