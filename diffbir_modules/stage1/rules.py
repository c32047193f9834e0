"""What each official pipeline does around its network (``RULES``), the node's options
(``Settings``), and which rules a model gets ("auto": by its architecture)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import presets
from .architectures import Cleaner


@dataclass(frozen=True)
class Rules:
    """What one official pipeline does around its network."""

    name: str
    pre_upscale: bool  # resize the input to the requested size first (1x cleaners); False: the model upscales
    ceil_sizes: bool  # v1 release: ceil(n * factor); others int(n * factor)
    short_side: str  # "swinir" (before untiled, after tiled) | "after" | "requested" (bsrnet) | "before_pil" (v1)
    pad_mode: str  # "constant" (zeros) | "replicate"
    pad_multiple: int | None  # fixed padding multiple; None: the model's own size requirement
    tile_multiple_required: bool  # the official code refuses tiles that are not a multiple of the model's


RULES = {
    "swinir": Rules("swinir", True, False, "swinir", "constant", None, True),
    "bsrnet": Rules("bsrnet", False, False, "requested", "replicate", None, False),
    "scunet": Rules("scunet", True, False, "after", "replicate", 64, False),
    "v1_release": Rules("v1_release", True, True, "before_pil", "constant", None, True),
    "generic": Rules("generic", True, False, "after", "replicate", None, False),
}


def auto_rules(cleaner: Cleaner) -> str:
    """The official pipeline for the network the model is: SwinIR -> swinir, SCUNet -> scunet,
    BSRNet (ESRGAN x4) -> bsrnet; another model upscaling by itself -> bsrnet, another 1x -> generic."""
    if cleaner.kind in ("swinir", "scunet", "bsrnet"):
        return cleaner.kind
    return "bsrnet" if cleaner.scale > 1 else "generic"


@dataclass(frozen=True)
class Settings:
    """The node's options. ``rules``: a key of RULES, a preset name ("v2.1 sr") or "auto"."""

    rules: str = "auto"
    upscale: float = 4.0
    min_short_side: int = presets.MIN_SHORT_SIDE  # 0 disables the short-side rule
    resample: str = "pil_uint8"
    tiled: bool = False
    tile_size: int = presets.CLEANER_TILE_SIZE
    tile_stride: int = presets.CLEANER_TILE_STRIDE
    weighting: str = "gaussian"
    official_midpoint: bool = True
    clamp: bool = True  # clip the result to [0, 1]; the official pipelines keep the network's values


def resolve_rules(name: str, cleaner: Cleaner) -> Rules:
    if name == "auto":
        return RULES[auto_rules(cleaner)]
    if name in RULES:
        return RULES[name]
    return RULES[presets.preset(name).stage1]
