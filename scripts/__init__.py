"""Command-line tools and the two ways to drive ComfyUI (headless server, in process). A package so
the batch engine (``python -m batch``) imports them by name."""
