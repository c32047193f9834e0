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


@pytest.mark.parametrize("method", ["wavelet", "adain", "lab"])
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


@pytest.mark.parametrize("method", ["wavelet", "adain", "lab"])
def test_a_one_pixel_image_takes_the_references_colour(comfy, method):
    """One pixel has no spread (the unbiased variance of one value is NaN): every method gives the
    reference's colour, finite (a 1 px stage-1 output reaches here cropped back from its 64 px padding)."""
    node = comfy.node_class("DiffBIRColorFix")
    out = node.execute(torch.full((1, 1, 1, 3), 0.4), torch.full((1, 1, 1, 3), 0.6), method).result[0]
    assert torch.isfinite(out).all()
    assert (out - 0.6).abs().max() < 1e-4


def test_color_fix_rejects_mismatched_batches(comfy):
    node = comfy.node_class("DiffBIRColorFix")
    with pytest.raises(ValueError, match="batch of 2 .* batch of 3"):
        node.execute(photo(b=2), photo(b=3), "wavelet")


def test_lab_conversion_matches_cielab_and_round_trips(comfy):
    color_fix = comfy.pack_module("diffbir_modules.color_fix")
    # Published CIELAB (D65) values of sRGB white, red, green, blue and mid grey, to their 2 decimals.
    known = {(1, 1, 1): (100.0, 0.0, 0.0), (1, 0, 0): (53.24, 80.09, 67.20), (0, 1, 0): (87.73, -86.18, 83.18),
             (0, 0, 1): (32.30, 79.19, -107.86), (0.5, 0.5, 0.5): (53.39, 0.0, 0.0)}
    rgb = torch.tensor(list(known), dtype=torch.float32).view(-1, 3, 1, 1)
    lab = color_fix.rgb_to_lab(rgb).view(-1, 3)
    assert (lab - torch.tensor(list(known.values()), dtype=torch.float64)).abs().max() < 0.01
    # unclipped values (the official decode) survive the round trip too; float64 inside: 1e-9 is float
    # rounding over a cube root and a 2.4th power
    x = photo(5).movedim(-1, 1).double() * 1.4 - 0.2
    assert (color_fix.lab_to_rgb(color_fix.rgb_to_lab(x)) - x).abs().max() < 1e-9
    assert color_fix.lab_color_fix(x.float(), x.float()).sub(x.float()).abs().max() < 1e-5


def test_lab_fix_moves_colour_without_touching_a_gray_images_lightness(comfy):
    """A colour cast on a gray image: Lab takes the reference's colour axes; the lightness pattern of the
    restored image stays (its L mean and spread are matched, and the reference has the same L)."""
    color_fix = comfy.pack_module("diffbir_modules.color_fix")
    gray = photo(6, c=1).expand(-1, -1, -1, 3).movedim(-1, 1).contiguous()
    tinted = (gray * torch.tensor([1.0, 0.85, 0.7]).view(1, 3, 1, 1))
    out = color_fix.lab_color_fix(gray, tinted)
    lab_out, lab_ref = color_fix.rgb_to_lab(out), color_fix.rgb_to_lab(tinted)
    assert (lab_out[:, 1:].mean(dim=(2, 3)) - lab_ref[:, 1:].mean(dim=(2, 3))).abs().max() < 1e-6
    assert lab_out[:, 1:].mean() > 3  # it did get the warm cast (a, b > 0)
    lightness = torch.stack([lab_out[:, 0].flatten(), color_fix.rgb_to_lab(gray)[:, 0].flatten()])
    assert torch.corrcoef(lightness)[0, 1] > 0.9999  # L is a linear map of the input's L (float rounding)
