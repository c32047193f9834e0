"""The SD KL autoencoder's pieces as the tiled engine runs them: the resblock as a program that
stops at its GroupNorms, the mid block's attention in bounded slices, and the blocks an untiled
pass reports progress on."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import comfy.ops
import torch

from ..progress import per_block


def silu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(x)


def silu_(h: torch.Tensor) -> torch.Tensor:
    """In place, on a GroupNorm output nothing else holds (as ComfyUI's ResnetBlock does): one
    full-size tensor fewer to allocate and write per GroupNorm."""
    return torch.nn.functional.silu(h, inplace=True)


def request(norm, box: list) -> tuple:
    """(norm, tensor to normalise, carry) from ``box`` = [tensor, *carry], emptying the box. The engine
    answers with ``([tensor, *carry], affine)``: the same tensors (on the compute device) in a new box
    and the GroupNorm's whole-image statistics folded into a per-channel scale and shift
    (``normalize``); ``resume`` unpacks it.

    Why the box: a suspended generator keeps its local variables alive. If a tile's tensors stayed
    in locals across a ``yield``, every tile waiting in the lockstep would keep its activations on
    the GPU (the parked CPU copies would be extra, not instead), and GPU memory would grow with the
    number of tiles. Handing the only references out through the yielded tuple lets the engine park
    them, so the GPU holds one tile's tensors at a time."""
    return (norm, *_take(box))


def _take(box: list) -> tuple:
    """(tensor, carry) from ``box`` = [tensor, *carry], emptying the box."""
    t, carry = box[0], tuple(box[1:])
    box.clear()
    return t, carry


def resume(answer: tuple) -> tuple:
    """(tensor, carry, affine) from the engine's answer to a ``request``, emptying its box: the engine
    keeps the answer while the tile runs on, and a reference there would keep the tensor alive after
    the tile is done with it (or normalised it in place)."""
    box, affine = answer
    return (*_take(box), affine)


def normalize(x: torch.Tensor, affine: tuple, in_place: bool) -> torch.Tensor:
    """``x * scale + shift`` per channel: a GroupNorm with the whole-image statistics and its affine
    weights folded into ``affine`` (float32 [C] each), computed in float32 and rounded once to
    ``x``'s dtype. ``in_place`` where nothing else needs ``x``: a tile-sized tensor fewer to allocate
    (a 128-channel 516 x 516 tile: 6 ms in place against 35 ms for a new tensor on a 2-core CPU).
    The copy is an inference batch norm with mean 0 and variance 1 (faster than ``addcmul`` into a new
    tensor in the default layout); both gave the same bits on a 2-core x86 CPU in fp32 and bf16.
    ``x`` is one image, never reshaped: a reshape of a channels-last [1, C, H, W] tensor gives it a
    batch stride that makes the next convolution take it for the default layout and copy it."""
    scale, shift = affine
    if in_place:
        c = scale.shape[0]
        return torch.addcmul(shift.view(1, c, 1, 1), x, scale.view(1, c, 1, 1), out=x)
    zeros, ones = torch.zeros_like(scale), torch.ones_like(scale)
    return torch.nn.functional.batch_norm(x.float(), zeros, ones, scale, shift, False, 0.0, 0.0).to(x.dtype)


def resblock(block, box: list) -> Generator:
    """ComfyUI's ResnetBlock forward (no time embedding, dropout off), yielding at its GroupNorms.
    ``box`` holds the input and is emptied (see ``request``). What keeps a tile's memory down: the
    input is handed out once (it is both the first GroupNorm's input and the residual); a
    channel-changing shortcut is applied as the tile resumes, before the input is normalised in place
    (the same values as ComfyUI's order), so the waiting tile parks ``out_channels`` for it at the
    second GroupNorm; the second GroupNorm and the residual add run in place."""
    x, _, affine = resume((yield request(block.norm1, box)))
    if block.in_channels != block.out_channels:
        residual = block.conv_shortcut(x) if block.use_conv_shortcut else block.nin_shortcut(x)
        h = normalize(x, affine, in_place=True)
    else:
        residual = x
        h = normalize(x, affine, in_place=False)
    del x
    h = block.conv1(silu_(h))
    box[:] = [h, residual]
    del h, residual, affine
    h, (residual,), affine = resume((yield request(block.norm2, box)))
    h = block.conv2(silu_(normalize(h, affine, in_place=True)))
    return h.add_(residual)


# The four output phases of a x2 nearest upsample: (row, column) offsets inside each 2 x 2 block.
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def _phase_taps(w: torch.Tensor, dim: int) -> tuple:
    """A 3-tap kernel along ``dim`` folded onto the input grid, for output phase 0 and 1: an output at
    an even position sees input rows (i - 1, i) with taps (w0, w1 + w2), at an odd one (i, i + 1) with
    (w0 + w1, w2)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack((w0, w1 + w2), dim), torch.stack((w0 + w1, w2), dim)


def upsample_conv(module, x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's VAE Upsample (nearest x2, then a 3x3 convolution) computed on the input grid: each of the
    four output phases is a 2x2 convolution of the input with summed taps, interleaved into the output
    as it comes. 16 multiply-adds per input pixel and channel pair instead of 36, and no x2 copy:
    0.55-0.59x the time of the decoder's upsampling convolutions on a 2-core CPU (measured alone, 256-512
    channels at 66-264 px). The same maths, rounded differently: against a float64 reference 2.2e-7 of
    the largest output in the default layout and 1.3e-6 channels-last, where ComfyUI's module gives
    2.8e-7 and 1.9e-6 (tests/test_tiled_vae.py). Float32 only (summed taps in fp16 or bf16 would round
    visibly); anything else runs the module as it is."""
    conv = getattr(module, "conv", None)
    if (conv is None or not getattr(module, "with_conv", False) or module.scale_factor != 2
            or x.ndim != 4 or x.dtype != torch.float32 or conv.weight.dtype != torch.float32
            or tuple(conv.kernel_size) != (3, 3) or tuple(conv.padding) != (1, 1) or tuple(conv.stride) != (1, 1)
            or tuple(conv.dilation) != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros"):
        return module(x)
    weight, bias = comfy.ops.cast_bias_weight(conv, x)
    out_channels = weight.shape[0]
    kernels = torch.cat([col for row in _phase_taps(weight, 2) for col in _phase_taps(row, 3)])  # [4 O, I, 2, 2]
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if channels_last:
        kernels = kernels.contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    b, _, h, w = x.shape
    # interleaved in [B, H, 2, W, 2, C] channels-last (whole channel vectors per copy), else [B, C, H, 2, W, 2]
    out = x.new_empty(b, h, 2, w, 2, out_channels) if channels_last else x.new_empty(b, out_channels, h, 2, w, 2)
    # one convolution per phase, not one with four times the channels: a quarter of the output as a
    # transient instead of all of it beside ``out`` (the decode's peak was there), the same bits and time
    for p, (a, c) in enumerate(_PHASES):
        phase = slice(p * out_channels, (p + 1) * out_channels)
        # window (r, c) of the padded input covers input rows r - 1, r and columns c - 1, c
        y = torch.nn.functional.conv2d(padded, kernels[phase], None if bias is None else bias)
        if channels_last:
            out[:, :, a, :, c] = y.permute(0, 2, 3, 1)[:, a:a + h, c:c + w]
        else:
            out[:, :, :, a, :, c] = y[:, :, a:a + h, c:c + w]
        del y
    if channels_last:
        return out.view(b, 2 * h, 2 * w, out_channels).permute(0, 3, 1, 2)
    return out.view(b, out_channels, 2 * h, 2 * w)


ATTENTION_SLICE_BYTES = 256 * 2**20  # attention scores computed per slice of queries, at most this


def mid_attention(block, x: torch.Tensor) -> torch.Tensor:
    """The mid block's self-attention over the whole latent-resolution map, with bounded memory.

    Why: where ComfyUI uses its split attention for the VAE (CPU, or no PyTorch attention), it sizes
    the slices of the score matrix to the free memory, so one attention over a 2048 px image (65536
    tokens, a 16 GiB score matrix) took about 9 GiB of a CPU-only machine's RAM at once: more than
    all of the tiled part. Here the queries go in slices of at most ``ATTENTION_SLICE_BYTES`` of
    scores (the same operations per query row: softmax over all keys). PyTorch's and xformers'
    memory-efficient attention are used as ComfyUI chose them."""
    if getattr(block.optimized_attention, "__name__", "") != "normal_attention":
        return block(x)
    h = block.norm(x)
    q, k, v = block.q(h), block.k(h), block.v(h)
    del h
    b, c, height, width = q.shape
    n = height * width
    q = q.reshape(b, c, n).permute(0, 2, 1)  # b, n, c
    k = k.reshape(b, c, n)
    v = v.reshape(b, c, n)
    out = torch.empty_like(v)
    scale = c ** -0.5
    rows = max(1, ATTENTION_SLICE_BYTES // (b * n * q.element_size()))
    for start in range(0, n, rows):
        scores = torch.bmm(q[:, start:start + rows], k) * scale
        weights = torch.softmax(scores, dim=2).permute(0, 2, 1)
        del scores
        out[:, :, start:start + rows] = torch.bmm(v, weights)
        del weights
    del q, k, v
    return x + block.proj_out(out.reshape(b, c, height, width))


def untiled_progress(blocks: list[torch.nn.Module], images: int):
    """ComfyUI's untiled call with a bar step per block (none when ``blocks`` is empty)."""
    return per_block(blocks, images) if blocks else contextlib.nullcontext()


def decoder_blocks(dec) -> list[torch.nn.Module]:
    """The decoder's resblocks, latent resolution first: progress steps for an untiled decode."""
    return [dec.mid.block_1, dec.mid.block_2, *(block for level in reversed(dec.up) for block in level.block)]


def encoder_blocks(enc) -> list[torch.nn.Module]:
    """The encoder's resblocks, full resolution first: progress steps for an untiled encode."""
    return [*(block for level in enc.down for block in level.block), enc.mid.block_1, enc.mid.block_2]
