"""Shipped workflows with one official option changed, end to end against the official entry point:
restoration guidance through the shipped sweep workflow against official v2.0 (goldens
tests/golden/end_to_end/guidance_*, made by tools/goldens/make_end_to_end_guidance.py).

As in test_end_to_end_parity.py, the SHIPPED workflow JSON is loaded and driven through a headless
server (fp32 text encoder, fp32 checkpoint); the test edits a loaded copy only where the official
option differs from the shipped default, and says why next to each edit."""

import json

import numpy as np
import pytest
from PIL import Image
from test_end_to_end_parity import GOLDEN, MAX_LEVELS, MAX_SHARE_OFF, REPO, fp32_server

from scripts import comfy_headless

pytestmark = [pytest.mark.server, pytest.mark.slow]

__all__ = ["fp32_server"]  # the shared server fixture, used by name
GUIDANCE = json.loads((GOLDEN / "guidance_cases.json").read_text())


def compare(ours: np.ndarray, official: np.ndarray, what: str) -> None:
    """MAX_LEVELS / MAX_SHARE_OFF of test_end_to_end_parity.py (their derivation is written there)."""
    assert ours.shape == official.shape, f"{what}: size {ours.shape}, official {official.shape}"
    diff = np.abs(ours.astype(np.int16) - official.astype(np.int16))
    print(f"{what}: max {diff.max()} mean {diff.mean():.4f} levels, {(diff > 0).mean() * 100:.3f}% differ")
    assert diff.max() <= MAX_LEVELS, f"{what}: max {diff.max()} mean {diff.mean():.3f} uint8 levels off the official"
    assert (diff > 0).mean() <= MAX_SHARE_OFF, f"{what}: {(diff > 0).mean() * 100:.2f}% of values off the official"


def guidance_sweep_prompt(server) -> tuple[dict, str, list[float]]:
    """The shipped sweep set to what official v2.0 can run, sweeping the golden's scales (a subset of the
    workflow's list: each scale is a whole run, minutes on a CPU); returns (prompt, save id, shipped scales)."""
    workflow = json.loads((REPO / "example_workflows" / f"{GUIDANCE['workflow']}.json").read_text())
    prompt = comfy_headless.workflow_to_prompt(workflow, server.object_info())
    Image.open(GOLDEN / "guidance_lq.png").save(server.base / "input" / "e2e_guidance.png")
    scales = None
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "LoadImage":
            inputs["image"] = "e2e_guidance.png"
        elif kind == "DiffBIRSpacedSigmas":
            inputs["steps"] = GUIDANCE["steps"]
        elif kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = "sd2-small-fp32.safetensors"
        elif kind == "DiffBIRIRControlNetLoader":
            inputs["ircontrolnet_name"] = "ircontrolnet-small.pth"
        elif kind == "DiffBIRStage1Loader":
            assert inputs["model_name"] == GUIDANCE["stage1"]
        elif kind == "RandomNoise":
            assert inputs["noise_seed"] == GUIDANCE["seed"]
        elif kind == "DiffBIRGuidanceScales":
            scales = [float(s) for s in inputs["scales"].split(",")]
            inputs["scales"] = ", ".join(GUIDANCE["official"])
        elif kind == "DiffBIRRestorationGuidance":
            assert (inputs["space"], inputs["start_percent"], inputs["end_percent"], inputs["repeat"]) == \
                (GUIDANCE["space"], 0.0, 1.0, 1)  # official --g_space latent --g_start 1001 --g_stop -1
            # The sweep's w_mse in latent space crashes officially; mse is the official latent loss.
            inputs["loss"] = GUIDANCE["loss"]
            # The official per-step re-encode draws a posterior sample from the sampler's stream.
            inputs["latent_target"] = "posterior_sample"
            # The official rule, one full pull per step (the sweep normalises the pull to 50 steps).
            inputs["reference_steps"] = 0
    [resize_id] = [k for k, n in prompt.items() if n["class_type"] == "DiffBIRResizeToOutputSize"]
    # Each scale's image before the grid draws its labels: one saved image per scale, in list order.
    prompt["e2e_save"] = {"class_type": "SaveImage", "inputs": {"images": [resize_id, 0],
                                                                "filename_prefix": "e2e_guidance"}}
    return prompt, "e2e_save", scales


@pytest.mark.once
def test_guidance_sweep_matches_official_v20(fp32_server):
    prompt, save_id, shipped_scales = guidance_sweep_prompt(fp32_server)
    assert set(GUIDANCE["official"]) <= {f"{s:g}" for s in shipped_scales}, "the sweep's scales changed"
    entry = fp32_server.run(prompt, timeout=3600)
    paths = fp32_server.output_images(entry, save_id)
    assert len(paths) == len(GUIDANCE["official"])
    for (scale, name), path in zip(GUIDANCE["official"].items(), paths, strict=True):
        ours = np.asarray(Image.open(path).convert("RGB"))
        official = np.asarray(Image.open(GOLDEN / name).convert("RGB"))
        assert official.shape[:2][::-1] == tuple(GUIDANCE["output_size"])
        compare(ours, official, f"guidance scale {scale}")

