"""The synthetic degradation node: seeded (same seed, same output; image i of a batch = seed + i),
shapes and ranges, both pipelines, and the kernels it draws from."""

import math

import numpy as np
import pytest
import torch
from skimage import data


@pytest.fixture(scope="module")
def deg(comfy):
    return comfy.pack_module("diffbir_modules.degradations")


@pytest.fixture(scope="module")
def photo():
    """A 96x128 crop of skimage's astronaut as a ComfyUI IMAGE [1,H,W,3]."""
    rgb = data.astronaut()[40:136, 160:288].astype(np.float32) / 255.0
    return torch.from_numpy(rgb)[None]


def run_node(comfy, **inputs):
    node = comfy.node_class("DiffBIRSynthesizeDegradation")
    with torch.inference_mode():
        return node.execute(**inputs).result


@pytest.mark.parametrize("pipeline", ["realesrgan", "codeformer"])
def test_same_seed_same_output_and_seeds_differ(comfy, photo, pipeline):
    a, clean_a = run_node(comfy, image=photo, pipeline=pipeline, seed=11)
    b, clean_b = run_node(comfy, image=photo, pipeline=pipeline, seed=11)
    c, _ = run_node(comfy, image=photo, pipeline=pipeline, seed=12)
    assert torch.equal(a, b) and torch.equal(clean_a, clean_b)
    assert not torch.equal(a, c)
    for image in (a, clean_a):
        assert image.shape == photo.shape and image.dtype == torch.float32 and image.device.type == "cpu"
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float((a - photo).abs().mean()) > 0.005, "the degradation changed nothing"


def test_batch_image_i_uses_seed_plus_i(comfy, photo):
    batch = photo.expand(3, -1, -1, -1).contiguous()
    out, _ = run_node(comfy, image=batch, pipeline="realesrgan", seed=5)
    single, _ = run_node(comfy, image=photo, pipeline="realesrgan", seed=7)
    assert out.shape == batch.shape
    assert torch.equal(out[2:3], single)
    assert not torch.equal(out[0], out[1])


def test_low_resolution_output_and_fixed_scale(comfy, photo):
    out, clean = run_node(comfy, image=photo, pipeline="realesrgan", seed=1, low_resolution_output=True)
    assert out.shape == (1, 24, 32, 3) and clean.shape == photo.shape
    out, _ = run_node(comfy, image=photo.expand(2, -1, -1, -1), pipeline="codeformer", seed=1, scale=2.0,
                      low_resolution_output=True)
    assert out.shape == (2, 48, 64, 3)
    with pytest.raises(ValueError, match="set scale > 0"):
        run_node(comfy, image=photo.expand(2, -1, -1, -1), pipeline="codeformer", seed=1, low_resolution_output=True)


def test_intensity_zero_is_nearly_clean_and_alpha_dropped(comfy, photo):
    rgba = torch.cat([photo, torch.ones_like(photo[..., :1])], dim=-1)
    light, _ = run_node(comfy, image=rgba, pipeline="codeformer", seed=3, intensity=0.0)
    full, _ = run_node(comfy, image=rgba, pipeline="codeformer", seed=3, intensity=1.0)
    assert light.shape == photo.shape
    assert float((light - photo).abs().mean()) < float((full - photo).abs().mean())
    assert float((light - photo).abs().mean()) < 0.02  # only JPEG at quality 100 is left


def test_usm_sharpen_switch(comfy, photo):
    _, sharpened = run_node(comfy, image=photo, pipeline="realesrgan", seed=2, usm_sharpen=True)
    _, plain = run_node(comfy, image=photo, pipeline="realesrgan", seed=2, usm_sharpen=False)
    assert torch.equal(plain, photo) and not torch.equal(sharpened, photo)


@pytest.mark.parametrize("codec", ["kornia", "pil"])
def test_both_jpeg_codecs(comfy, photo, codec):
    out, _ = run_node(comfy, image=photo, pipeline="codeformer", seed=4, jpeg_codec=codec)
    assert out.shape == photo.shape


def test_kernels(deg):
    iso = deg.gaussian_kernel(21, 2.0, 2.0)
    assert abs(float(iso.sum()) - 1) < 1e-5 and torch.allclose(iso, iso.T, atol=1e-7)
    assert torch.allclose(iso, iso.flip(0), atol=1e-7)
    aniso = deg.gaussian_kernel(21, 3.0, 1.0, 0.0)
    assert float(aniso[10, 13]) > float(aniso[13, 10])  # wider along x
    rotated = deg.gaussian_kernel(21, 3.0, 1.0, math.pi / 2)
    assert torch.allclose(rotated, aniso.T, atol=1e-6)
    for k in (deg.generalized_gaussian_kernel(15, 2, 1, 0.3, 0.7), deg.plateau_kernel(15, 2, 1, 0.3, 1.5)):
        assert abs(float(k.sum()) - 1) < 1e-5 and int(k.argmax()) == 7 * 15 + 7
    sinc = deg.sinc_kernel(13, math.pi / 2, pad_to=21)
    assert sinc.shape == (21, 21) and abs(float(sinc.sum()) - 1) < 1e-5 and float(sinc[0, 0]) == 0.0
    assert float(sinc.min()) < 0  # ringing lobes
    g = torch.Generator().manual_seed(0)
    kinds = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
    for _ in range(20):
        k = deg.random_mixed_kernel(g, kinds, None, 21, (0.2, 3.0))
        assert k.shape == (21, 21) and abs(float(k.sum()) - 1) < 1e-4
