"""Reading an IRControlNet file: every published wrapper and format (through the pack's one weights
reader), the release it is (v1, v2, v2.1: same architecture, so only a known content hash or the v1
full-checkpoint layout tells), and the loaded control object template."""

from __future__ import annotations

import hashlib
import logging
import os

import comfy.controlnet
import comfy.model_management
import comfy.ops
import comfy.utils
import torch

from .. import weights_io
from .control import IRControlNetControl
from .network import IRControlNet, IRControlNetError, config_from_state_dict

log = logging.getLogger("DiffBIR")

VERSIONS = ("v1", "v2", "v2.1")

# Fingerprint (see ``fingerprint``) -> version of the published IRControlNet files. Empty until the
# published files' fingerprints are recorded: the loader then reports "unknown" and the user's
# ``version`` choice decides. To fill it: load each published file, copy the fingerprint the loader
# logs, and add it here (fp32 and fp16 copies of a file share a fingerprint).
KNOWN_FINGERPRINTS: dict[str, str] = {
    # "<64 hex digits>": "v2",  # v2.pth
}

EXPECTED_FILE = ("a DiffBIR IRControlNet: v2.pth, DiffBIR_v2.1.pt, v1_general.pth or v1_face.pth (about 1.45 GB in "
                 "fp32), or a .safetensors copy")


def read_checkpoint(path: str) -> dict:
    """All tensors of an IRControlNet file (any published wrapper or format), as loaded from disk,
    through the pack's one weights reader (which names failed downloads and refuses code)."""
    loaded = weights_io.read_tensors(path, EXPECTED_FILE)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        return loaded["state_dict"]
    return loaded


def _strip_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def extract_state_dict(raw, source: str = "state dict") -> tuple[dict, str]:
    """The IRControlNet tensors of a loaded file, unprefixed, and the wrapper they came in
    ("flat", "state_dict", "module.", "v1 full checkpoint (control_model.*)", ...)."""
    if not isinstance(raw, dict):
        raise IRControlNetError(f"{source}: holds a {type(raw).__name__}, not a state dict of tensors")
    sd, wrapper = raw, "flat"
    for key in ("state_dict", "model", "module"):
        if isinstance(sd.get(key), dict) and len(sd) <= 32:  # a training checkpoint around the weights
            sd, wrapper = sd[key], key
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise IRControlNetError(f"{source}: contains no tensors (keys: {_sample_keys(sd)})")
    keys = list(tensors)
    if all(k.startswith("module.") for k in keys):
        tensors = _strip_prefix(tensors, "module.")
        wrapper += ", module. prefix"
    if any(k.startswith("control_model.") for k in tensors):
        tensors = _strip_prefix(tensors, "control_model.")
        wrapper = "v1 full checkpoint (control_model.*)"
    if "input_hint_block.0.weight" in tensors or any(k.startswith("controlnet_cond_embedding.") for k in tensors):
        raise IRControlNetError(
            f"{source}: this is a stock ControlNet (it has a hint encoder), not a DiffBIR IRControlNet. Load it with "
            "ComfyUI's 'Load ControlNet Model' node; DiffBIR needs v1_general.pth, v1_face.pth, v2.pth or "
            "DiffBIR_v2.1.pt.")
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
           for k in tensors) and "zero_convs.0.0.weight" not in tensors:
        raise IRControlNetError(
            f"{source}: this is a Stable Diffusion checkpoint (UNet/VAE/text encoder), not an IRControlNet. Load SD "
            "2.1 with ComfyUI's 'Load Checkpoint' node and give this loader the IRControlNet file (v2.pth, "
            "DiffBIR_v2.1.pt, v1_general.pth, v1_face.pth).")
    required = ("time_embed.0.weight", "input_blocks.0.0.weight", "zero_convs.0.0.weight",
                "middle_block.0.in_layers.0.weight", "middle_block_out.0.weight")
    missing = [k for k in required if k not in tensors]
    other = weights_io.wrong_kind(source, tensors, "ircontrolnet", "an IRControlNet (v1_general.pth, v1_face.pth, "
                                  "v2.pth or DiffBIR_v2.1.pt)") if missing else None
    if other:
        raise IRControlNetError(str(other))
    if missing:
        raise IRControlNetError(
            f"{source}: not an IRControlNet state dict: {len(tensors)} tensors, missing {', '.join(missing)} "
            f"(first keys: {_sample_keys(tensors)}). Expected the DiffBIR IRControlNet layout (time_embed.*, "
            "input_blocks.*, zero_convs.*, middle_block.*, middle_block_out.*).")
    return tensors, wrapper


