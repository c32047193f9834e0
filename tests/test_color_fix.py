"""The colour fix node: DiffBIR's wavelet (and v1's AdaIN) low-frequency transfer, in a real ComfyUI."""

import pytest
import torch


def photo(seed=0, b=1, h=40, w=56, c=3):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 1, h // 8, w // 8, c, generator=g)
    smooth = torch.nn.functional.interpolate(base.permute(0, 4, 2, 3, 1)[..., 0], size=(h, w), mode="bilinear")
    return (smooth.permute(0, 2, 3, 1) * 0.7 + torch.rand(b, h, w, c, generator=g) * 0.3).clamp(0, 1)


def test_wavelet_split_reconstructs_exactly(comfy):
    color_fix = comfy.pack_module("diffbir_modules.color_fix")
    x = photo().movedim(-1, 1)
    high, low = color_fix.wavelet_split(x)
    assert torch.allclose(high + low, x, atol=1e-6)
    assert color_fix.wavelet_color_fix(x, x).sub(x).abs().max() < 1e-6


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_color_fix_node_takes_reference_colours(comfy, method):
    node = comfy.node_class("DiffBIRColorFix")
    restored = photo(1)
    reference = (photo(2) * 0.5 + 0.4).clamp(0, 1)  # brighter, lower contrast
    out = node.execute(restored, reference, method).result[0]
    assert out.shape == restored.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # the mean colour moves to the reference's, details stay the restored image's
    assert (out.mean(dim=(1, 2)) - reference.mean(dim=(1, 2))).abs().max() < 0.03
    assert (out.mean(dim=(1, 2)) - restored.mean(dim=(1, 2))).abs().max() > 0.05


def test_color_fix_keeps_alpha_and_resizes_reference(comfy):
    node = comfy.node_class("DiffBIRColorFix")
    rgba = torch.cat([photo(3, b=2), torch.full((2, 40, 56, 1), 0.25)], dim=-1)
    gray_reference = photo(4, h=20, w=28, c=1)
    out = node.execute(rgba, gray_reference, "wavelet").result[0]
    assert out.shape == (2, 40, 56, 4)
    assert torch.all(out[..., 3] == 0.25)


def test_color_fix_rejects_mismatched_batches(comfy):
    node = comfy.node_class("DiffBIRColorFix")
    with pytest.raises(ValueError, match="batch of 2 .* batch of 3"):
        node.execute(photo(b=2), photo(b=3), "wavelet")
