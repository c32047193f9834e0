"""Command-line tools and the two ways to drive ComfyUI (headless server, in process). A package so
the batch engine (``python -m batch``) imports them by name."""

import threading
from pathlib import Path


def recorded_command(module: str, arguments: list[str], *path_options: str) -> str:
    """The command line a benchmark report records: the values of ``path_options`` by file name only, so
    that no report names where this machine keeps its files."""
    shown = (Path(a).name if previous in path_options else a for previous, a in zip(["", *arguments], arguments))
    return f"python -m {module} " + " ".join(shown)


def in_worker_thread(run, main_thread: bool = False):
    """What ``run()`` returns, run in a thread of its own as ComfyUI's server runs prompts (main.py's
    prompt_worker): on Linux, glibc gives such a thread its own malloc arena of 64 MiB heaps, so large
    tensors are mapped and zero-filled afresh where the main thread would reuse its heap. An error is
    raised again in the caller's thread. ``main_thread``: run it here instead."""
    if main_thread:
        return run()
    result = {}

    def target():
        try:
            result["value"] = run()
        except BaseException as error:
            result["error"] = error

    worker = threading.Thread(target=target, name="benchmark-worker")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
