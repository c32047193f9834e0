"""DiffBIR stage 1, degradation removal: the size rules of the official pipelines around a
restoration network (SwinIR, BSRNet, SCUNet or any spandrel image model), tiled or whole.

The official code (``diffbir/pipeline.py`` and ``diffbir/inference/*_loop.py`` at v2.1.0 / main; the
same untiled rules at v2.0.0; ``inference.py`` of the v1 release 7bd5675) does, per pipeline:

- ``swinir`` (v1 and v2.1 every task, face in every version): the loop PIL-bicubic resizes the
  uint8 input by ``upscale`` (``int(n * upscale)``). Untiled: short side < 512 -> bicubic
  (antialias) resize of the short side to 512 *before* the network, zero-pad to a multiple of 64,
  run, crop. Tiled (only when the input is at least one tile on both sides; tile % 64 == 0): run
  tiled, then the short-side resize *after* the network.
- ``bsrnet`` (v2 sr): no pre-upscale; the network's own x4, tiled or not; then short side -> 512 if
  the requested size ``int(n * upscale)`` is < 512 on its short side, else a bicubic (antialias)
  resize to the requested size.
- ``scunet`` (v2 denoise): PIL pre-upscale, run (the network replicate-pads itself to 64), short
  side -> 512 after.
- ``v1_release`` (7bd5675): PIL pre-upscale with ``ceil`` sizes, then PIL bicubic resize of the short
  side to 512 (``ceil`` sizes), zero-pad to 64, run, crop (stage 1 never tiled there).

Plus ``generic`` for any other spandrel model ("auto" picks it): pre-upscale like SCUNet and pad to
the model's own size requirements.

Deliberate choices (see docs/stage1.md): the network is called directly (``descriptor.model``), not
through spandrel's ``__call__``, which clamps the output to [0, 1] and pads with its own rules; the
official pipelines do neither (the one clamp is at the very end, when the node returns an IMAGE).
SCUNet is replicate-padded to 64 here (the official network pads itself so; spandrel's copy reflects).

One job per file:

- ``architectures``: a spandrel model as a ``Cleaner`` (which network, its scale and size needs);
- ``rules``: what each official pipeline does (``RULES``), the node's ``Settings``, "auto";
- ``sizes``: every size one image goes through (``plan``);
- ``resize``: the official resizes and padding, one padded network call;
- ``running``: input checks, one image and a batch through their plans (pure torch/PIL);
- ``memory``: tiles chosen to fit free memory, the out-of-memory fallback;
- ``in_comfy``: the node's run through ComfyUI's model management, progress and cancel;
- ``loading``: a file into a spandrel model.

The names below are the package's API; the nodes, the preset loader and the scripts use them.
"""

from .architectures import Cleaner, progress_pieces
from .in_comfy import memory_estimate, run_in_comfy
from .loading import load_cleaner
from .memory import OOM_ERRORS, fit_to_memory, halve_tiles, is_oom, run_with_fallback, tile_floor
from .resize import RESAMPLERS, call_padded, pad, pad_amounts, pil_bicubic, to_uint8, torch_bicubic
from .rules import RULES, Rules, Settings, auto_rules, resolve_rules
from .running import restore_one, run_batch, tile_count, validate_image
from .sizes import Plan, plan, scaled_size, short_edge_size, short_edge_size_v1

__all__ = [
    "OOM_ERRORS", "RESAMPLERS", "RULES", "Cleaner", "Plan", "Rules", "Settings", "auto_rules", "call_padded",
    "fit_to_memory", "halve_tiles", "is_oom", "load_cleaner", "memory_estimate", "pad", "pad_amounts", "pil_bicubic",
    "plan", "progress_pieces", "resolve_rules", "restore_one", "run_batch", "run_in_comfy", "run_with_fallback",
    "scaled_size", "short_edge_size", "short_edge_size_v1", "tile_count", "tile_floor", "to_uint8", "torch_bicubic",
    "validate_image",
]
