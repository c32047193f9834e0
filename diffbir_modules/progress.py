"""Progress and cancel inside one network call (ComfyUI's untiled VAE encode / decode, an untiled
stage-1 cleaner): a forward hook on each of the network's blocks moves the node's bar in the web UI
(``comfy.utils.ProgressBar``) and checks the Cancel button, so a long call shows it is alive and
stops between blocks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

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

    with _hooked(blocks, step):
        yield


@contextlib.contextmanager
def per_piece(pieces: Sequence[torch.nn.Module], images: int) -> Iterator[Callable[[], None]]:
    """For networks run one image per call: each of ``pieces`` advances the bar by one as it finishes,
    and the function yielded, called when an image is done, moves the bar to that image's end. Each
    image spans ``len(pieces) + 1`` steps (the last: the rest of the network after the last piece), so
    a piece the network skips or runs twice never moves the bar into the next image's share."""
    per_image = len(pieces) + 1
    bar = comfy.utils.ProgressBar(max(1, images * per_image))
    done = {"images": 0, "pieces": 0}

    def step(module, inputs, output):
        if done["pieces"] < len(pieces):
            done["pieces"] += 1
            bar.update(1)
        comfy.model_management.throw_exception_if_processing_interrupted()

    def image_done() -> None:
        done["images"] += 1
        done["pieces"] = 0
        bar.update_absolute(done["images"] * per_image)
        comfy.model_management.throw_exception_if_processing_interrupted()

    with _hooked(pieces, step):
        yield image_done


@contextlib.contextmanager
def _hooked(modules: Sequence[torch.nn.Module], step) -> Iterator[None]:
    """``step`` as a forward hook on each of ``modules`` while inside; cancel is checked on entry."""
    handles = [module.register_forward_hook(step) for module in modules]
    try:
        comfy.model_management.throw_exception_if_processing_interrupted()
        yield
    finally:
        for handle in handles:
            handle.remove()
