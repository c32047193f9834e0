"""A kohya-style SD 2.x UNet LoRA merged into checkpoint weights: the reference the LoRA workflow is
compared with (the official DiffBIR code has no LoRA, but a LoRA is a weight delta, so the official
pipeline on merged weights is what a LoRA-patched run must give).

Layout: kohya's ``networks.lora`` on a diffusers UNet, as published SD 2.x LoRAs are:
``lora_unet_<diffusers module path, dots as underscores>.{lora_down,lora_up}.weight`` and ``.alpha``,
on every Linear / 1x1 conv inside the transformer blocks (KOHYA_TARGETS). The merge is
``W' = W + strength * (alpha / rank) * up @ down`` in float32 (rank = rows of ``lora_down``), what
ComfyUI's LoRA loader applies to each weight it maps.

The diffusers <-> ldm (checkpoint) block naming is written out here from the UNet layout, not taken
from ComfyUI, so that the comparison also checks ComfyUI's key mapping.
"""

from __future__ import annotations

import torch

UNET_PREFIX = "model.diffusion_model."
# Modules kohya's LoRA trains in each SD 2.x transformer (Transformer2DModel) block.
KOHYA_TARGETS = ("proj_in", "proj_out", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")


def diffusers_path(ldm_key: str, num_res_blocks: int) -> str | None:
    """The diffusers module path of a UNet weight key (without ``model.diffusion_model.`` and
    ``.weight``) inside a transformer block, or None when it is not in one or not a kohya target.
    Per level the ldm UNet has ``num_res_blocks`` input blocks (resnet + transformer, index ``.1``) and
    a downsample block; on the way up ``num_res_blocks + 1`` output blocks per level."""
    if not ldm_key.endswith(".weight"):
        return None
    parts = ldm_key[: -len(".weight")].split(".")
    rest = ".".join(parts[3:]) if parts[0] != "middle_block" else ".".join(parts[2:])
    if not any(rest == t or rest.endswith("." + t) for t in KOHYA_TARGETS):
        return None
    per_level = num_res_blocks + 1
    if parts[0] == "input_blocks" and parts[2] == "1":
        level, index = divmod(int(parts[1]) - 1, per_level)
        return f"down_blocks.{level}.attentions.{index}.{rest}" if index < num_res_blocks else None
    if parts[0] == "middle_block" and parts[1] == "1":
        return f"mid_block.attentions.0.{rest}"
    if parts[0] == "output_blocks" and parts[2] == "1":
        level, index = divmod(int(parts[1]), per_level)
        return f"up_blocks.{level}.attentions.{index}.{rest}"
    return None


def kohya_name(diffusers: str) -> str:
    return "lora_unet_" + diffusers.replace(".", "_")


def lora_targets(unet_keys, num_res_blocks: int) -> dict:
    """{kohya module name: ldm key} for the UNet weight keys (without the checkpoint prefix)."""
    targets = {}
    for key in unet_keys:
        path = diffusers_path(key, num_res_blocks)
        if path is not None:
            targets[kohya_name(path)] = key
    return targets


def lora_delta(lora: dict, name: str, weight_shape) -> tuple[float, torch.Tensor]:
    """(alpha / rank, up @ down) of one module, the product in float32 and the weight's shape (1x1
    convs too)."""
    down = lora[f"{name}.lora_down.weight"].float()
    up = lora[f"{name}.lora_up.weight"].float()
    rank = down.shape[0]
    alpha = float(lora[f"{name}.alpha"]) if f"{name}.alpha" in lora else rank
    return alpha / rank, (up.flatten(1) @ down.flatten(1)).reshape(weight_shape)


def merge_unet_lora(checkpoint: dict, lora: dict, strength: float, num_res_blocks: int) -> dict:
    """A copy of ``checkpoint`` (SD layout, ``model.diffusion_model.*`` keys) with the LoRA merged into
    the UNet at ``strength``. Every module of the LoRA must map to a weight: a LoRA key this naming does
    not reach is an error, never silently skipped."""
    unet_keys = [k[len(UNET_PREFIX):] for k in checkpoint if k.startswith(UNET_PREFIX)]
    targets = lora_targets(unet_keys, num_res_blocks)
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in lora}
    unknown = sorted(modules - set(targets))
    if unknown:
        raise KeyError(f"LoRA modules with no UNet weight: {unknown[:5]}")
    merged = dict(checkpoint)
    for name in sorted(modules):
        key = UNET_PREFIX + targets[name]
        weight = checkpoint[key]
        scale, delta = lora_delta(lora, name, weight.shape)
        merged[key] = (weight.float() + (strength * scale) * delta).to(weight.dtype)
    return merged
