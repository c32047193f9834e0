"""The fastest exact convolution kernel on a CPU: the widest float32 convolutions at the smallest sizes run
as im2col + one matrix product instead of oneDNN, in the SD UNet and the IRControlNet (DiffBIR Model
Sampling's cpu_convolution; the IRControlNet also without it). Nothing else changes: not on a GPU, in half
precision or under autocast, and not for the narrower or larger convolutions. Real ComfyUI, tiny random
models; the rule itself on a full-size SD layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from devkit.comfy_runtime import call_node, conditioned, restoration_models


@pytest.fixture(scope="module")
def convolution(comfy):
    return comfy.pack_module("diffbir_modules.convolution")


class _Kernels(TorchDispatchMode):
    """How many 2D convolutions reach the matrix product (aten.thnn_conv2d) and how many PyTorch's usual
    dispatch (aten.conv2d, which picks oneDNN on a CPU)."""

    def __init__(self):
        super().__init__()
        self.counts = {"matrix product": 0, "usual": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.thnn_conv2d.default:
            self.counts["matrix product"] += 1
        elif func in (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default):
            self.counts["usual"] += 1
        return func(*args, **(kwargs or {}))


def _conv(x, weight, bias, **kwargs):
    with _Kernels() as kernels:
        out = F.conv2d(x, weight, bias, **kwargs)
    return out, kernels.counts["matrix product"] > 0


def test_the_widest_convolutions_at_small_sizes_become_matrix_products(convolution):
    """SD's 1280-channel 3x3 layer (59 MB of weights): routed at 8x8 and 16x16 for a batch of 2 and at the
    stride-2 downsample, not where oneDNN is as fast (1024 output positions) or for narrower layers."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(1280, 1280, 3, 3, generator=g) / (1280 * 9) ** 0.5
    bias = torch.randn(1280, generator=g) * 0.02
    small = torch.randn(2, 1280, 8, 8, generator=g)
    usual, routed = _conv(small, weight, bias, padding=1)
    assert not routed
    with torch.inference_mode(), convolution.fastest_exact_convolutions(small):
        fast, routed = _conv(small, weight, bias, padding=1)
        assert routed and torch.equal(fast, torch.ops.aten.thnn_conv2d(small, weight, [3, 3], bias, [1, 1], [1, 1]))
        # float32 summation order only: measured 5.4e-7 of the largest value; the bound leaves 18x
        assert not torch.equal(fast, usual)
        assert float((fast - usual).abs().max()) < 1e-5 * float(usual.abs().max())
        assert _conv(torch.randn(2, 1280, 16, 16, generator=g), weight, bias, padding=1)[1]  # 512 positions
        assert _conv(torch.randn(2, 1280, 16, 16, generator=g), weight, bias, stride=2, padding=1)[1]
        assert not _conv(torch.randn(1, 1280, 32, 32, generator=g), weight, bias, padding=1)[1]  # 1024
        assert not _conv(small[:, :640], weight[:, :640].contiguous(), bias, padding=1)[1]  # 29 MB of weights


def test_only_plain_float32_convolutions_are_routed(convolution, monkeypatch):
    """Whatever their size: padding given as a string, dilation, groups and half precision keep the usual path."""
    monkeypatch.setattr(convolution, "WIDE_WEIGHT_BYTES", 0)
    g = torch.Generator().manual_seed(1)
    x, weight, bias = torch.randn(1, 8, 6, 6, generator=g), torch.randn(4, 8, 3, 3, generator=g), torch.randn(4)
    with torch.inference_mode(), convolution.fastest_exact_convolutions(x):
        assert _conv(x, weight, bias, padding=1)[1]
        assert not _conv(x, weight, bias, padding="same")[1]
        assert not _conv(x, weight, bias, padding=2, dilation=2)[1]
        assert not _conv(x, weight[:, :4].contiguous(), bias, padding=1, groups=2)[1]
        assert not _conv(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), padding=1)[1]

        class Wrapped(torch.Tensor):  # e.g. a quantized weight that dequantizes in its own dispatch
            pass

        assert not _conv(x, weight.as_subclass(Wrapped), bias, padding=1)[1]


def test_nothing_is_intercepted_off_a_cpu_in_float32(convolution):
    assert isinstance(convolution.fastest_exact_convolutions(torch.zeros(1)), torch.overrides.TorchFunctionMode)
    for x in (torch.zeros(1, dtype=torch.float16), torch.zeros(1, dtype=torch.bfloat16)):
        assert not isinstance(convolution.fastest_exact_convolutions(x), torch.overrides.TorchFunctionMode)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # cpu_precision bf16: autocast picks the kernels
        assert not isinstance(convolution.fastest_exact_convolutions(torch.zeros(1)), torch.overrides.TorchFunctionMode)


