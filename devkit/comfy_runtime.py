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


def restoration_models(checkpoint: str, irc_name: str) -> tuple:
    """(model, vae, control, (positive, negative)): the SD 2.x ``checkpoint`` loaded by ComfyUI's loader, a
    tiny random IRControlNet installed as ``irc_name`` and loaded by the pack's loader (each test module its
    own name, so no module gets another's cached control) and the prompts "a photo" / "blurry"."""
    from devkit import model_factory

    model, clip, vae = call_node("CheckpointLoaderSimple", checkpoint)[:3]
    name = model_factory.install_model("diffbir", model_factory.ircontrolnet_file("tiny", fmt="pth"), irc_name)
    control = call_node("DiffBIRIRControlNetLoader", name, "auto")[0]
    prompts = call_node("CLIPTextEncode", clip, "a photo")[0], call_node("CLIPTextEncode", clip, "blurry")[0]
    return model, vae, control, prompts


def conditioned(models: tuple, height: int, width: int, seed: int = 0) -> tuple:
    """(model, control, positive, negative, empty latent): the ``restoration_models`` applied to one random image
    of that size by DiffBIR Apply IRControlNet (strength 1 over the whole schedule, noise start, 64 px padding)."""
    import torch

    model, vae, control, (positive, negative) = models
    image = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(seed))
    return (model, control, *call_node("DiffBIRApplyIRControlNet", positive, negative, control, vae, image,
                                       1.0, 0.0, 1.0, "noise", "64"))
