"""The exact tiled VAE: tiled encode/decode equal the untiled ones to float rounding (the full-size SD
VAE of the tiny checkpoint, random weights), the margins follow the network, bad tile sizes."""

import pytest
import torch

H, W = 64, 320  # five 64 px tiles in a row: the middle ones have real margins on both sides


@pytest.fixture(scope="module")
def tv(comfy):
    return comfy.pack_module("diffbir_modules.tiled_vae")


@pytest.fixture(scope="module")
def vae(comfy, sd2_tiny):
    with torch.inference_mode():
        return comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(sd2_tiny)[2]


def photo_like(h=H, w=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 16, w // 16, generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic").clamp(0, 1) * 0.85
    return (img + torch.rand(1, 3, h, w, generator=g) * 0.15).movedim(1, -1).contiguous()


def test_margins_cover_the_receptive_field(tv, vae):
    fsm = vae.first_stage_model
    assert tv.decoder_margin(fsm.decoder) == 13  # latent pixels after the mid block (SD VAE)
    assert tv.encoder_margin(fsm.encoder) == 80  # image pixels before the mid block


@pytest.fixture(scope="module")
def encoded(vae):
    image = photo_like()
    with torch.inference_mode():
        return image, vae.encode(image)


def test_tiled_encode_equals_untiled(comfy, tv, vae, encoded):
    image, untiled = encoded
    with torch.inference_mode():
        tiled = comfy.node_class("DiffBIRVAEEncodeTiled").execute(vae, image, 64).result[0]["samples"]
    assert tiled.shape == untiled.shape == (1, 4, H // 8, W // 8)
    assert (tiled - untiled).abs().max() < 1e-4 * untiled.abs().max()


def test_tiled_decode_equals_untiled(comfy, tv, vae, encoded):
    _, latent = encoded
    with torch.inference_mode():
        untiled = vae.decode(latent)
        tiled = comfy.node_class("DiffBIRVAEDecodeTiled").execute(vae, {"samples": latent}, 64).result[0]
    assert tiled.shape == untiled.shape == (1, H, W, 3)
    assert (tiled - untiled).abs().max() < 1e-4


def test_automatic_decodes_untiled_when_it_fits(tv, vae, encoded):
    _, latent = encoded
    with torch.inference_mode():
        assert torch.equal(tv.decode(vae, latent, 0), vae.decode(latent))


def test_tiles_split_on_latent_pixels(tv):
    assert tv._splits(320, 64) == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 320)]
    assert tv._splits(200, 64) == [(0, 48), (48, 104), (104, 152), (152, 200)]
    assert all(a % 8 == 0 for a, _ in tv._splits(1000, 300))


@pytest.mark.parametrize("tile", [32, 100, -64])
def test_bad_tile_sizes(tv, vae, encoded, tile):
    with pytest.raises(ValueError, match=r"tile_size|0 \(automatic\)"):
        tv.decode(vae, encoded[1], tile)