@pytest.fixture(scope="module")
def restoration(comfy, sd2_tiny):
    """A tiny SD 2.x model and one conditioned 64 px restoration with an IRControlNet."""
    return conditioned(restoration_models(sd2_tiny, "irc-tiny-convolution.pth"), 64, 64)


def _sample(model, restoration) -> tuple[torch.Tensor, dict]:
    """Two KSampler steps (cfg 4) and the convolution kernels they reached."""
    positive, negative, latent = restoration[2:]
    with _Kernels() as kernels:
        out = call_node("KSampler", model, 3, 2, 4.0, "euler", "normal", positive, negative, latent)[0]["samples"]
    return out, kernels.counts


@pytest.fixture
def every_convolution_routed(convolution, monkeypatch):
    """The tiny models' convolutions are far below the rule's sizes: route them all, to see where the
    mode is active."""
    monkeypatch.setattr(convolution, "WIDE_WEIGHT_BYTES", 0)
    monkeypatch.setattr(convolution, "MAX_POSITIONS", 1 << 30)


def test_cpu_convolution_switch(restoration, convolution):
    base = restoration[0]
    old_prompt = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32")[0]  # before the switch
    fast = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32", "fastest_exact")[0]
    kept = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32", "pytorch")[0]
    again = call_node("DiffBIRModelSampling", fast, "v2.1", "fastest_exact", "fp32", "pytorch")[0]

    def wrapped(patcher):
        from comfy.patcher_extension import WrappersMP

        return convolution.WRAPPER_KEY in patcher.wrappers.get(WrappersMP.DIFFUSION_MODEL, {})

    def choice(patcher):
        return convolution.chosen(patcher.model_options.get("transformer_options"))

    assert wrapped(old_prompt) and wrapped(fast) and not wrapped(kept) and not wrapped(base)
    assert [choice(p) for p in (old_prompt, fast, kept, base)] == ["fastest_exact", "fastest_exact", "pytorch",
                                                                    "fastest_exact"]
    assert not wrapped(again) and choice(again) == "pytorch"  # the last DiffBIR Model Sampling decides
    with pytest.raises(ValueError, match="cpu_convolution must be one of fastest_exact, pytorch"):
        call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32", "mkldnn")


def test_at_the_tiny_models_sizes_nothing_changes(restoration):
    """No convolution of the tiny models meets the rule: both choices give the same bits."""
    base = restoration[0]
    fast, counts = _sample(call_node("DiffBIRModelSampling", base, "v2.1")[0], restoration)
    kept, _ = _sample(call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32", "pytorch")[0],
                      restoration)
    assert counts["matrix product"] == 0 and counts["usual"] > 0
    assert torch.equal(fast, kept)


def test_both_networks_follow_the_switch(restoration, every_convolution_routed):
    base = restoration[0]
    fast, fast_counts = _sample(call_node("DiffBIRModelSampling", base, "v2.1")[0], restoration)
    kept, kept_counts = _sample(call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32", "pytorch")[0],
                                restoration)
    _, bare_counts = _sample(base, restoration)  # no DiffBIR Model Sampling: the IRControlNet alone routes
    assert fast_counts["usual"] == 0 and fast_counts["matrix product"] > 0
    assert kept_counts["matrix product"] == 0 and kept_counts["usual"] == fast_counts["matrix product"]
    assert 0 < bare_counts["matrix product"] < fast_counts["matrix product"] and bare_counts["usual"] > 0
    difference = float((fast - kept).abs().max() / kept.abs().max())
    # float32 summation order only: measured 6.5e-5 of the largest latent value on an Intel AVX-512 CPU and
    # 2.6e-4 on an AMD Zen 4 (2 steps, cfg 4, every convolution of both tiny random networks re-routed; the
    # unet_attention switch moved the same sample by 7.9e-6 on the first). On the Zen 4 either kernel alone
    # is 2e-7 from a float64 convolution at these shapes: the sampler amplifies rounding, which depends on
    # the CPU's kernels. The bound leaves ~4x the larger
    assert 0 < difference < 1e-3


def test_tiled_sampling_routes_every_window(restoration, every_convolution_routed):
    base = call_node("DiffBIRModelSampling", restoration[0], "v2.1")[0]
    tiled = call_node("DiffBIRTiledSampling", base, 64, 32, 1, "gaussian")[0]
    _, counts = _sample(tiled, restoration)
    assert counts["usual"] == 0 and counts["matrix product"] > 0


def test_bf16_sampling_keeps_autocasts_kernels(restoration, every_convolution_routed, comfy):
    if not comfy.pack_module("diffbir_modules.cpu_precision").native_bf16():
        pytest.skip("this CPU has no bf16 instructions (cpu_precision bf16 stays fp32)")
    bf16 = call_node("DiffBIRModelSampling", restoration[0], "v2.1", "fastest_exact", "bf16")[0]
    _, counts = _sample(bf16, restoration)
    assert counts["matrix product"] == 0 and counts["usual"] > 0
