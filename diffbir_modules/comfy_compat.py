"""Everything that differs between the ComfyUI releases this pack runs on, in one place.

Supported: ComfyUI 0.3.75 and newer (tested on 0.3.75 and 0.33.0). Every other module asks here
instead of checking versions itself, and each answer probes for the feature, not the version
number, so the releases in between and after behave by what they actually have.

What changed between 0.3.75 and 0.33 that the pack has to care about:
- model patchers: newer releases build their own models' patchers through
  ``comfy.model_patcher.CoreModelPatcher``, which ``main.py`` switches to ``ModelPatcherDynamic``
  (dynamic VRAM) where it can. Our networks use the same class, so they load, offload and count
  memory like the core models beside them.
- UPSCALE_MODEL: core "Load Upscale Model" attaches a ``patcher`` to the spandrel descriptor and
  core "Upscale Image (using Model)" reads it; a descriptor without one breaks there.
- V3 schema fields (``search_aliases`` ...) that older releases reject.
- the executor's cache arguments (``ram_inactive``) and its caches' ``get`` (a coroutine now).
- ``default_noise_sampler`` seeds its stream with seed + 1 on the CPU (see sampling.make_noise_sampler).
- the VAE applies its ``process_output`` in place (its return value was used before).
- ``model_management.is_oom`` (newer) also recognises an accelerator error saying out of memory.
- ``ControlBase.multigpu_clones`` (newer) holds a control's per-GPU clones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import re

MINIMUM_VERSION = (0, 3, 75)
REQUIRED = "ComfyUI 0.3.75 or newer"


def comfyui_version() -> tuple[int, ...] | None:
    """The running ComfyUI's version as a tuple, or None when it does not say."""
    try:
        import comfyui_version
    except ImportError:
        return None
    numbers = re.findall(r"\d+", getattr(comfyui_version, "__version__", ""))
    return tuple(int(n) for n in numbers[:3]) or None


def check_runtime() -> None:
    """Raises ImportError with what to do when the running ComfyUI is too old for this pack (its
    V3 node API is missing or the release is older than the one the pack is tested on)."""
    version = comfyui_version()
    try:
        from comfy_api.latest import io  # noqa: F401
    except ImportError as error:
        found = ".".join(map(str, version)) if version else "an older release"
        raise ImportError(f"ComfyUI-DiffBIR needs {REQUIRED} (its V3 node API, comfy_api.latest); this is "
                          f"ComfyUI {found}. Update ComfyUI (git pull, or the Manager's 'Update ComfyUI').") from error
    if version is not None and version < MINIMUM_VERSION:
        raise ImportError(f"ComfyUI-DiffBIR needs {REQUIRED}; this is ComfyUI {'.'.join(map(str, version))}. "
                          "Update ComfyUI (git pull, or the Manager's 'Update ComfyUI').")


# -- models --------------------------------------------------------------------------------------
def model_patcher(module, load_device, offload_device):
    """A patcher for one of our networks, of the class the runtime uses for its own models.

    Looked up at call time: ``main.py`` may replace ``CoreModelPatcher`` after the pack was imported."""
    import comfy.model_patcher as patchers

    patcher_class = getattr(patchers, "CoreModelPatcher", patchers.ModelPatcher)
    return patcher_class(module, load_device=load_device, offload_device=offload_device)


def upscale_model_patcher(descriptor):
    """The patcher of an UPSCALE_MODEL (a spandrel descriptor), attached to it when it has none yet,
    as newer core loaders do: one patcher per loaded model, shared by every node that runs it."""
    patcher = getattr(descriptor, "patcher", None)
    if patcher is None:
        import comfy.model_management as mm

        patcher = model_patcher(descriptor.model, mm.get_torch_device(), mm.unet_offload_device())
        descriptor.patcher = patcher
    return patcher


def unload_model(patcher) -> None:
    """Moves one model back to its offload device and drops it from ComfyUI's loaded models (a
    stage-1 or face network between runs), leaving every other loaded model where it is."""
    import comfy.model_management as mm

    for loaded in list(mm.current_loaded_models):
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)
            break
    mm.soft_empty_cache()


def register_multigpu_clone(control, load_device, clone) -> None:
    """Records ``clone`` as ``control``'s copy for ``load_device`` in the registry newer releases keep
    on every control (``ControlBase.multigpu_clones``, read by their multi-GPU sampling); made here
    where the control has none."""
    vars(control).setdefault("multigpu_clones", {})[load_device] = clone


def runtime_says_out_of_memory(error: BaseException) -> bool:
    """ComfyUI's own out-of-memory test, where the runtime has one (newer releases: also an
    accelerator error with the out-of-memory code, whose pending CUDA error it then clears); False
    where it has none or ComfyUI is not running."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return False
    check = getattr(mm, "is_oom", None)
    return bool(check is not None and check(error))


@contextlib.contextmanager
def unclipped_vae_output(vae):
    """For one decode, ComfyUI's VAE maps the decoder output to [0, 1] without its clip (the official
    code colour-corrects the unclipped image). Its ``process_output`` is used for its return value up
    to the 2025 releases and applied in place, return value ignored, in newer ones: the stand-in does
    both. The original is put back afterwards."""
    original = vae.process_output
    vae.process_output = lambda image: image.add_(1.0).div_(2.0)
    try:
        yield
    finally:
        vae.process_output = original


# -- node schemas -----------------------------------------------------------------------------------
def schema_fields(**fields) -> dict:
    """The optional ``io.Schema`` fields this runtime knows, e.g. ``schema_fields(search_aliases=[...])``;
    older runtimes silently get fewer (the node still loads, without that nicety)."""
    from comfy_api.latest import io

    known = {f.name for f in dataclasses.fields(io.Schema)}
    return {name: value for name, value in fields.items() if name in known}


# -- in-process execution (scripts and tests run prompts with ComfyUI's own executor) ---------------
def executor_cache_args() -> dict:
    """``PromptExecutor(cache_args=...)`` for a run that keeps nothing between prompts."""
    return {"lru": 0, "ram": 0, "ram_inactive": 0}


def cached_outputs(cache, node_id: str):
    """A node's entry in an executor's output cache (``get`` is a coroutine in newer releases)."""
    entry = cache.get(node_id)
    if inspect.isawaitable(entry):
        entry = asyncio.run(entry)
    return entry

