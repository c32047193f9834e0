"""Which attention kernel DiffBIR's networks, and the SD UNet they drive, run with.

ComfyUI picks one attention implementation for the whole process. On a CPU its default (split or
sub-quadratic attention) builds the score matrix in pieces, several times slower than torch's fused
``scaled_dot_product_attention``, which is also what the official DiffBIR code uses whenever torch >= 2.
The same maths either way; only the summation order differs (about 1e-6 of the largest value).
"""

from __future__ import annotations

# What a UNet runs with when DiffBIR Model Sampling sets it up: "fastest_exact" swaps ComfyUI's slow
# CPU defaults for torch's fused kernel (as the official code) and keeps any faster choice of the
# user; "comfyui" leaves ComfyUI's global choice alone.
UNET_ATTENTION_CHOICES = ("fastest_exact", "comfyui")


def _scaled_dot_product(func, *args, **kwargs):
    from comfy.ldm.modules import attention

    return attention.attention_pytorch(*args, **kwargs)


def fast_attention_options() -> dict:
    """transformer_options that run attention with torch's scaled_dot_product_attention when
    ComfyUI's global choice is one that materialises the score matrix (its CPU defaults: split,
    sub-quadratic or basic attention). A faster choice a user made (xformers, flash, sage, or
    pytorch itself) is kept: then this is empty."""
    from comfy.ldm.modules import attention

    if attention.optimized_attention in (attention.attention_split, attention.attention_sub_quad,
                                         attention.attention_basic):
        return {"optimized_attention_override": _scaled_dot_product}
    return {}


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
