"""Parity with the official DiffBIR ControlLDM (main 3f8b530) on the same small random weights:
the condition encoding, the control residuals and the model output, fp32 on the CPU. Goldens:
tests/golden/ircontrolnet/, made by tools/goldens/make_ircontrolnet.py (run it in .venv-official)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from devkit import model_factory
from devkit.model_factory import install_model

GOLDEN = Path(__file__).resolve().parent / "golden" / "ircontrolnet"
TOLERANCE = 1e-4  # max abs difference, fp32 on the CPU


@pytest.fixture(scope="module")
def small(comfy):
    ckpt = install_model("checkpoints", model_factory.sd2_checkpoint("small"))
    irc_name = install_model("diffbir", model_factory.ircontrolnet_file("small", fmt="safetensors"),
                             "irc-small.safetensors")
    with torch.inference_mode():
        model, _, vae = comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(ckpt)[:3]
        control = comfy.node_class("DiffBIRIRControlNetLoader").execute(irc_name, "auto").result[0]
    assert model.model.get_dtype() == torch.float32 and control.compute_dtype() == torch.float32
    return model, vae, control


def attach(comfy, small, c_img_shape_image):
    model, vae, control = small
    with torch.inference_mode():
        pos = comfy.node_class("DiffBIRApplyIRControlNet").execute(
            [[torch.zeros(1, 77, 1024), {}]], [[torch.zeros(1, 77, 1024), {}]], control, vae, c_img_shape_image,
            1.0, 0.0, 1.0, "noise", "64").result[0]
    return pos[0][1]["control"]


def condition_golden():
    return load_file(str(GOLDEN / "condition.safetensors"))


def prepared_control(comfy, small, strength, width):
    """Our control object holding the official condition latent (cropped to ``width`` columns)."""
    model = small[0]
    golden = condition_golden()
    c = attach(comfy, small, golden["image"].movedim(1, -1))
    c = c.with_condition(golden["c_img"][..., :width])
    c.strength = float(strength)
    c.pre_run(model.model, lambda p: model.model.model_sampling.percent_to_sigma(p))
    return c


def k_diffusion_input(model, x_t, t):
    """x in ComfyUI's sampler space for the DDPM x_t at integer timesteps t, and its sigma."""
    sigma = model.model.model_sampling.sigma(t.float())
    return x_t * (sigma**2 + 1).sqrt().view(-1, 1, 1, 1), sigma


def test_condition_matches_official(comfy, small):
    golden = condition_golden()
    c = attach(comfy, small, golden["image"].movedim(1, -1).contiguous())
    assert c.condition.shape == golden["c_img"].shape == (1, 4, 8, 16)
    diff = (c.condition - golden["c_img"]).abs().max().item()
    print(f"condition latent max abs diff: {diff:.3g}")
    assert diff < TOLERANCE


def test_residuals_match_official(comfy, small):
    model = small[0]
    g = load_file(str(GOLDEN / "residuals.safetensors"))
    c = prepared_control(comfy, small, g["strength"].item(), g["x_t"].shape[-1])
    context = g["contexts"][g["context_index"]].float()
    with torch.inference_mode():
        x, sigma = k_diffusion_input(model, g["x_t"], g["t"])
        assert torch.equal(model.model.model_sampling.timestep(sigma).round().long(), g["t"])
        out = c.get_control(x, sigma, {"c_crossattn": context}, 1, {})
        c.cleanup()
    ours = out["output"] + out["middle"]  # official order: zero convs by input block, then the middle
    official = [g[f"residual_{i}"] for i in range(len([k for k in g if k.startswith("residual_")]))]
    assert [tuple(r.shape) for r in ours] == [tuple(r.shape) for r in official]
    diff = max((a - b).abs().max().item() for a, b in zip(ours, official))
    scale = max(b.abs().max().item() for b in official)
    print(f"control residuals max abs diff: {diff:.3g} (largest residual {scale:.3g})")
    assert diff < TOLERANCE


@pytest.mark.parametrize("case", ["residuals", "a", "b", "c", "d"])
def test_model_output_matches_official(comfy, small, case):
    """eps of ComfyUI's UNet (the MODEL of CheckpointLoaderSimple, through apply_model) with our
    control, against the official ControlLDM forward."""
    model = small[0]
    if case == "residuals":
        g = load_file(str(GOLDEN / "residuals.safetensors"))
    else:
        every = load_file(str(GOLDEN / "eps.safetensors"))
        g = {k.split(".", 1)[1]: v for k, v in every.items() if k.startswith(case + ".")}
        g["contexts"] = every["contexts"]
    c = prepared_control(comfy, small, g["strength"].item(), g["x_t"].shape[-1])
    context = g["contexts"][g["context_index"]].float()
    with torch.inference_mode():
        x, sigma = k_diffusion_input(model, g["x_t"], g["t"])
        cond = {"c_crossattn": context}
        control = c.get_control(x, sigma, cond, 1, {})
        denoised = model.model.apply_model(x, sigma, c_crossattn=context, control=control)
        plain = model.model.apply_model(x, sigma, c_crossattn=context)
        c.cleanup()
    eps = (x - denoised) / sigma.view(-1, 1, 1, 1)
    diff = (eps - g["eps"]).abs().max().item()
    without_control = ((x - plain) / sigma.view(-1, 1, 1, 1) - g["eps"]).abs().max().item()
    assert without_control > 1000 * TOLERANCE, "the golden case does not exercise the control"
    print(f"eps ({case}: t {g['t'].tolist()}, strength {g['strength'].item()}) max abs diff: {diff:.3g}")
    assert diff < TOLERANCE
