"""Progress and cancel for a network call we do not own (ComfyUI's untiled VAE encode / decode): a
forward hook on each of the network's blocks moves the node's bar in the web UI (``comfy.utils.
ProgressBar``) and checks the Cancel button, so a long call shows it is alive and stops between blocks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import comfy.model_management
import comfy.utils
import torch


@contextlib.contextmanager
def per_block(blocks: Sequence[torch.nn.Module], images: int) -> Iterator[None]:
    """While inside, each forward of one of ``blocks`` advances the bar by its batch size; the bar spans
    ``images`` passes through all of them (ComfyUI may split a batch into several forwards)."""
    bar = comfy.utils.ProgressBar(max(1, images * len(blocks)))

    def step(module, inputs, output):
        first = inputs[0] if inputs else output
        bar.update(first.shape[0] if isinstance(first, torch.Tensor) else 1)
        comfy.model_management.throw_exception_if_processing_interrupted()

    handles = [block.register_forward_hook(step) for block in blocks]
    try:
        comfy.model_management.throw_exception_if_processing_interrupted()
        yield
    finally:
        for handle in handles:
            handle.remove()
