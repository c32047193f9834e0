"""Which attention kernel DiffBIR's networks, and the SD UNet they drive, run with, and one exact
saving on the CPU.

ComfyUI picks one attention implementation for the whole process. On a CPU its default (split or
sub-quadratic attention) builds the score matrix in pieces, several times slower than torch's fused
``scaled_dot_product_attention``, which is also what the official DiffBIR code uses whenever torch >= 2.
The same maths either way; only the summation order differs (about 1e-6 of the largest value).

Cond and uncond share one batch under cfg, [cond..., uncond...], with the same noisy latent, timestep
and condition latent: up to the first cross-attention the two halves are equal bit for bit, so the
first self-attention of the UNet and of the IRControlNet (the largest ones, at 1/8 of the image
resolution) is computed once for both halves. The result is the same bits; 2.6 % of a cfg model call at
512 px on a 2-core CPU (docs/performance.md). Only on the CPU: comparing the halves there costs microseconds, on a
GPU it would stall the queue of kernels on every attention call.
"""

from __future__ import annotations

import torch

# What a UNet runs with when DiffBIR Model Sampling sets it up: "fastest_exact" swaps ComfyUI's slow
# CPU defaults for torch's fused kernel (as the official code), keeps any faster choice of the user and
# shares the equal halves; "comfyui" leaves ComfyUI's global choice alone.
UNET_ATTENTION_CHOICES = ("fastest_exact", "comfyui")


def _equal_halves(*tensors: torch.Tensor) -> bool:
    """Whether every tensor's batch is two bit-for-bit equal halves (stops at the first difference)."""
    half = tensors[0].shape[0] // 2
    return all(t.shape[0] == 2 * half and torch.equal(t[:half], t[half:]) for t in tensors)


def _attend(attention, q, k, v, *args, **kwargs):
    """``attention(q, k, v, heads, ...)`` (any of ComfyUI's kernels), once for both halves of the batch
    where they are equal. k first: for a cross-attention it is 77 tokens and differs at once."""
    mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
    if q.device.type == "cpu" and q.shape[0] >= 2 and mask is None and _equal_halves(k, q, v):
        half = q.shape[0] // 2
        out = attention(q[:half], k[:half], v[:half], *args, **kwargs)
        return torch.cat((out, out))
    return attention(q, k, v, *args, **kwargs)


def _scaled_dot_product(func, *args, **kwargs):
    from comfy.ldm.modules import attention

    return _attend(attention.attention_pytorch, *args, **kwargs)


def _own_choice(func, *args, **kwargs):
    return _attend(func, *args, **kwargs)


def fast_attention_options() -> dict:
    """transformer_options that run attention with torch's scaled_dot_product_attention when
    ComfyUI's global choice is one that materialises the score matrix (its CPU defaults: split,
    sub-quadratic or basic attention), else with the faster choice the user made (xformers, flash,
    sage, or pytorch itself); either way equal cond/uncond halves are attended once."""
    from comfy.ldm.modules import attention

    if attention.optimized_attention in (attention.attention_split, attention.attention_sub_quad,
                                         attention.attention_basic):
        return {"optimized_attention_override": _scaled_dot_product}
    return {"optimized_attention_override": _own_choice}


def with_unet_attention(model, choice: str):
    """``model`` (a ModelPatcher, already a clone the caller owns) set to run its attention as
    ``choice`` says (one of UNET_ATTENTION_CHOICES). A user's own override is never replaced."""
    if choice not in UNET_ATTENTION_CHOICES:
        raise ValueError(f"unet_attention must be one of {', '.join(UNET_ATTENTION_CHOICES)}, not {choice!r}")
    if choice == "comfyui":
        return model
    transformer_options = model.model_options.setdefault("transformer_options", {})
    if "optimized_attention_override" not in transformer_options:
        transformer_options.update(fast_attention_options())
    return model
