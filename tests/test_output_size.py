"""The official ending of a restoration: unclipped decode and colour fix, then 'DiffBIR Resize to
Output Size' (the official resize to input size x upscale, which clips once), in a real ComfyUI."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from devkit import model_factory
from devkit.model_factory import install_model


def overshooting(b=1, h=37, w=53, seed=0):
    """An IMAGE-shaped tensor a little outside [0, 1], as a network or the VAE decoder returns it."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, 3, generator=g) * 1.2 - 0.1


def test_bicubic_antialias_is_the_official_call_on_unclipped_values(comfy):
    node = comfy.node_class("DiffBIRResizeToOutputSize")
    image = overshooting(b=2)
    out = node.execute(image, 123, 77, "bicubic_antialias").result[0]
    expected = F.interpolate(image.movedim(-1, 1), size=(77, 123), mode="bicubic", antialias=True)
    expected = expected.clamp(0, 1).movedim(1, -1)
    assert out.shape == (2, 77, 123, 3) and out.dtype == torch.float32
    assert torch.equal(out, expected)
    # resizing the clipped image instead is a different (wrong) result
    clipped_first = F.interpolate(image.clamp(0, 1).movedim(-1, 1), size=(77, 123), mode="bicubic",
                                  antialias=True).clamp(0, 1).movedim(1, -1)
    assert (clipped_first - out).abs().max() > 1e-3


def test_lanczos_is_v1s_uint8_pil_resize(comfy):
    node = comfy.node_class("DiffBIRResizeToOutputSize")
    image = overshooting(h=64, w=96)
    out = node.execute(image, 40, 30, "lanczos_uint8").result[0]
    array = (image[0].numpy() * 255).clip(0, 255).astype(np.uint8)
    expected = np.asarray(Image.fromarray(array).resize((40, 30), Image.LANCZOS))
    assert out.shape == (1, 30, 40, 3)
    assert np.array_equal((out[0].numpy() * 255).round().astype(np.uint8), expected)


def test_bicubic_uint8_is_the_official_pil_upscale_of_a_loaded_photo(comfy):
    """The official faces-in-the-wild loop upscales the loaded 8-bit photo with PIL BICUBIC before
    detection; an image loaded by LoadImage (uint8 / 255) round-trips to the same bytes."""
    node = comfy.node_class("DiffBIRResizeToOutputSize")
    photo = np.random.default_rng(3).integers(0, 256, size=(29, 41, 3), dtype=np.uint8)
    loaded = torch.from_numpy(photo.astype(np.float32) / 255.0)[None]
    out = node.execute(loaded, 164, 116, "bicubic_uint8").result[0]
    expected = np.asarray(Image.fromarray(photo).resize((164, 116), Image.BICUBIC))
    assert out.shape == (1, 116, 164, 3)
    assert np.array_equal((out[0].numpy() * 255).round().astype(np.uint8), expected)
    # torch's bicubic (core Upscale Image) is another kernel
    core = F.interpolate(loaded.movedim(-1, 1), size=(116, 164), mode="bicubic").clamp(0, 1).movedim(1, -1)
    assert ((core[0].numpy() * 255).round().astype(np.uint8).astype(int) - expected).__abs__().max() > 1


def test_alpha_is_resized_and_clipped(comfy):
    node = comfy.node_class("DiffBIRResizeToOutputSize")
    rgba = torch.cat([overshooting(h=20, w=20), torch.ones(1, 20, 20, 1)], dim=-1)
    out = node.execute(rgba, 50, 30, "bicubic_antialias").result[0]
    assert out.shape == (1, 30, 50, 4) and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[..., 3], torch.ones(1, 30, 50))


def test_colour_fix_clips_only_when_asked(comfy):
    node = comfy.node_class("DiffBIRColorFix")
    image, reference = overshooting(seed=1), overshooting(seed=2)
    clipped = node.execute(image, reference, "wavelet").result[0]
    kept = node.execute(image, reference, "wavelet", clamp=False).result[0]
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert kept.min() < -0.01 and kept.max() > 1.01
    assert torch.equal(kept.clamp(0, 1), clipped)


@pytest.fixture(scope="module")
def vae(comfy, sd2_tiny):
    with torch.inference_mode():
        return comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(sd2_tiny)[2]


def test_unclipped_decode(comfy, vae):
    node = comfy.node_class("DiffBIRVAEDecodeTiled")
    latent = {"samples": torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0)) * 3}
    with torch.inference_mode():
        clipped = node.execute(vae, latent, 0).result[0]
        kept = node.execute(vae, latent, 0, clamp=False).result[0]
        tiled = node.execute(vae, latent, 64, clamp=False).result[0]
        again = node.execute(vae, latent, 0).result[0]
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert kept.min() < 0 or kept.max() > 1, "random weights should overshoot [0, 1]"
    assert torch.equal(kept.clamp(0, 1), clipped)
    assert (tiled - kept).abs().max() < 1e-5
    # the VAE's own clip is back after the unclipped decode
    assert torch.equal(again, clipped)


@pytest.mark.parametrize("name", ["BSRNet.pth", "scunet_color_real_psnr.pth"])
def test_degradation_removal_keeps_the_unclipped_result_when_asked(comfy, name):
    installed = install_model("upscale_models", model_factory.stage1_file(name), f"test-small-{name}")
    image = overshooting(h=20, w=28).clamp(0, 1)
    with torch.inference_mode():
        model = comfy.node_class("UpscaleModelLoader").execute(installed).result[0]
        node = comfy.node_class("DiffBIRDegradationRemoval")
        clipped, width, height = node.execute(image, model, upscale=2.0, min_short_side=0).result
        kept, width2, height2 = node.execute(image, model, upscale=2.0, min_short_side=0, clamp=False).result
    assert (width, height) == (width2, height2) == (56, 40) and kept.shape == (1, 40, 56, 3)
    assert kept.min() < 0 or kept.max() > 1, "random weights should overshoot [0, 1]"
    assert torch.equal(kept.clamp(0, 1), clipped)
