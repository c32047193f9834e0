"""What DiffBIR Model Sampling's CPU kernel switches share (``cpu_convolution``, ``cpu_feed_forward``).

Each switch is a choice among names whose first is the pack's faster exact way and the others the official
way. The choice is stored in the model's transformer_options, where the IRControlNets that drive the model
read it; for the SD UNet a DIFFUSION_MODEL wrapper applies the first choice around each model call. The
last DiffBIR Model Sampling on a model decides. Both only act on a CPU in float32 outside autocast.
"""

from __future__ import annotations

import comfy.patcher_extension
import torch

DIFFUSION_MODEL = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL


def autocast_on_cpu() -> bool:
    """Whether torch autocast is on for the CPU (cpu_precision bf16), which then picks the kernels."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch before 2.4
        return torch.is_autocast_cpu_enabled()


def apply_to(x: torch.Tensor) -> bool:
    """Whether the switches act on a network call that takes ``x``: on a CPU, in float32, outside autocast."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not autocast_on_cpu()


def chosen(transformer_options: dict | None, option_key: str, choices: tuple) -> str:
    """The choice stored under ``option_key`` by DiffBIR Model Sampling; without one the first of ``choices``."""
    return (transformer_options or {}).get(option_key, choices[0])


def set_choice(model, input_name: str, choice: str, choices: tuple, option_key: str, wrapper_key: str, wrapper):
    """``model`` (a ModelPatcher, already a clone the caller owns) with ``choice`` stored under ``option_key``
    and the UNet's ``wrapper`` in place exactly when the choice is the first of ``choices``."""
    if choice not in choices:
        raise ValueError(f"{input_name} must be one of {', '.join(choices)}, not {choice!r}")
    model.model_options.setdefault("transformer_options", {})[option_key] = choice
    model.remove_wrappers_with_key(DIFFUSION_MODEL, wrapper_key)
    if choice == choices[0]:
        model.add_wrapper_with_key(DIFFUSION_MODEL, wrapper_key, wrapper)
    return model
