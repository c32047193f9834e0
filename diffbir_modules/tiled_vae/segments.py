"""The network cut into segments: one resblock each (with the upsample, downsample or first conv in
front of it), the unit between whole-image feature maps, with the halo (receptive field) each needs."""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch

from .network import normalize, request, resblock, resume, silu_, upsample_conv

UP, SAME, DOWN = "up", "same", "down"
TILE_HALO_PX = 16  # for memory estimates: the largest halo of a segment, in image pixels


def _decoder_levels(dec) -> list[int]:
    return list(reversed(range(dec.num_resolutions)))


class Segment:
    """One resblock (with the upsample, downsample or first conv in front of it), or the decoder's
    output head. Between segments the feature map exists exactly (every element computed by the tile
    that owns it), so a tile's next input is cut from it with only this segment's ``halo`` (its
    receptive field, in elements at its input resolution): no tile carries the receptive field of the
    rest of the network. ``resample``: UP/DOWN when the segment starts with a x2 upsample/downsample;
    ``norms``: how many GroupNorms it yields at; ``channels``: the block's (in, out) channels."""

    def __init__(self, level: int, program: Callable[[list], Generator], norms: int, halo: int, resample: str,
                 channels: tuple[int, int]):
        self.level, self.program, self.norms, self.halo, self.resample = level, program, norms, halo, resample
        self.channels = channels


def decoder_segments(dec) -> list[Segment]:
    """The decoder from the mid block's output to the image (levels from 1/8 to full resolution)."""
    levels = _decoder_levels(dec)

    def block(level: int, index: int, upsample: bool):
        def program(box: list) -> Generator:
            if upsample:
                box[:] = [upsample_conv(dec.up[level + 1].upsample, box.pop())]
            return (yield from resblock(dec.up[level].block[index], box))
        return program

    def head(box: list) -> Generator:
        h, _, affine = resume((yield request(dec.norm_out, box)))
        h = dec.conv_out(silu_(normalize(h, affine, in_place=True)))
        if getattr(dec, "tanh_out", False):
            h = torch.tanh(h)
        return h

    segments = []
    for level in levels:
        for index in range(dec.num_res_blocks + 1):
            res = dec.up[level].block[index]
            upsample = index == 0 and level != levels[0]
            # 3x3 convs: two in the block, one after the nearest x2 upsample (3 elements = 2 before it)
            segments.append(Segment(level, block(level, index, upsample), 2, 2, UP if upsample else SAME,
                                     (res.in_channels, res.out_channels)))
    last = dec.up[levels[-1]].block[-1].out_channels
    return segments + [Segment(levels[-1], head, 1, 1, SAME, (last, last))]


def encoder_segments(enc) -> list[Segment]:
    """The encoder from the image to the input of its mid block (levels from full to 1/8 resolution)."""

    def block(level: int, index: int):
        def program(box: list) -> Generator:
            if index == 0:
                if level == 0:
                    box[:] = [enc.conv_in(box.pop())]
                else:
                    box[:] = [enc.down[level - 1].downsample(box.pop())]
            return (yield from resblock(enc.down[level].block[index], box))
        return program

    segments = []
    for level in range(enc.num_resolutions):
        for index in range(enc.num_res_blocks):
            res = enc.down[level].block[index]
            if index:
                halo, resample = 2, SAME
            elif level == 0:
                halo, resample = 3, SAME  # conv_in + the block's two convs
            else:  # stride-2 conv (pad right/bottom) feeding two convs: 4 before, 5 after; even keeps the grid
                halo, resample = 6, DOWN
            segments.append(Segment(level, block(level, index), 2, halo, resample,
                                     (res.in_channels, res.out_channels)))
    return segments


def _chain(segments: list[Segment], box: list) -> Generator:
    """Segments one after the other on one tensor (a whole image, or a test's tile)."""
    for segment in segments:
        x = yield from segment.program(box)
        box[:] = [x]
        del x
    return box.pop()


def decoder_program(dec, box: list) -> Generator:
    return _chain(decoder_segments(dec), box)


def encoder_program(enc, box: list) -> Generator:
    return _chain(encoder_segments(enc), box)


def output_origin(region, resample: str) -> tuple[int, int]:
    """(top, left) of a segment's output for an input ``region``, at the output resolution."""
    if resample == UP:
        return region[0] * 2, region[2] * 2
    if resample == DOWN:  # stride 2 from an even start
        return region[0] // 2, region[2] // 2
    return region[0], region[2]


def out_step(step: int, resample: str) -> int:
    return step // 2 if resample == UP else step * 2 if resample == DOWN else step


def segment_steps(segments: list[Segment], step: int) -> list[int]:
    """Pixels per element at each segment's output."""
    out = []
    for segment in segments:
        step = out_step(step, segment.resample)
        out.append(step)
    return out


def passes(segments: list[Segment]) -> int:
    return sum(segment.norms + 1 for segment in segments)
