"""DiffBIR Model Sampling's cpu_precision switch: fp32 (the default) leaves sampling exactly as before; bf16
runs the UNet's and the IRControlNet's heavy operations in bfloat16 on a CPU with bf16 instructions and
stays fp32, with a warning, on one without. Tiny random models, real ComfyUI."""

from __future__ import annotations

import logging

import pytest
import torch

from devkit.comfy_runtime import call_node, conditioned, restoration_models


@pytest.fixture(scope="module")
def precision(comfy):
    return comfy.pack_module("diffbir_modules.cpu_precision")


@pytest.fixture(scope="module")
def models(comfy, sd2_tiny):
    return restoration_models(sd2_tiny, "irc-tiny-precision.pth")


@pytest.fixture(scope="module")
def restoration(models):
    return conditioned(models, 64, 64)


def _sample(model, restoration, seen: list) -> torch.Tensor:
    """Two KSampler steps (cfg 4), recording the dtype of the first convolution's output in the UNet and
    in the IRControlNet."""
    _, control, positive, negative, latent = restoration
    layers = (model.model.diffusion_model.input_blocks[0][0], control.control_model.input_blocks[0][0])
    handles = [layer.register_forward_hook(lambda _m, _a, out, name=name: seen.append((name, out.dtype)))
               for name, layer in zip(("unet", "ircontrolnet"), layers)]
    try:
        return call_node("KSampler", model, 3, 2, 4.0, "euler", "normal", positive, negative, latent)[0]["samples"]
    finally:
        for handle in handles:
            handle.remove()


def test_fp32_is_the_default_and_changes_nothing(restoration):
    base = restoration[0]
    before = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact")[0]  # a prompt saved before the switch
    fp32 = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32")[0]
    seen = []
    out = _sample(fp32, restoration, seen)
    assert {dtype for _, dtype in seen} == {torch.float32} and {name for name, _ in seen} == {"unet", "ircontrolnet"}
    assert torch.equal(out, _sample(before, restoration, []))


def test_bf16_computes_the_unet_and_the_ircontrolnet_in_bf16(restoration, precision):
    if not precision.native_bf16():
        pytest.skip("this CPU has no bf16 instructions (the switch stays fp32: the next test)")
    base = restoration[0]
    fp32 = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32")[0]
    bf16 = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "bf16")[0]
    seen = []
    out = _sample(bf16, restoration, seen)
    assert {dtype for _, dtype in seen} == {torch.bfloat16} and {name for name, _ in seen} == {"unet", "ircontrolnet"}
    reference = _sample(fp32, restoration, [])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # bf16 keeps 8 bits of mantissa: measured 0.039 of the largest latent value (tiny random models, 2 steps
    # of euler at cfg 4); the bound leaves 2.5x. Not equal: the switch must have changed the arithmetic.
    difference = float((out - reference).abs().max() / reference.abs().max())
    assert 0 < difference < 0.1
    # a later DiffBIR Model Sampling decides: fp32 after bf16 is fp32 again
    again = call_node("DiffBIRModelSampling", bf16, "v2.1", "fastest_exact", "fp32")[0]
    assert torch.equal(_sample(again, restoration, []), reference)


def test_bf16_with_tiled_sampling(models, precision):
    """Both are calc_cond_batch wrappers: every tile's model call runs in bf16 and the blend stays close."""
    if not precision.native_bf16():
        pytest.skip("this CPU has no bf16 instructions")
    wide = conditioned(models, 64, 128, seed=1)
    outputs = {}
    for choice in ("fp32", "bf16"):
        model = call_node("DiffBIRModelSampling", wide[0], "v2.1", "fastest_exact", choice)[0]
        tiled = call_node("DiffBIRTiledSampling", model, 64, 32, 1, "gaussian")[0]
        seen = []
        outputs[choice] = _sample(tiled, wide, seen)
        assert {dtype for _, dtype in seen} == {torch.float32 if choice == "fp32" else torch.bfloat16}
        assert len(seen) >= 2 * 3 * 2  # two networks x at least 3 tiles x 2 steps
    difference = float((outputs["bf16"] - outputs["fp32"]).abs().max() / outputs["fp32"].abs().max())
    assert 0 < difference < 0.1  # measured 0.033 (3 tiles of 64 px); the bound as in the untiled test


def test_bf16_on_a_cpu_without_bf16_instructions_stays_fp32_with_a_warning(restoration, precision, monkeypatch,
                                                                          caplog):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    base = restoration[0]
    with caplog.at_level(logging.WARNING, logger="DiffBIR"):
        kept = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "bf16")[0]
    assert "no bf16 instructions" in caplog.text and "stays in fp32" in caplog.text
    fp32 = call_node("DiffBIRModelSampling", base, "v2.1", "fastest_exact", "fp32")[0]
    assert torch.equal(_sample(kept, restoration, []), _sample(fp32, restoration, []))


@pytest.mark.parametrize("flags,native", [
    ("flags\t\t: fpu avx512f avx512_bf16 amx_tile", True),
    ("flags\t\t: fpu avx512f amx_bf16", True),
    ("Features\t: fp asimd bf16 i8mm", True),  # Arm (Graviton 3, Neoverse V1 and later)
    ("flags\t\t: fpu sse4_2 avx2 avx512f avx512bw", False),
])
def test_native_bf16_reads_the_cpu_flags(precision, tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some cpu\n{flags}\n\n")
    assert precision.native_bf16(str(cpuinfo)) is native


@pytest.mark.parametrize("flags,native", [
    ("flags\t\t: fpu avx512f avx512_fp16 amx_tile", True),  # Intel Xeon 4th generation
    ("flags\t\t: fpu avx512f amx_fp16", True),
    ("Features\t: fp asimd fphp asimdhp", True),  # Arm with fp16 arithmetic
    ("flags\t\t: fpu sse4_2 avx2 f16c avx512f avx512_bf16", False),  # f16c only converts
])
def test_native_fp16_reads_the_cpu_flags(precision, tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some cpu\n{flags}\n\n")
    assert precision.native_fp16(str(cpuinfo)) is native


@pytest.mark.parametrize("bf16,fp16", [(False, False), (True, True), (True, False)])
def test_emulated_follows_the_instructions_of_each_half_precision(precision, monkeypatch, bf16, fp16):
    monkeypatch.setattr(precision, "native_bf16", lambda: bf16)
    monkeypatch.setattr(precision, "native_fp16", lambda: fp16)
    assert precision.emulated_on_this_cpu(torch.bfloat16) is not bf16
    assert precision.emulated_on_this_cpu(torch.float16) is not fp16
    assert precision.emulated_on_this_cpu(torch.float32) is False


def test_unknown_precision_is_refused(restoration):
    with pytest.raises(ValueError, match="cpu_precision must be one of fp32, bf16"):
        call_node("DiffBIRModelSampling", restoration[0], "v2.1", "fastest_exact", "fp16")
