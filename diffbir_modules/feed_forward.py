"""How the transformer blocks' feed-forward layers run on a CPU: over all tokens at once, or in pieces.

A feed-forward layer of SD's transformer blocks (GEGLU: a Linear to 8x the width, one half through GELU
times the other, a Linear back) treats every token on its own. Over all the tokens of a cfg batch at
once its intermediate tensors are large: at 1024 px, 2 x 16384 tokens at the first level give 335 MB for
the first product and 168 MB each for GELU and the product, every one larger than glibc's largest mmap
threshold (32 MiB), so fresh memory that the kernel zero-fills on each call. In pieces of 1024 tokens
they are 10 MB and 5 MB, reused from the heap. The same maths per token; whether the matrix products
give the same bits depends on the BLAS's blocking for the number of rows (MKL, 2 threads: pieces of 512
or 1024 rows gave the same bits as the whole for every SD 2.1 shape here, other sizes differed by about
3e-6 of the largest value).

A layer whose weights ComfyUI casts on every call (stored in bf16 or fp16 with ``--bf16-unet`` and
computed in fp32, quantized, or patched on the fly in low-VRAM mode) runs whole: in pieces it would cast
its weights once per piece.

Measured with one cfg model call of the full-size UNet and IRControlNet in a worker thread, as ComfyUI's
server runs prompts (2-core AVX-512 CPU, torch 2.13, 2 threads; docs/development.md): at 1024 px the
resident peak of the call was about 0.5 GiB lower; at 512 px the same bits, a quarter of the page faults,
and no time difference beyond noise.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from comfy.ldm.modules.attention import FeedForward

from . import cpu_kernels

# What DiffBIR Model Sampling runs the feed-forward layers of the UNet and the IRControlNet with:
# "in_pieces" goes over ROWS tokens at a time (on a CPU, in float32); "whole" over all tokens at once, as the
# official code. The choice is stored in the model's transformer_options, which the control networks
# receive; without one it is "in_pieces" (cpu_kernels).
CPU_FEED_FORWARD_CHOICES = ("in_pieces", "whole")
OPTION_KEY = "diffbir_cpu_feed_forward"
WRAPPER_KEY = "diffbir_feed_forward_in_pieces"

ROWS = 1024  # tokens per piece: the widest intermediate of SD 2.1's first level is then 10 MB


def _in_pieces(layer: FeedForward, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if rows <= ROWS:
        return type(layer).forward(layer, x)
    flat = x.reshape(rows, x.shape[-1])
    out = torch.cat([type(layer).forward(layer, flat[start:start + ROWS]) for start in range(0, rows, ROWS)])
    return out.view(*x.shape[:-1], out.shape[-1])


def _casts_weights(layer: torch.nn.Module) -> bool:
    """Whether ComfyUI's ops cast or patch any of the layer's weights on each call (as comfy.ops decides)."""
    return any(getattr(m, "comfy_cast_weights", False) or getattr(m, "weight_function", None)
               or getattr(m, "bias_function", None) for m in layer.modules())


@contextlib.contextmanager
def _pieces(network: torch.nn.Module):
    # An instance attribute shadows the class's forward for this call only; a layer whose forward someone
    # else replaced (another pack) keeps theirs.
    layers = [m for m in network.modules()
              if isinstance(m, FeedForward) and "forward" not in m.__dict__ and not _casts_weights(m)]
    for layer in layers:
        layer.forward = functools.partial(_in_pieces, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def chosen(transformer_options: dict | None) -> str:
    """The choice a model's DiffBIR Model Sampling made (one of CPU_FEED_FORWARD_CHOICES)."""
    return cpu_kernels.chosen(transformer_options, OPTION_KEY, CPU_FEED_FORWARD_CHOICES)


def feed_forward_in_pieces(network: torch.nn.Module, x: torch.Tensor, choice: str = "in_pieces"):
    """A context in which ``network`` (which takes ``x``) runs its feed-forward layers as ``choice`` says:
    with "in_pieces", on a CPU in float32 (not under autocast), ROWS tokens at a time. Elsewhere (a GPU,
    half precision, "whole") nothing changes."""
    if choice != "in_pieces" or not cpu_kernels.apply_to(x):
        return contextlib.nullcontext()
    return _pieces(network)


def _diffusion_model_wrapper(executor, x, *args, **kwargs):
    with feed_forward_in_pieces(executor.class_obj, x):
        return executor(x, *args, **kwargs)


def with_cpu_feed_forward(model, choice: str):
    """``model`` (a ModelPatcher, already a clone the caller owns) set to run the feed-forward layers of its
    UNet and of the IRControlNets that drive it as ``choice`` says (one of CPU_FEED_FORWARD_CHOICES); the
    last DiffBIR Model Sampling on a model decides."""
    return cpu_kernels.set_choice(model, "cpu_feed_forward", choice, CPU_FEED_FORWARD_CHOICES, OPTION_KEY,
                                  WRAPPER_KEY, _diffusion_model_wrapper)
