"""Stage 1 as the node runs it: the model through ComfyUI's model management (loaded fully,
offloaded afterwards), the memory estimate, a progress bar and cancel, the out-of-memory fallback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch

from .. import comfy_compat
from .architectures import Cleaner, progress_pieces
from .memory import fit_to_memory, run_with_fallback
from .rules import Settings, resolve_rules
from .running import run_batch, tile_count, validate_image
from .sizes import Plan, plan

log = logging.getLogger(__name__)


def memory_estimate(cleaner: Cleaner, pixels: int, element_size: int = 4) -> int:
    """Bytes of activations for a model input of ``pixels`` pixels, with ComfyUI's upscale-node heuristic
    (384 bytes per input value and unit of scale). The weights are not in it: ``load_models_gpu``
    counts them itself on top of its ``memory_required``."""
    return int(pixels * 3 * element_size * max(cleaner.scale, 1) * 384.0)


@contextlib.contextmanager
def _progress(the_plan: Plan, settings: Settings, cleaner: Cleaner,
              images: int) -> Iterator[Callable[[int, int], None]]:
    """The ``on_tile`` callback for ``run_batch``: tiled, a bar step and a cancel check per tile;
    untiled, a step and a check per block of the network (``progress_pieces``) as the call runs."""
    import comfy.model_management as mm
    import comfy.utils

    from .. import progress

    if the_plan.tiled:
        bar = comfy.utils.ProgressBar(tile_count(the_plan, settings) * images)

        def on_tile(done: int, total: int) -> None:
            bar.update(1)
            mm.throw_exception_if_processing_interrupted()

        yield on_tile
        return
    with progress.per_piece(progress_pieces(cleaner.module), images) as image_done:
        yield lambda done, total: image_done()


def run_in_comfy(images: torch.Tensor, descriptor, settings: Settings, offload: bool = True) -> tuple[torch.Tensor,
                                                                                                        Plan]:
    """The node's work: the model on ComfyUI's device through its model management (a ModelPatcher,
    loaded fully, offloaded afterwards), a progress bar and cancel (see ``_progress``), and the
    out-of-memory fallback."""
    import comfy.model_management as mm

    cleaner = Cleaner.from_spandrel(descriptor)
    validate_image(images)
    patcher = comfy_compat.upscale_model_patcher(descriptor)
    device = patcher.load_device
    dtype = next(cleaner.module.parameters()).dtype
    rules = resolve_rules(settings.rules, cleaner)

    def attempt(current: Settings) -> tuple[torch.Tensor, Plan]:
        the_plan = plan(images.shape[1], images.shape[2], rules, cleaner.scale, current)
        largest = (current.tile_size ** 2) if the_plan.tiled else the_plan.model_input[0] * the_plan.model_input[1]
        mm.load_models_gpu([patcher], memory_required=memory_estimate(cleaner, largest), force_full_load=True)
        # ComfyUI has unloaded what it could for the estimate; tile if the image still does not fit
        free = mm.get_free_memory(device)
        fitted = fit_to_memory(current, the_plan, cleaner, free, lambda pixels: memory_estimate(cleaner, pixels))
        if fitted != current:
            log.warning("DiffBIR stage 1: a %dx%d input to %s needs about %.1f GiB, more than the %.1f GiB free; "
                        "running it in %d px tiles (stride %d)", the_plan.model_input[1], the_plan.model_input[0],
                        cleaner.name, memory_estimate(cleaner, largest) / 2**30, free / 2**30, fitted.tile_size,
                        fitted.tile_stride)
            current = fitted
            the_plan = plan(images.shape[1], images.shape[2], rules, cleaner.scale, current)
        mm.throw_exception_if_processing_interrupted()
        with torch.inference_mode(), _progress(the_plan, current, cleaner, images.shape[0]) as on_tile:
            return run_batch(images, cleaner, current, device=device, dtype=dtype, on_tile=on_tile,
                             on_image=lambda index, image_plan: mm.throw_exception_if_processing_interrupted())

    def on_oom(error, following):
        mm.soft_empty_cache()

    try:
        return run_with_fallback(images, cleaner, settings, attempt, on_oom)
    finally:
        if offload:
            comfy_compat.unload_model(patcher)
