"""The SD KL autoencoder's pieces as the tiled engine runs them: the resblock as a program that
stops at its GroupNorms, the mid block's attention in bounded slices, and the blocks an untiled
pass reports progress on."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import torch

from ..progress import per_block


def silu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(x)


def silu_(h: torch.Tensor) -> torch.Tensor:
    """In place, on a GroupNorm output nothing else holds (as ComfyUI's ResnetBlock does): one
    full-size tensor fewer to allocate and write per GroupNorm."""
    return torch.nn.functional.silu(h, inplace=True)


def request(norm, box: list) -> tuple:
    """(norm, tensor to normalise, carry) from ``box`` = [tensor, *carry], emptying the box.

    Why the box: a suspended generator keeps its local variables alive. If a tile's tensors stayed
    in locals across a ``yield``, every tile waiting in the lockstep would keep its activations on
    the GPU (the parked CPU copies would be extra, not instead), and GPU memory would grow with the
    number of tiles. Handing the only references out through the yielded tuple lets the engine park
    them, so the GPU holds one tile's tensors at a time."""
    t, carry = box[0], tuple(box[1:])
    box.clear()
    return norm, t, carry


def resblock(block, box: list) -> Generator:
    """ComfyUI's ResnetBlock forward (no time embedding, dropout off), yielding at its GroupNorms.
    ``box`` holds the input and is emptied (see ``request``). A channel-changing shortcut is applied
    before the second GroupNorm instead of at the end (the same values), so a waiting tile parks
    ``out_channels`` for it, not ``in_channels``."""
    x = box.pop()
    box[:] = [x, x]
    del x
    h, (x,) = yield request(block.norm1, box)
    h = block.conv1(silu_(h))
    if block.in_channels != block.out_channels:
        x = block.conv_shortcut(x) if block.use_conv_shortcut else block.nin_shortcut(x)
    box[:] = [h, x]
    del h, x
    h, (x,) = yield request(block.norm2, box)
    h = block.conv2(silu_(h))
    return x + h


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
