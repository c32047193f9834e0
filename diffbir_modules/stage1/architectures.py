"""The stage-1 networks: a spandrel image model read as a ``Cleaner`` (SwinIR, BSRNet, SCUNet or any
other RGB -> RGB model) with its scale and size requirements, and the blocks of a network that an
untiled run reports progress on."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Cleaner:
    """A stage-1 network and what the size rules need to know about it."""

    module: torch.nn.Module  # called directly on [B, 3, H, W] in [0, 1]; output unclamped
    kind: str  # "swinir" | "bsrnet" | "scunet" | "other"
    scale: int
    multiple: int  # both sides must be a multiple of this
    minimum: int  # and at least this
    name: str = ""

    @classmethod
    def from_spandrel(cls, descriptor) -> Cleaner:
        """From a spandrel ImageModelDescriptor (ComfyUI's UPSCALE_MODEL)."""
        try:
            from spandrel import ImageModelDescriptor
        except ImportError:  # pragma: no cover - spandrel is a ComfyUI dependency
            ImageModelDescriptor = ()
        if ImageModelDescriptor and not isinstance(descriptor, ImageModelDescriptor):
            raise TypeError(
                f"the cleaner must be a single-image restoration model (a spandrel ImageModelDescriptor from "
                f"Load Upscale Model or DiffBIR Load Stage-1 Model), got {type(descriptor).__name__}")
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise ValueError(
                f"the cleaner {descriptor.architecture.name} takes {descriptor.input_channels} and returns "
                f"{descriptor.output_channels} channels; DiffBIR's stage 1 needs an RGB -> RGB model")
        arch = descriptor.architecture.id
        scale = int(descriptor.scale)
        if arch == "SwinIR":
            kind = "swinir"
        elif arch == "SCUNet":
            kind = "scunet"
        elif arch == "ESRGAN" and scale == 4:
            kind = "bsrnet"
        else:
            kind = "other"
        req = descriptor.size_requirements
        name = f"{descriptor.architecture.name} x{scale}"
        return cls(descriptor.model, kind, scale, max(1, req.multiple_of), max(1, req.minimum), name)


def _weighted_children(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [child for child in module.children() if any(True for _ in child.parameters())]


def _blocks(part: torch.nn.Module) -> list[torch.nn.Module]:
    """``part``, or the blocks of the list (``Sequential`` / ``ModuleList``) it is or wraps alone (a
    residual shortcut around a list): a ``ModuleList`` is never called itself, its blocks are."""
    inner = part
    while not isinstance(inner, (torch.nn.Sequential, torch.nn.ModuleList)) and len(_weighted_children(inner)) == 1:
        inner = _weighted_children(inner)[0]
    if isinstance(inner, (torch.nn.Sequential, torch.nn.ModuleList)):
        return _weighted_children(inner)
    return [part]


def progress_pieces(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks an untiled call reports progress on, in the network's own structure: its weighted
    top-level parts (below a wrapper of the whole network), each list of blocks opened into its
    blocks: SwinIR's residual Swin groups, BSRNet's RRDBs, SCUNet's transformer-conv blocks per level.
    Any spandrel model works; each piece is one step."""
    top = module
    while len(_weighted_children(top)) == 1:
        top = _weighted_children(top)[0]
    return [piece for part in _weighted_children(top) for piece in _blocks(part)] or [module]
