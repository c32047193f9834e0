"""Whole guided runs reproduced in ComfyUI (tests/golden/guidance/run_*.safetensors, made by
tools/goldens/make_guidance.py with the official v2.0 SpacedSampler + cond_fn on ControlLDM = the small
random SD 2.x checkpoint + model_factory's random IRControlNet, right after torch.manual_seed(231)).

Our side is the graph a user builds, node classes called in process: CheckpointLoaderSimple ->
DiffBIR Model Sampling (v2) -> DiffBIR Restoration Guidance -> DiffBIR Text Encode (x2) -> DiffBIR
Apply IRControlNet -> CFGGuider -> SamplerCustomAdvanced (RandomNoise 231, DiffBIR Spaced Sampler with
the official noise stream, DiffBIR Spaced Sigmas 4) -> VAEDecode. The official draws are exactly the
seed's stream, so nothing is injected: latent-space guidance takes its posterior samples from the
spaced sampler's stream, in the official order."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "golden" / "guidance"
SEED = 231
STEPS = 4
CFG = 4.0
NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"
CASES = {"rgb_wmse": ("w_mse", "rgb"), "latent_mse": ("mse", "latent")}


@pytest.fixture(scope="module")
def models(stage2_small):
    return stage2_small


def run(comfy, models, g, loss, space, scale):
    model = comfy.call_node("DiffBIRModelSampling", models["model"], "v2")[0]
    image = g["clean"].movedim(1, -1)
    model = comfy.call_node("DiffBIRRestorationGuidance", model, models["vae"], image, scale=scale, loss=loss,
                 space=space, repeat=int(g["repeat"]), latent_target="posterior_sample", reference_steps=0,
                 rgb_memory="checkpoint")[0]
    pos = comfy.call_node("DiffBIRTextEncode", models["clip"], "", True, False)[0]
    neg = comfy.call_node("DiffBIRTextEncode", models["clip"], NEGATIVE, True, False)[0]
    irc = comfy.call_node("DiffBIRIRControlNetLoader", models["irc_name"], "v2")[0]
    pos, neg, latent = comfy.call_node("DiffBIRApplyIRControlNet", pos, neg, irc, models["vae"], image, 1.0)
    guider = comfy.call_node("CFGGuider", model, pos, neg, CFG)[0]
    sampler = comfy.call_node("DiffBIRSpacedSampler", "official")[0]
    sigmas = comfy.call_node("DiffBIRSpacedSigmas", model, STEPS)[0]
    noise = comfy.call_node("RandomNoise", SEED)[0]
    out = comfy.call_node("SamplerCustomAdvanced", noise, guider, sampler, sigmas, latent)[0]
    decoded = comfy.call_node("VAEDecode", models["vae"], out)[0]
    return out["samples"], decoded


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_guided_spaced_run_matches_official(comfy, models, case):
    g = load_file(str(GOLDEN / f"run_{case}.safetensors"))
    stream = torch.Generator().manual_seed(SEED)
    assert all(torch.equal(torch.randn(tuple(d.shape), generator=stream), d) for d in g["draws"])
    loss, space = CASES[case]
    samples, decoded = run(comfy, models, g, loss, space, float(g["g_scale"]))
    latent = model_factory_scale(samples)
    official = g["z"]
    official_img = ((g["x"] + 1) / 2).clamp(0, 1).movedim(1, -1)
    err_latent = (latent - official).abs().max().item()
    err_image = (decoded[:, :64, :64] - official_img).abs().max().item()
    effect = (official - g["z_unguided"]).abs().max().item()
    print(f"guided run {case}: latent max diff {err_latent:.2e} (max |z| {official.abs().max():.3g}, guidance "
          f"changed z by up to {effect:.3g}); decoded image max diff {err_image:.2e}")
    assert effect > 0.1  # the guidance mattered
    assert err_latent < 1e-4 * max(1.0, official.abs().max().item())
    assert err_image < 1e-4


def model_factory_scale(samples):
    return samples * 0.18215  # ComfyUI LATENT (unscaled) -> the official z (x 0.18215)
