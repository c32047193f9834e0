"""A real ComfyUI runtime inside the test process: scripts/comfy_inprocess.py (shared with the batch
workers), plus the helpers only tests use (calling one node directly).

``start()`` imports ComfyUI from the tree scripts/setup.sh prepared, with ``--cpu`` and a scratch
``--base-directory`` whose custom_nodes/ links this pack, then loads the built-in and custom nodes
exactly as ``main.py`` does. ``run_prompt()`` validates an API-format graph and executes it with
ComfyUI's own ``PromptExecutor``. ``pack_module()`` reaches the pack's modules as ComfyUI loaded
them (one copy only: ComfyUI names a custom node package by its path).
"""

from __future__ import annotations

from pathlib import Path

from scripts import comfy_headless
from scripts.comfy_inprocess import PromptError, _state, pack_module, prepare_imports, run_prompt, start

REPO = Path(__file__).resolve().parent.parent

__all__ = ["PromptError", "call_node", "comfy_headless", "node_class", "pack_module", "prepare_imports", "run_prompt",
           "start"]


def node_class(node_id: str):
    return _state["nodes"].NODE_CLASS_MAPPINGS[node_id]


def call_node(node_id: str, *args, **kwargs) -> tuple:
    """One node's function called directly under inference mode (V3 ``execute`` or the V1
    ``FUNCTION``), as the executor would; returns its outputs."""
    import torch

    cls = node_class(node_id)
    with torch.inference_mode():
        if hasattr(cls, "define_schema"):
            return cls.execute(*args, **kwargs).result
        return getattr(cls(), cls.FUNCTION)(*args, **kwargs)
