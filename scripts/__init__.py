"""Command-line tools and the two ways to drive ComfyUI (headless server, in process). A package so
the batch engine (``python -m batch``) imports them by name."""

from pathlib import Path


def recorded_command(module: str, arguments: list[str], *path_options: str) -> str:
    """The command line a benchmark report records: the values of ``path_options`` by file name only, so
    that no report names where this machine keeps its files."""
    shown = (Path(a).name if previous in path_options else a for previous, a in zip(["", *arguments], arguments))
    return f"python -m {module} " + " ".join(shown)
