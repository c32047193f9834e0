"""The feed-forward layers of the SD UNet's and the IRControlNet's transformer blocks in pieces of tokens on a
CPU (DiffBIR Model Sampling's cpu_feed_forward; the IRControlNet also without it). Nothing else changes: not
on a GPU, in half precision or under autocast, and not for layers over few tokens. Real ComfyUI, tiny random
models; the rule itself on a full-size SD layer."""

from __future__ import annotations

import contextlib

import pytest
import torch

from devkit.comfy_runtime import call_node, conditioned, restoration_models


@pytest.fixture(scope="module")
def feed_forward(comfy):
    return comfy.pack_module("diffbir_modules.feed_forward")


class _Pieces:
    """Counts the calls that reach the feed-forward layers' inner network (one per piece or per whole)."""

    def __init__(self, *networks):
        from comfy.ldm.modules.attention import FeedForward

        self.rows = []
        self.handles = [m.net.register_forward_pre_hook(self._seen)
                        for network in networks for m in network.modules() if isinstance(m, FeedForward)]

    def _seen(self, module, args):
        self.rows.append(args[0].numel() // args[0].shape[-1])

    def close(self):
        for handle in self.handles:
            handle.remove()


def _sd_layer():
    """SD 2.1's first-level feed-forward (320 channels, GEGLU to 2 x 1280) with random weights."""
    from comfy.ldm.modules.attention import FeedForward

    torch.manual_seed(0)
    layer = FeedForward(320, glu=True)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return layer


def test_many_tokens_go_in_pieces_and_give_the_same_maths(feed_forward):
    """2 x 4096 tokens (a 512 px image under cfg): 8 pieces of 1024, the result restored to its shape and the
    layer as it was after the call; 1024 tokens or fewer go whole."""
    layer = network = _sd_layer()
    x = torch.randn(2, 4096, 320, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = layer(x)
        pieces = _Pieces(network)
        with feed_forward.feed_forward_in_pieces(network, x):
            piecewise = layer(x)
            few = layer(x[:1, :1024])
        pieces.close()
    assert pieces.rows == [1024] * 8 + [1024]
    assert "forward" not in layer.__dict__
    assert piecewise.shape == whole.shape
    # the same maths per token; the bits depend on the BLAS's blocking for the number of rows (MKL: equal here
    # at 1024 rows). A row out of place would be off by the whole value's size; the bound is 1e-5 of it.
    assert float((piecewise - whole).abs().max()) <= 1e-5 * float(whole.abs().max())
    assert torch.allclose(few, whole[:1, :1024], rtol=0, atol=1e-5 * float(whole.abs().max()))


def test_nothing_changes_off_a_cpu_in_float32(feed_forward):
    network = _sd_layer()
    assert isinstance(feed_forward.feed_forward_in_pieces(network, torch.zeros(1), "whole"), contextlib.nullcontext)
    for x in (torch.zeros(1, dtype=torch.float16), torch.zeros(1, dtype=torch.bfloat16)):
        with feed_forward.feed_forward_in_pieces(network, x):
            assert "forward" not in network.__dict__
    with torch.autocast("cpu", dtype=torch.bfloat16):  # cpu_precision bf16: autocast picks the kernels
        with feed_forward.feed_forward_in_pieces(network, torch.zeros(1)):
            assert "forward" not in network.__dict__
    with feed_forward.feed_forward_in_pieces(network, torch.zeros(1)):
        assert "forward" in network.__dict__


def test_a_forward_another_pack_replaced_is_kept(feed_forward):
    network = _sd_layer()

    def theirs(x):
        return x

    network.forward = theirs
    x = torch.randn(1, 4096, 320)
    with feed_forward.feed_forward_in_pieces(network, x):
        assert network.forward is theirs
    assert network.forward is theirs and torch.equal(network(x), x)


def test_layers_that_cast_their_weights_on_each_call_run_whole(feed_forward):
    """bf16 weights computed in fp32 (--bf16-unet on a CPU: ComfyUI's manual_cast ops) or a LoRA patched on
    the fly: in pieces they would be cast once per piece."""
    import comfy.ops
    from comfy.ldm.modules.attention import FeedForward

    x = torch.randn(1, 4096, 64)
    stored_bf16 = FeedForward(64, glu=True, dtype=torch.bfloat16, operations=comfy.ops.manual_cast)
    patched = FeedForward(64, glu=True, operations=comfy.ops.disable_weight_init)
    plain = FeedForward(64, glu=True, operations=comfy.ops.disable_weight_init)
    patched.net[2].weight_function = [lambda weight: weight]  # as ComfyUI sets it on one layer (not the class list)
    for layer, in_pieces in ((stored_bf16, False), (patched, False), (plain, True)):
        with feed_forward.feed_forward_in_pieces(layer, x):
            assert ("forward" in layer.__dict__) == in_pieces


def test_the_layers_are_restored_when_the_call_fails(feed_forward):
    network = _sd_layer()
    with pytest.raises(RuntimeError), feed_forward.feed_forward_in_pieces(network, torch.zeros(1)):
        network(torch.zeros(1, 2048, 7))  # wrong width: the layer raises
    assert "forward" not in network.__dict__


@pytest.fixture(scope="module")
def restoration(comfy, sd2_tiny):
    """A tiny SD 2.x model and one conditioned 256 px restoration with an IRControlNet: 2 x 1024 tokens at
    the first level under cfg, in two pieces."""
    return conditioned(restoration_models(sd2_tiny, "irc-tiny-feed-forward.pth"), 256, 256)


def _sample(model, restoration) -> tuple[torch.Tensor, list]:
    """Two KSampler steps (cfg 4) and the number of tokens each feed-forward call got, in both networks."""
    positive, negative, latent = restoration[2:]
    networks = [model.model.diffusion_model, restoration[1].control_model]
    pieces = _Pieces(*networks)
    try:
        out = call_node("KSampler", model, 3, 2, 4.0, "euler", "normal", positive, negative, latent)[0]["samples"]
    finally:
        pieces.close()
    return out, pieces.rows


def test_cpu_feed_forward_switch(restoration, feed_forward):
    base = restoration[0]
    old_prompt = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32", "fastest_exact")[0]
    pieces = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32", "fastest_exact", "in_pieces")[0]
    whole = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32", "fastest_exact", "whole")[0]
    again = call_node("DiffBIRModelSampling", pieces, "v2.1", "fastest_exact", "fp32", "fastest_exact", "whole")[0]

    def wrapped(patcher):
        from comfy.patcher_extension import WrappersMP

        return feed_forward.WRAPPER_KEY in patcher.wrappers.get(WrappersMP.DIFFUSION_MODEL, {})

    def choice(patcher):
        return feed_forward.chosen(patcher.model_options.get("transformer_options"))

    assert wrapped(old_prompt) and wrapped(pieces) and not wrapped(whole) and not wrapped(base)
    assert [choice(p) for p in (old_prompt, pieces, whole, base)] == ["in_pieces", "in_pieces", "whole", "in_pieces"]
    assert not wrapped(again) and choice(again) == "whole"  # the last DiffBIR Model Sampling decides
    with pytest.raises(ValueError, match="cpu_feed_forward must be one of in_pieces, whole"):
        call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32", "fastest_exact", "chunked")


def test_both_networks_follow_the_switch(restoration):
    base = restoration[0]
    pieces, pieces_rows = _sample(call_node("DiffBIRModelSampling", base, "v2.1")[0], restoration)
    whole, whole_rows = _sample(call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32",
                                          "fastest_exact", "whole")[0], restoration)
    _, bare_rows = _sample(base, restoration)  # no DiffBIR Model Sampling: the IRControlNet alone goes in pieces
    assert max(whole_rows) == 2048 and max(pieces_rows) == 1024
    # each 2048-token call became two pieces, in both networks; without the node only the IRControlNet's
    assert pieces_rows.count(1024) == 2 * whole_rows.count(2048) + whole_rows.count(1024)
    assert 0 < bare_rows.count(2048) < whole_rows.count(2048)
    # the same maths: measured 0 here (MKL, pieces of 1024 rows); another BLAS may sum in another order, as
    # the attention switch does (7.9e-6 of the largest latent value); the bound is 1e-5 of it
    assert float((pieces - whole).abs().max()) <= 1e-5 * float(whole.abs().max())


def test_tiled_sampling_goes_in_pieces_in_every_window(restoration):
    base = call_node("DiffBIRModelSampling", restoration[0], "v2.1")[0]
    tiled = call_node("DiffBIRTiledSampling", base, 192, 64, 1, "gaussian")[0]
    _, rows = _sample(tiled, restoration)
    assert set(rows) == {1024, 128}  # windows of 24 x 24 latents: 2 x 576 tokens, one piece of 1024 and the rest
