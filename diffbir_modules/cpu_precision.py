"""Half precision on a CPU: which CPUs compute it in hardware, and an opt-in bfloat16 compute path for
sampling on those with bf16 instructions.

On a CPU ComfyUI computes the UNet in float32 whatever the weights are stored in (its own comment: bf16
"works on CPU but is extremely slow" - true where the CPU emulates it). CPUs with AVX-512 BF16 or AMX
(Intel Xeon from the 4th generation, AMD Zen 4 and later) multiply bf16 in hardware; there torch's
autocast runs the UNet's and the IRControlNet's convolutions, matrix products and attention in bf16 and
the rest (normalisation, the sampler, cfg, guidance) in float32: a sampling step about 2.5x as fast
with AMX, 1.6x with AVX-512 BF16 alone (docs/performance.md). Not exact, like a half-precision UNet on a
GPU (random weights: 1.6 uint8 levels on average, up to 15), so "fp32" (the official code's precision on
a CPU) stays the default.

The switch wraps ComfyUI's ``calc_cond_batch`` (one wrapper among others, the model's own clone): the
control networks' residuals and the UNet's prediction both run inside it.
"""

from __future__ import annotations

import functools
import logging

import comfy.patcher_extension
import torch

from . import cpu_features

log = logging.getLogger("DiffBIR")

CPU_PRECISIONS = ("fp32", "bf16")
WRAPPER_KEY = "diffbir_cpu_bf16"
CALC_COND_BATCH = comfy.patcher_extension.WrappersMP.CALC_COND_BATCH


@functools.cache
def native_bf16(cpuinfo: str = cpu_features.CPUINFO) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX on x86, BF16 on Arm), where
    autocast to bf16 is faster than float32; elsewhere bf16 is emulated (ComfyUI: "extremely slow"). Linux
    lists the instruction sets in ``cpuinfo``; elsewhere torch can only say whether AMX is there."""
    flags = cpu_features.flags(cpuinfo)
    if flags is None:
        init_amx = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
        return bool(init_amx and init_amx())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def native_fp16(cpuinfo: str = cpu_features.CPUINFO) -> bool:
    """Whether this CPU computes fp16 in hardware (AVX-512 FP16 or AMX-FP16 on x86, FP16 arithmetic on
    Arm); unknown (taken as yes) where Linux's ``cpuinfo`` is not there."""
    flags = cpu_features.flags(cpuinfo)
    return flags is None or bool(flags & {"avx512_fp16", "amx_fp16", "fphp"})


def emulated_on_this_cpu(dtype: torch.dtype) -> bool:
    """Whether a ``dtype`` computation on this CPU runs in software: bf16 or fp16 without the instructions.
    Measured on a 2-core AVX2 CPU (torch 2.13; ``python -m tools.cpu_rates --half``): a 3x3 convolution of the
    SD VAE took about 1000x its float32 time in either (10-13x in the channels-last layout), a 1024 x 1024
    matrix product about 220x; ComfyUI's VAE encode of a 128 px image 211.5 s in bf16 against 0.41 s."""
    if dtype == torch.bfloat16:
        return not native_bf16()
    if dtype == torch.float16:
        return not native_fp16()
    return False


def _bf16_on_cpu(executor, model, conds, x_in, timestep, model_options):
    if x_in.device.type != "cpu":
        return executor(model, conds, x_in, timestep, model_options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return executor(model, conds, x_in, timestep, model_options)


def with_cpu_precision(model, choice: str):
    """``model`` (a ModelPatcher, already a clone the caller owns) set to sample in ``choice`` (one of
    CPU_PRECISIONS) when it runs on a CPU. "bf16" on a CPU without bf16 instructions stays float32, with a
    warning saying why."""
    if choice not in CPU_PRECISIONS:
        raise ValueError(f"cpu_precision must be one of {', '.join(CPU_PRECISIONS)}, not {choice!r}")
    model.remove_wrappers_with_key(CALC_COND_BATCH, WRAPPER_KEY)  # the last DiffBIR Model Sampling decides
    if choice == "fp32":
        return model
    if not native_bf16():
        log.warning("DiffBIR Model Sampling: cpu_precision bf16 asked for, but this CPU has no bf16 instructions "
                    "(AVX-512 BF16 or AMX) and would emulate bf16, slower than fp32: sampling stays in fp32.")
        return model
    model.add_wrapper_with_key(CALC_COND_BATCH, WRAPPER_KEY, _bf16_on_cpu)
    return model
