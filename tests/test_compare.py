"""DiffBIR Before / After: the input (enlarged, nearest) and the restoration side by side, labelled."""

import pytest
import torch


def test_before_after_puts_the_pair_side_by_side(comfy):
    node = comfy.node_class("DiffBIRBeforeAfter")
    g = torch.Generator().manual_seed(0)
    before = torch.rand(2, 8, 10, 3, generator=g)
    after = torch.rand(2, 32, 40, 3, generator=g)
    out = node.execute(before, after).result[0]
    assert out.dtype == torch.float32 and out.shape[0] == 2
    strip = out.shape[1] - 32  # the label strip above the cells
    assert 0 < strip <= 40 and out.shape[2] == 2 * 40 + 4  # two cells and the 4 px gap
    for i in range(2):
        # 8-bit canvas: each pixel within half a step (0.5 / 255) of the source
        left, right = out[i, strip:, :40], out[i, strip:, 44:]
        assert (right - after[i]).abs().max() <= 0.5 / 255 + 1e-6
        enlarged = before[i].repeat_interleave(4, 0).repeat_interleave(4, 1)  # nearest, 4x
        assert (left - enlarged).abs().max() <= 0.5 / 255 + 1e-6
    assert out[:, :strip].std() > 0  # the labels are drawn


def test_before_after_rejects_mismatched_batches(comfy):
    node = comfy.node_class("DiffBIRBeforeAfter")
    with pytest.raises(ValueError, match="before has a batch of 2 and after a batch of 3"):
        node.execute(torch.rand(2, 8, 8, 3), torch.rand(3, 16, 16, 3))
