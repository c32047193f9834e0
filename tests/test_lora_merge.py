"""The LoRA workflow's reference, stage by stage: ComfyUI's own LoRA loader (LoraLoaderModelOnly, as the
shipped "DiffBIR v2.1 with a LoRA (stock KSampler)" workflow uses it) on the end-to-end test's fp32 SD 2.x
UNet and kohya-layout LoRA must patch exactly the weights devkit.lora_merge merges, by the same amounts.
The whole workflow is compared with the official pipeline on the merged weights in
tests/test_end_to_end_variants.py (DIFFBIR_SLOW_TESTS=1)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from devkit import lora_merge, model_factory
from devkit.model_factory import install_model

WORKFLOW = Path(__file__).resolve().parent.parent / "example_workflows" / \
    "DiffBIR v2.1 with a LoRA (stock KSampler).json"
# The shipped workflow's LoRA strength (its LoraLoaderModelOnly), as the end-to-end golden reads it.
[STRENGTH] = [n["widgets_values"][1] for n in json.loads(WORKFLOW.read_text())["nodes"]
              if n["type"] == "LoraLoaderModelOnly"]
# Bound: both sides add (strength * alpha / rank) * up @ down to the float32 weight in float32; the
# order of the products may differ, so a weight may land a float32 rounding or two away. Measured: max
# 0.0 (bit-equal) on all 84 patched weights, ComfyUI 0.3.75 and 0.33.0. The patched weights reach 0.284
# (float32 ulp there 3.0e-8; rms ~0.04); bound 1e-7, about 3 ulps of the largest. A wrong key, scale or
# strength fails by orders of magnitude: every patched weight moves by at least 0.044 (max per tensor;
# the deltas' rms is 30 % of the weights').
MAX_WEIGHT_DIFF = 1e-7


def unet_weights(path) -> dict:
    """Only the UNet of an SD checkpoint (the text encoder and VAE are not LoRA-patched here)."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(lora_merge.UNET_PREFIX)}


@pytest.fixture(scope="module")
def files():
    checkpoint = model_factory.sd2_checkpoint("small", dtype=torch.float32)
    lora = model_factory.sd2_lora_file(**model_factory.E2E_LORA)
    return checkpoint, lora


def test_comfyui_lora_loader_equals_merged_weights(comfy, files):
    checkpoint, lora_path = files
    unet = unet_weights(checkpoint)
    lora = load_file(str(lora_path))
    merged = lora_merge.merge_unet_lora(unet, lora, STRENGTH, model_factory.UNET_VARIANTS["small"]["num_res_blocks"][0])
    changed = {k for k in unet if not torch.equal(unet[k], merged[k])}
    modules = {k.split(".")[0] for k in lora}
    assert len(changed) == len(modules) == 12 * 7  # 12 targets per transformer; small UNet: 2 down, 1 mid, 4 up

    from comfy.sd import load_diffusion_model_state_dict

    name = install_model("loras", lora_path, "e2e-kohya-lora.safetensors")
    model = load_diffusion_model_state_dict(dict(unet))
    with torch.inference_mode():
        patched_model = comfy.node_class("LoraLoaderModelOnly")().load_lora_model_only(model, name, STRENGTH)[0]
    # Every LoRA module is mapped to a weight by ComfyUI (none is "not loaded").
    assert len(patched_model.patches) == len(modules)
    patched_model.patch_model()
    try:
        ours = {lora_merge.UNET_PREFIX + k: v.detach().clone() for k, v in
                patched_model.model.diffusion_model.state_dict().items()}
    finally:
        patched_model.unpatch_model()
    assert set(ours) == set(merged)
    worst = max((ours[k].float() - merged[k].float()).abs().max().item() for k in merged)
    print(f"ComfyUI LoRA-patched UNet vs merged: max {worst:.3g} over {len(changed)} patched weights")
    assert worst <= MAX_WEIGHT_DIFF
    smallest = min((merged[k] - unet[k]).abs().max().item() for k in changed)
    assert smallest > 1e-2, "a LoRA delta too small to tell a wrong key or scale from rounding"
