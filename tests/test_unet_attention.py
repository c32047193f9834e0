"""DiffBIR Model Sampling's unet_attention switch: the SD UNet's attention runs torch's fused
scaled_dot_product_attention (as the official code) where ComfyUI's global choice is one of its slow CPU
defaults, keeps a faster choice and a user's own override, and changes nothing but the summation order;
equal cond/uncond halves of the first self-attention are attended once, with the same bits."""

from __future__ import annotations

import pytest
import torch

from devkit import model_factory
from devkit.comfy_runtime import call_node
from devkit.model_factory import install_model


@pytest.fixture(scope="module")
def base_model(comfy):
    ckpt = install_model("checkpoints", model_factory.sd2_checkpoint("tiny"))
    return call_node("CheckpointLoaderSimple", ckpt)[0]


def _unet_output(patcher, calls_log):
    """One UNet evaluation with the patcher's transformer_options (as the samplers pass them), and how
    many attention calls went through attention_pytorch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, 1024, generator=g)
    t = torch.tensor([700.0, 30.0])
    before = len(calls_log)
    with torch.inference_mode():
        out = patcher.model.diffusion_model(
            x, t, context=context, transformer_options=dict(patcher.model_options.get("transformer_options", {})))
    return out, len(calls_log) - before


@pytest.mark.parametrize("global_choice", ["attention_split", "attention_sub_quad", "attention_pytorch"])
def test_unet_attention_switch(base_model, monkeypatch, global_choice):
    from comfy.ldm.modules import attention

    monkeypatch.setattr(attention, "optimized_attention", getattr(attention, global_choice))
    calls = []
    sdpa = attention.attention_pytorch
    monkeypatch.setattr(attention, "attention_pytorch", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    fast = call_node("DiffBIRModelSampling", base_model, "v2.1", "fastest_exact")[0]
    kept = call_node("DiffBIRModelSampling", base_model, "v2.1", "comfyui")[0]
    old_prompt = call_node("DiffBIRModelSampling", base_model, "v2.1")[0]  # saved before the switch existed
    slow_default = global_choice != "attention_pytorch"
    for patcher in (fast, old_prompt):  # the override also shares equal cond/uncond halves
        assert "optimized_attention_override" in patcher.model_options["transformer_options"]
    assert "optimized_attention_override" not in kept.model_options.get("transformer_options", {})
    assert "optimized_attention_override" not in base_model.model_options.get("transformer_options", {})

    out_fast, n_fast = _unet_output(fast, calls)
    out_kept, n_kept = _unet_output(kept, calls)
    if slow_default:
        assert n_fast > 0 and n_kept == 0
    # float32 summation order only: measured 1.14e-6 of the largest value (tiny UNet, split and
    # sub-quadratic alike); the bound leaves ~9x for other thread counts and torch builds
    assert torch.allclose(out_fast, out_kept, rtol=1e-5, atol=1e-5 * float(out_kept.abs().max()))


@pytest.mark.parametrize("global_choice", ["attention_pytorch", "attention_split"])
def test_equal_cfg_halves_share_the_first_self_attention(comfy, base_model, monkeypatch, global_choice):
    """cfg's batch [cond, uncond] with one noisy latent and timestep: the halves stay equal up to the first
    cross-attention, so exactly one attention call (the first self-attention) runs on one half, and the
    UNet's output has the same bits as without the sharing."""
    from comfy.ldm.modules import attention

    shared = comfy.pack_module("diffbir_modules.attention")
    monkeypatch.setattr(attention, "optimized_attention", getattr(attention, global_choice))
    verdicts = []
    equal_halves = shared._equal_halves
    monkeypatch.setattr(shared, "_equal_halves", lambda *t: verdicts.append(equal_halves(*t)) or verdicts[-1])
    fast = call_node("DiffBIRModelSampling", base_model, "v2.1", "fastest_exact")[0]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 16, 16, generator=g).repeat(2, 1, 1, 1)
    context = torch.randn(2, 77, 1024, generator=g)  # cond and uncond prompts differ
    t = torch.tensor([400.0, 400.0])

    def unet(transformer_options, latent=x):
        with torch.inference_mode():
            return fast.model.diffusion_model(latent, t, context=context,
                                              transformer_options=dict(transformer_options))

    options = fast.model_options["transformer_options"]
    out = unet(options)
    assert verdicts.count(True) == 1 and len(verdicts) > 2
    unshared = dict(options, optimized_attention_override=lambda func, q, k, v, *a, **kw: (
        attention.attention_pytorch if global_choice != "attention_pytorch" else func)(q, k, v, *a, **kw))
    assert torch.equal(out, unet(unshared))
    verdicts.clear()
    unet(options, torch.randn(2, 4, 16, 16, generator=g))  # two different latents: nothing is shared
    assert verdicts.count(True) == 0


def test_a_users_own_attention_override_is_kept(base_model, monkeypatch):
    from comfy.ldm.modules import attention

    monkeypatch.setattr(attention, "optimized_attention", attention.attention_sub_quad)
    mine = base_model.clone()

    def my_override(func, *args, **kwargs):
        return func(*args, **kwargs)

    mine.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = my_override
    patched = call_node("DiffBIRModelSampling", mine, "v2", "fastest_exact")[0]
    assert patched.model_options["transformer_options"]["optimized_attention_override"] is my_override


def test_unknown_choice_is_refused(base_model):
    with pytest.raises(ValueError, match="unet_attention must be one of fastest_exact, comfyui"):
        call_node("DiffBIRModelSampling", base_model, "v2", "flash")
