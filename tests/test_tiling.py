"""The shared sliding-window / gaussian-blending helper (diffbir_modules/tiling.py): coverage, the
official midpoint quirk, scales up and down, and the hooks other areas use."""

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def tiling(comfy):
    return comfy.pack_module("diffbir_modules.tiling")


@pytest.mark.parametrize("h, w, size, stride", [(148, 212, 128, 64), (37, 53, 16, 8), (64, 64, 64, 32),
                                                (100, 130, (32, 48), (16, 40)), (5, 300, 64, 32)])
def test_windows_cover_every_pixel_and_stay_inside(tiling, h, w, size, stride):
    windows = tiling.sliding_windows(h, w, size, stride)
    covered = torch.zeros(h, w, dtype=torch.int32)
    size_h, size_w = (size, size) if isinstance(size, int) else size
    for top, bottom, left, right in windows:
        assert 0 <= top < bottom <= h and 0 <= left < right <= w
        assert bottom - top == min(size_h, h) and right - left == min(size_w, w)
        covered[top:bottom, left:right] += 1
    assert int(covered.min()) >= 1
    assert windows[-1][1] == h and windows[-1][3] == w  # the last window is flush with the end


def test_skip_rule_is_either_side_smaller(tiling):
    assert tiling.tiling_applies(512, 512, 512)
    assert not tiling.tiling_applies(511, 4000, 512)
    assert not tiling.tiling_applies(4000, 100, 512)


def test_gaussian_official_quirk_and_symmetric(tiling):
    official = tiling.gaussian_weights(64, 64, official_midpoint=True)
    symmetric = tiling.gaussian_weights(64, 64, official_midpoint=False)
    assert torch.equal(symmetric, symmetric.flip(0)) and torch.allclose(symmetric, symmetric.flip(1), rtol=1e-12)
    assert torch.allclose(official, official.flip(1), rtol=1e-12)  # x is centred at (w-1)/2 ...
    assert not torch.allclose(official, official.flip(0))  # ... y at h/2: rows weigh towards the bottom
    assert int(official.sum(1).argmax()) == 32  # the peak row is h/2, not (h-1)/2
    assert float(official.min()) > 0


def test_identity_comes_back_exactly(tiling):
    x = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(1))
    calls = []
    out = tiling.tiled_apply(lambda t: t, x, 32, 20, on_tile=lambda done, total: calls.append((done, total)))
    assert torch.allclose(out, x, atol=1e-6)
    n = tiling.count_tiles(70, 90, 32, 20)
    assert calls == [(i + 1, n) for i in range(n)]


def test_scale_up_and_down(tiling):
    x = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(2))
    up = tiling.tiled_apply(lambda t: F.interpolate(t, scale_factor=4, mode="nearest"), x, 16, 8, scale=4)
    assert torch.allclose(up, F.interpolate(x, scale_factor=4, mode="nearest"), atol=1e-6)
    # a VAE-encoder-like 1/8 with windows on multiples of 8: the same as the whole
    down = tiling.tiled_apply(lambda t: F.avg_pool2d(t, 8), x, 32, 16, scale=1 / 8)
    assert down.shape == (1, 3, 6, 10)
    assert torch.allclose(down, F.avg_pool2d(x, 8), atol=1e-6)
    assert tiling.scale_length(37, 1 / 8) == 37 // 8 and tiling.scale_length(37, 4) == 148


def test_window_is_passed_and_channels_and_device(tiling):
    x = torch.rand(1, 2, 40, 40, generator=torch.Generator().manual_seed(3))
    cond = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(4))

    def fn(tile, window):
        top, bottom, left, right = window
        return torch.cat([tile, cond[..., top:bottom, left:right]], dim=1)

    out = tiling.tiled_apply(fn, x, 24, 8, pass_window=True, out_device="cpu", out_dtype=torch.float64)
    assert out.shape == (1, 3, 40, 40) and out.dtype == torch.float64
    assert torch.allclose(out[:, 2:].float(), cond, atol=1e-6)


def test_wrong_tile_output_is_an_error(tiling):
    with pytest.raises(RuntimeError, match="expected"):
        tiling.tiled_apply(lambda t: t[..., :-1, :], torch.rand(1, 3, 40, 40), 16, 8)
    with pytest.raises(ValueError):
        tiling.sliding_windows(0, 10, 8, 4)
