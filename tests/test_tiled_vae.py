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
    for length, tile in ((200, 64), (1000, 300), (72, 64)):
        parts = tv._splits(length, tile)
        assert parts[0][0] == 0 and parts[-1][1] == length and len(parts) == -(-length // tile)
        assert all(a % 8 == 0 and b - a <= tile for a, b in parts)
        assert all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))


@pytest.mark.parametrize("tile", [32, 100, -64])
def test_bad_tile_sizes(tv, vae, encoded, tile):
    with pytest.raises(ValueError, match=r"tile_size|0 \(automatic\)"):
        tv.decode(vae, encoded[1], tile)


def _tensors_held(generator) -> list[str]:
    """Names of locals (through the ``yield from`` chain) of a suspended generator that hold tensors."""
    held = []
    while generator is not None and generator.gi_frame is not None:
        for name, value in generator.gi_frame.f_locals.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, torch.Tensor) for v in values):
                held.append(f"{generator.__name__}.{name}")
        generator = generator.gi_yieldfrom
    return held


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_waiting_tiles_hold_no_tensors(tv, vae, part):
    """While a tile waits for the whole-image GroupNorm statistics, its only tensors are the ones it
    handed out (which the engine parks on the CPU when the VAE is on a GPU): a suspended tile keeping
    its activations in locals would make GPU memory grow with the number of tiles (it did: 6.4 GiB
    more for a 2048 px decode on an H100 before this was fixed, docs/tiling.md)."""
    fsm = vae.first_stage_model
    with torch.inference_mode():
        if part == "encoder":
            x = torch.rand(1, 3, 64, 64)
            geo = tv._Geometry((0, 64, 0, 64), (0, 64, 0, 64), 1)
            program = tv._encoder_program(fsm.encoder, [x], geo)
        else:
            x = torch.rand(1, fsm.decoder.conv_in.out_channels, 8, 8)
            geo = tv._Geometry((0, 64, 0, 64), (0, 64, 0, 64), 8)
            program = tv._decoder_program(fsm.decoder, [x], geo)
        del x
        norm, t, carry = next(program)
        for _ in range(6):  # through the first resblocks, across a level change for the encoder
            assert _tensors_held(program) == []
            h = torch.nn.functional.group_norm(t.float(), norm.num_groups, norm.weight, norm.bias, norm.eps)
            norm, t, carry = program.send((h.to(t.dtype), carry))