def _sample_keys(sd: dict, n: int = 5) -> str:
    keys = list(sd)[:n]
    return ", ".join(map(str, keys)) + (", ..." if len(sd) > n else "")


def fingerprint(sd: dict) -> str:
    """A content hash of an IRControlNet state dict that survives fp32 <-> fp16 conversion and any
    file wrapper: sha256 over the names, shapes and fp16-rounded values of the first conv and every
    bias of the zero convs, the time embedding and middle_block_out (~30k numbers: fast). bf16 copies
    hash differently (rounding), so they show as unknown."""
    h = hashlib.sha256()
    names = ["input_blocks.0.0.weight", "input_blocks.0.0.bias", "time_embed.0.bias", "time_embed.2.bias",
             "middle_block_out.0.bias"]
    names += sorted((k for k in sd if k.startswith("zero_convs.") and k.endswith(".bias")),
                    key=lambda k: int(k.split(".")[1]))
    for name in names:
        if name not in sd:
            continue
        t = sd[name].detach().to("cpu", torch.float32).to(torch.float16).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def identify_version(sd: dict, wrapper: str) -> tuple[str | None, str]:
    """(version or None, how it was decided). The architecture is the same for v1, v2 and v2.1, so
    only a known fingerprint or the v1-only full-checkpoint wrapper identifies a file."""
    fp = fingerprint(sd)
    if fp in KNOWN_FINGERPRINTS:
        return KNOWN_FINGERPRINTS[fp], "known file (content hash)"
    if wrapper.startswith("v1 full checkpoint"):
        return "v1", "v1 full checkpoint layout (control_model.* beside the SD weights)"
    return None, "unknown file: v1, v2 and v2.1 share one architecture and this content hash is not in the table"



def load_ircontrolnet(path: str, version: str = "auto", dtype: torch.dtype | None = None) -> IRControlNetControl:
    """Reads an IRControlNet file and returns a control object template (no condition yet) holding
    the network in a ModelPatcher. ``version``: "auto" (content hash) or one of VERSIONS."""
    raw = read_checkpoint(path)
    sd, wrapper = extract_state_dict(raw, source=os.fspath(path))
    del raw
    config = config_from_state_dict(sd, source=os.fspath(path))
    detected, reason = identify_version(sd, wrapper)
    fp = fingerprint(sd)
    if version == "auto":
        chosen = detected
    elif version in VERSIONS:
        chosen = version
        if detected is not None and detected != version:  # another schedule and base model: a wrong image
            raise IRControlNetError(
                f"{path}: this is a {detected} IRControlNet ({reason}), but version {version} was chosen. Set version "
                f"to auto or {detected} (and use the base model and sampling of {detected}), or load the {version} "
                "file instead.")
    else:
        raise IRControlNetError(f"unknown IRControlNet version {version!r}; choose auto, {', '.join(VERSIONS)}")
    weight_dtype = comfy.utils.weight_dtype(sd)
    load_device = comfy.model_management.get_torch_device()
    if dtype is None:
        supported = [torch.float16, torch.bfloat16, torch.float32]
        dtype = comfy.model_management.unet_dtype(model_params=-1, supported_dtypes=supported,
                                                  weight_dtype=weight_dtype)
    manual_cast_dtype = comfy.model_management.unet_manual_cast(dtype, load_device)
    operations = comfy.ops.pick_operations(dtype, manual_cast_dtype, disable_fast_fp8=True)
    offload_device = comfy.model_management.unet_offload_device()
    network = IRControlNet(config, dtype=dtype, device=offload_device, operations=operations)
    missing, unexpected = network.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise IRControlNetError(
            f"{path}: the weights do not match the IRControlNet read from their shapes ({config.describe()}): "
            f"{len(missing)} missing ({_sample_keys(dict.fromkeys(missing))}), {len(unexpected)} unexpected "
            f"({_sample_keys(dict.fromkeys(unexpected))})")
    del sd
    network.eval()
    log.info("DiffBIR: loaded IRControlNet %s (%s; %s) version %s [%s], fingerprint %s, dtype %s%s",
             os.path.basename(os.fspath(path)), wrapper, config.describe(), chosen or "unknown", reason, fp, dtype,
             f" (computes in {manual_cast_dtype})" if manual_cast_dtype else "")
    return IRControlNetControl(network, load_device=load_device, manual_cast_dtype=manual_cast_dtype, version=chosen,
                               fingerprint=fp, detected_version=detected, source=os.path.basename(os.fspath(path)))
