"""DiffBIR's IRControlNet: the network, its checkpoint reader and the control object that conditions
a stock ComfyUI SD 2.x UNet (KSampler, KSamplerAdvanced, SamplerCustomAdvanced) on a stage-1 image.

The network is a ControlNet without a hint encoder: the VAE latent of the stage-1 output (posterior
mode x 0.18215) is concatenated channel-wise with the noisy latent, so the first conv takes 8
channels. It returns one residual per UNet input block (through a 1x1 "zero conv") plus one after
the middle block; ComfyUI's UNet adds the former to its skip connections (last input block to the
first output block, as DiffBIR's ``hs.pop() + control.pop()``) and the latter after the middle
block - exactly where DiffBIR adds them.

Layers are ComfyUI's own (openaimodel ResBlock / Downsample / SpatialTransformer, built with
``comfy.ops``) so weights can be stored in fp16/bf16 with manual casting, and the module is wrapped
in a ModelPatcher that ComfyUI loads, offloads and evicts like any control model.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os

import comfy.controlnet
import comfy.model_management
import comfy.model_sampling
import comfy.ops
import comfy.utils
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, TimestepEmbedSequential
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from . import comfy_compat, weights_io

log = logging.getLogger("DiffBIR")

LATENT_SCALE = 0.18215  # SD's latent scale factor: condition = posterior mode x 0.18215
LATENT_CHANNELS = 4
VERSIONS = ("v1", "v2", "v2.1")

# Fingerprint (see ``fingerprint``) -> version of the published IRControlNet files. Nobody on this
# project could download the real files, so the table is empty: the loader then reports "unknown"
# and the user's ``version`` choice decides. Whoever has the files: load each one, copy the
# fingerprint the loader logs, and add it here (fp32 and fp16 copies of a file share a fingerprint).
KNOWN_FINGERPRINTS: dict[str, str] = {
    # "<64 hex digits>": "v2",  # v2.pth
}

# Globals a training checkpoint (old v1 "full" .ckpt written by PyTorch Lightning) may carry beside
# its tensors. They are replaced by inert stand-ins while reading; nothing outside torch's
# weights-only allowlist is ever called. Any other global refuses the file.
class IRControlNetError(ValueError):
    """A file or input the IRControlNet cannot use; the message says what and what to do."""


# -- network -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IRControlNetConfig:
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: tuple = (2, 2, 2, 2)
    transformer_depth: tuple = (1, 1, 1, 1, 1, 1, 0, 0)  # per input res block, in order
    transformer_depth_middle: int = 1
    context_dim: int = 1024
    num_head_channels: int = 64  # SD 2.x; head counts leave no trace in the weights
    use_linear_in_transformer: bool = True
    latent_channels: int = LATENT_CHANNELS
    condition_channels: int = LATENT_CHANNELS

    @property
    def num_residuals(self) -> int:
        """Input blocks + the middle block: 13 for SD 2.x."""
        return len(self.input_block_channels()) + 1

    def input_block_channels(self) -> list[int]:
        chans = [self.model_channels]
        for level, mult in enumerate(self.channel_mult):
            chans += [mult * self.model_channels] * self.num_res_blocks[level]
            if level != len(self.channel_mult) - 1:
                chans.append(mult * self.model_channels)
        return chans

    def describe(self) -> str:
        return (f"model_channels {self.model_channels}, channel_mult {list(self.channel_mult)}, "
                f"num_res_blocks {list(self.num_res_blocks)}, context_dim {self.context_dim}")


class IRControlNet(torch.nn.Module):
    """The IRControlNet network (parameter names = the published files' keys).

    ``forward(x, hint, timesteps, context)`` -> ``{"output": [one residual per input block, in
    input-block order], "middle": [one residual]}``, unscaled (the control object applies strength).
    ``x`` is the noisy latent in the UNet's input space (DDPM x_t), ``hint`` the condition latent
    (already x 0.18215), ``timesteps`` the discrete DDPM timesteps.
    """

    def __init__(self, config: IRControlNetConfig, dtype=None, device=None, operations=comfy.ops.disable_weight_init):
        super().__init__()
        self.config = config
        self.dtype = dtype if dtype is not None else torch.float32
        mc = config.model_channels
        emb_dim = mc * 4
        kw = dict(dtype=dtype, device=device)
        self.time_embed = torch.nn.Sequential(operations.Linear(mc, emb_dim, **kw), torch.nn.SiLU(),
                                              operations.Linear(emb_dim, emb_dim, **kw))
        in_channels = config.latent_channels + config.condition_channels
        self.input_blocks = torch.nn.ModuleList(
            [TimestepEmbedSequential(operations.conv_nd(2, in_channels, mc, 3, padding=1, **kw))])
        self.zero_convs = torch.nn.ModuleList([self._zero_conv(mc, operations, kw)])
        depths = list(config.transformer_depth)
        ch = mc
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks[level]):
                layers = [ResBlock(ch, emb_dim, 0.0, out_channels=mult * mc, dims=2, use_checkpoint=False,
                                   use_scale_shift_norm=False, operations=operations, **kw)]
                ch = mult * mc
                depth = depths.pop(0)
                if depth > 0:
                    layers.append(self._transformer(ch, depth, operations, kw))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.zero_convs.append(self._zero_conv(ch, operations, kw))
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    Downsample(ch, True, dims=2, out_channels=ch, operations=operations, **kw)))
                self.zero_convs.append(self._zero_conv(ch, operations, kw))
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, 0.0, dims=2, use_checkpoint=False, use_scale_shift_norm=False,
                     operations=operations, **kw),
            self._transformer(ch, config.transformer_depth_middle, operations, kw),
            ResBlock(ch, emb_dim, 0.0, dims=2, use_checkpoint=False, use_scale_shift_norm=False,
                     operations=operations, **kw))
        self.middle_block_out = self._zero_conv(ch, operations, kw)

    def _transformer(self, ch, depth, operations, kw):
        heads = ch // self.config.num_head_channels
        return SpatialTransformer(ch, heads, self.config.num_head_channels, depth=depth,
                                  context_dim=self.config.context_dim, use_linear=self.config.use_linear_in_transformer,
                                  use_checkpoint=False, attn_precision=torch.float32, operations=operations, **kw)

    @staticmethod
    def _zero_conv(ch, operations, kw):
        return TimestepEmbedSequential(operations.conv_nd(2, ch, ch, 1, padding=0, **kw))

    def forward(self, x, hint, timesteps, context):
        t_emb = timestep_embedding(timesteps, self.config.model_channels, repeat_only=False).to(x.dtype)
        emb = self.time_embed(t_emb)
        h = torch.cat([x, hint.to(x.dtype)], dim=1)
        options = fast_attention_options()
        outputs = []
        for block, zero_conv in zip(self.input_blocks, self.zero_convs):
            h = block(h, emb, context, transformer_options=options)
            outputs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context, transformer_options=options)
        return {"output": outputs, "middle": [self.middle_block_out(h, emb, context)]}


def _scaled_dot_product(func, *args, **kwargs):
    from comfy.ldm.modules import attention

    return attention.attention_pytorch(*args, **kwargs)


def fast_attention_options() -> dict:
    """transformer_options that run this network's attention with torch's scaled_dot_product_attention
    when ComfyUI's global choice is one that materialises the whole score matrix (its CPU defaults:
    split, sub-quadratic or basic attention). The same maths, several times faster on a CPU; a faster
    choice a user made (xformers, flash, sage, or pytorch itself) is kept."""
    from comfy.ldm.modules import attention

    if attention.optimized_attention in (attention.attention_split, attention.attention_sub_quad,
                                         attention.attention_basic):
        return {"optimized_attention_override": _scaled_dot_product}
    return {}


def config_from_state_dict(sd: dict, source: str = "state dict") -> IRControlNetConfig:
    """The network size of an IRControlNet state dict (published key layout, no prefix)."""
    first = sd["input_blocks.0.0.weight"]
    mc, in_channels = int(first.shape[0]), int(first.shape[1])
    if in_channels != 2 * LATENT_CHANNELS:
        raise IRControlNetError(
            f"{source}: the first conv takes {in_channels} channels; an IRControlNet takes 8 (4 noisy-latent + 4 "
            "condition-latent channels). This is not a DiffBIR IRControlNet for SD 2.x.")
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
    channel_mult, num_res_blocks, depths = [], [0], []
    context_dim, use_linear = None, True
    for i in range(1, n_blocks):
        p = f"input_blocks.{i}."
        if p + "0.op.weight" in sd:  # downsample: next level
            num_res_blocks.append(0)
            continue
        if p + "0.out_layers.3.weight" not in sd:
            raise IRControlNetError(f"{source}: input block {i} is neither a ResBlock nor a downsample conv; "
                                    "unknown IRControlNet layout")
        out_ch = int(sd[p + "0.out_layers.3.weight"].shape[0])
        level = len(num_res_blocks) - 1
        if len(channel_mult) == level:
            channel_mult.append(out_ch // mc)
        num_res_blocks[-1] += 1
        depth = 0
        while f"{p}1.transformer_blocks.{depth}.attn2.to_k.weight" in sd:
            context_dim = int(sd[f"{p}1.transformer_blocks.{depth}.attn2.to_k.weight"].shape[1])
            depth += 1
        if depth:
            use_linear = sd[p + "1.proj_in.weight"].ndim == 2
        depths.append(depth)
    middle_depth = 0
    while f"middle_block.1.transformer_blocks.{middle_depth}.attn2.to_k.weight" in sd:
        context_dim = int(sd[f"middle_block.1.transformer_blocks.{middle_depth}.attn2.to_k.weight"].shape[1])
        middle_depth += 1
    if not channel_mult or middle_depth == 0 or context_dim is None or len(channel_mult) != len(num_res_blocks):
        raise IRControlNetError(f"{source}: cannot read the network size (no middle transformer or no res blocks); "
                                "unknown IRControlNet layout")
    return IRControlNetConfig(model_channels=mc, channel_mult=tuple(channel_mult), num_res_blocks=tuple(num_res_blocks),
                              transformer_depth=tuple(depths), transformer_depth_middle=middle_depth,
                              context_dim=context_dim, use_linear_in_transformer=use_linear)


# -- reading files -------------------------------------------------------------------------------
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


# -- loading -------------------------------------------------------------------------------------
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


# -- the condition -------------------------------------------------------------------------------
PADDINGS = {
    "64": "pad the image to a multiple of 64 (official, untiled)",
    "8+latent8": "pad the image to a multiple of 8 and the latent to a multiple of 8 (official, tiled VAE encoder)",
    "8": "pad the image to a multiple of 8, not the latent (official, tiled diffusion)",
}


def pad_bottom_right(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads NCHW at the bottom/right to a multiple of ``multiple`` (DiffBIR's pad_to_multiples_of)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="constant", value=0.0)


def encode_condition(vae, rgb: torch.Tensor, padding: str = "64", tile_size: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition latent x 0.18215, the same latent unscaled as a LATENT holds it) for a stage-1
    image ``rgb`` (NCHW in [0,1]). ComfyUI's VAE.encode returns the posterior mode (unscaled).
    ``tile_size``: None = ComfyUI's VAE.encode; an int goes to the exact tiled encoder
    (``tiled_vae.encode``: 0 = tiles only when the image does not fit in memory; same result)."""
    if padding not in PADDINGS:
        raise IRControlNetError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")
    if getattr(vae, "latent_channels", LATENT_CHANNELS) != LATENT_CHANNELS or vae.spacial_compression_encode() != 8:
        raise IRControlNetError(
            f"the VAE has {vae.latent_channels} latent channels and compresses "
            f"{vae.spacial_compression_encode()}x; the IRControlNet needs the SD 2.x VAE (4 channels, 8x). Connect the "
            "VAE output of the SD 2.1 checkpoint loader.")
    pixels = pad_bottom_right(rgb, 64 if padding == "64" else 8)
    if tile_size is None:
        latent = vae.encode(pixels.movedim(1, -1)).float().cpu()
    else:
        from . import tiled_vae

        latent = tiled_vae.encode(vae, pixels.movedim(1, -1), tile_size).float().cpu()
    if padding == "8+latent8":
        latent = pad_bottom_right(latent, 8)
    return latent * LATENT_SCALE, latent


# -- the control object --------------------------------------------------------------------------
def describe_base_model(unet_config: dict) -> str:
    context = unet_config.get("context_dim")
    if unet_config.get("adm_in_channels") or context == 2048:
        kind = "an SDXL-shaped model"
    elif context == 768:
        kind = "an SD 1.x-shaped model"
    elif context == 1024:
        kind = "an SD 2.x model"
    else:
        kind = "a non-SD model"
    return (f"{kind} (context_dim {context}, model_channels {unet_config.get('model_channels')}, channel_mult "
            f"{list(unet_config.get('channel_mult') or [])}, adm_in_channels {unet_config.get('adm_in_channels')})")


class IRControlNetControl(comfy.controlnet.ControlBase):
    """A DiffBIR IRControlNet as a ComfyUI control object (what the apply node puts into every
    positive and negative conditioning, like ComfyUI's ControlNet).

    Attributes other areas use:
      ``condition``: the condition latent [B,4,h,w] (posterior mode x 0.18215, padded as chosen),
        float32 on the CPU; the same tensor is used for cond and uncond, as in the official code.
      ``stage1_size``: (height, width) of the stage-1 image before padding (crop back to it).
      ``version``: "v1", "v2", "v2.1" or None (unknown).
      ``with_condition(latent)``: a copy of this control with another condition latent (e.g.
        noise-augmented); everything else (network, strength, range, chain) is shared/copied.

    Windows (tiled sampling): the residuals for a spatial window of the latent come from
    ``control_for_window(x_noisy, t, cond, batched_number, transformer_options, window)``, with
    ``window = (y0, y1, x0, x1)`` in latent pixels of ``condition``: the stored condition latent is
    sliced to that window, never resized. ``get_control`` does the same when
    ``transformer_options["diffbir_window"]`` holds such a window (a tiler can set it through
    ``model_options["transformer_options"]``). ``window`` may also be a list of windows (batched
    tiles): the latent batch then holds, per cond/uncond chunk, one latent batch per window in that
    order, and the condition is sliced and stacked the same way. Without a window the noisy latent
    must have exactly the condition's spatial size; anything else raises an error naming both sizes.
    """

    def __init__(self, control_model: IRControlNet | None = None, load_device=None, manual_cast_dtype=None,
                 version: str | None = None, fingerprint: str = "", detected_version: str | None = None,
                 source: str = "", patcher=None):
        super().__init__()
        self.control_model = control_model
        self.load_device = load_device
        self.manual_cast_dtype = manual_cast_dtype
        if patcher is None and control_model is not None:
            patcher = comfy_compat.model_patcher(control_model, load_device,
                                                 comfy.model_management.unet_offload_device())
        self.control_model_wrapped = patcher
        self.version = version
        self.fingerprint = fingerprint
        self.detected_version = detected_version
        self.source = source
        self.condition: torch.Tensor | None = None
        self.stage1_size: tuple[int, int] | None = None
        self.padding = "64"
        self.model_sampling_current = None
        self._hint_cache = None
        self._warned = False

    # configuration -------------------------------------------------------------------------
    @property
    def config(self) -> IRControlNetConfig:
        return self.control_model.config

    def set_condition(self, condition: torch.Tensor, strength: float = 1.0, timestep_percent_range=(0.0, 1.0),
                      stage1_size=None, padding: str = "64") -> IRControlNetControl:
        if condition.ndim != 4 or condition.shape[1] != self.config.condition_channels:
            raise IRControlNetError(f"the condition latent must be [batch, 4, h, w], got {tuple(condition.shape)}")
        self.condition = condition.detach().float().cpu()
        self.cond_hint_original = self.condition
        self.strength = float(strength)
        self.timestep_percent_range = tuple(timestep_percent_range)
        self.stage1_size = tuple(stage1_size) if stage1_size is not None else tuple(x * 8 for x in condition.shape[-2:])
        self.padding = padding
        self._hint_cache = None
        return self

    def with_condition(self, condition: torch.Tensor) -> IRControlNetControl:
        c = self.copy()
        c.set_condition(condition, c.strength, c.timestep_percent_range, c.stage1_size, c.padding)
        c.previous_controlnet = self.previous_controlnet
        return c

    def copy(self) -> IRControlNetControl:
        c = IRControlNetControl(self.control_model, load_device=self.load_device,
                                manual_cast_dtype=self.manual_cast_dtype, version=self.version,
                                fingerprint=self.fingerprint, detected_version=self.detected_version,
                                source=self.source, patcher=self.control_model_wrapped)
        self.copy_to(c)
        c.condition = self.condition
        c.stage1_size = self.stage1_size
        c.padding = self.padding
        return c

    def deepclone_multigpu(self, load_device, autoregister: bool = False) -> IRControlNetControl:
        """A copy whose network lives on another device, for ComfyUI's multi-GPU sampling (newer
        releases): each GPU runs its share of the batch with its own copy of the weights, as core
        ControlNets do. ``autoregister`` records it as this control's instance for that device."""
        import comfy.model_management

        c = self.copy()
        c.control_model = copy.deepcopy(self.control_model)
        c.load_device = load_device
        c.control_model_wrapped = comfy_compat.model_patcher(c.control_model, load_device,
                                                             comfy.model_management.unet_offload_device())
        if autoregister:  # ControlBase has the registry from the releases that clone controls
            vars(self).setdefault("multigpu_clones", {})[load_device] = c
        return c

    # ComfyUI's control protocol ----------------------------------------------------------
    def get_models(self):
        return super().get_models() + [self.control_model_wrapped]

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.check_base_model(model)
        self.model_sampling_current = model.model_sampling
        if not self._warned:
            self._warned = True
            warning = self.prediction_warning(model.model_sampling)
            if warning:
                log.warning("DiffBIR: %s", warning)

    def cleanup(self):
        self.model_sampling_current = None
        self._hint_cache = None
        self._warned = False
        super().cleanup()

    def inference_memory_requirements(self, dtype):
        # the network's weights are counted by its ModelPatcher; activations of one forward at
        # most about those of the UNet's encoder half, which ComfyUI already reserves.
        return super().inference_memory_requirements(dtype)

    def check_base_model(self, model) -> None:
        """Raises if the model being sampled is not the SD 2.x shape this IRControlNet was built for."""
        unet_config = getattr(getattr(model, "model_config", None), "unet_config", None) or {}
        cfg = self.config
        mismatch = []
        if unet_config.get("context_dim") != cfg.context_dim:
            mismatch.append(f"context_dim {unet_config.get('context_dim')} vs {cfg.context_dim}")
        if unet_config.get("model_channels") != cfg.model_channels:
            mismatch.append(f"model_channels {unet_config.get('model_channels')} vs {cfg.model_channels}")
        if list(unet_config.get("channel_mult") or []) != list(cfg.channel_mult):
            mismatch.append(f"channel_mult {list(unet_config.get('channel_mult') or [])} vs {list(cfg.channel_mult)}")
        nrb = unet_config.get("num_res_blocks")
        if nrb is not None and list(nrb if isinstance(nrb, (list, tuple)) else [nrb] * len(cfg.channel_mult)) != list(
                cfg.num_res_blocks):
            mismatch.append(f"num_res_blocks {nrb} vs {list(cfg.num_res_blocks)}")
        if unet_config.get("adm_in_channels"):
            mismatch.append(f"adm_in_channels {unet_config.get('adm_in_channels')} (SDXL-style class conditioning)")
        if unet_config.get("in_channels", LATENT_CHANNELS) != LATENT_CHANNELS:
            mismatch.append(f"in_channels {unet_config.get('in_channels')} vs 4")
        if mismatch:
            raise IRControlNetError(
                f"this IRControlNet ({self.source or 'loaded file'}: SD 2.x, {cfg.describe()}) cannot condition the "
                f"model being sampled, {describe_base_model(unet_config)}: {'; '.join(mismatch)}. DiffBIR needs SD 2.1 "
                "base: v2-1_512-ema-pruned for v1/v2, sd2.1-base-zsnr-laionaes5 for v2.1.")

    def prediction_warning(self, model_sampling) -> str | None:
        v_pred = isinstance(model_sampling, comfy.model_sampling.V_PREDICTION)
        if self.version == "v2.1" and not v_pred:
            return ("a v2.1 IRControlNet is sampling an eps-prediction model. v2.1 was trained with the zero-terminal-"
                    "SNR v-prediction SD 2.1 (sd2.1-base-zsnr-laionaes5): add a ModelSamplingDiscrete node "
                    "(v_prediction, zsnr on) between the checkpoint loader and the sampler, or results degrade.")
        if self.version in ("v1", "v2") and v_pred:
            return (f"a {self.version} IRControlNet is sampling a v-prediction model; {self.version} was trained on "
                    "the eps-prediction SD 2.1 base (v2-1_512-ema-pruned).")
        return None

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev
        window = (transformer_options or {}).get("diffbir_window")
        return self.control_for_window(x_noisy, t, cond, batched_number, transformer_options, window,
                                       control_prev=control_prev)

    # the computation --------------------------------------------------------------------
    def compute_dtype(self) -> torch.dtype:
        return self.manual_cast_dtype if self.manual_cast_dtype is not None else self.control_model.dtype

    def hint_for(self, x_noisy: torch.Tensor, batched_number: int, window=None) -> torch.Tensor:
        """The condition latent matching ``x_noisy`` (batch and spatial size), on its device."""
        if self.condition is None:
            raise IRControlNetError(
                "this IRControlNet has no condition: connect it through 'DiffBIR Apply IRControlNet'")
        dtype = self.compute_dtype()
        if self._hint_cache is None or self._hint_cache.device != x_noisy.device or self._hint_cache.dtype != dtype:
            self._hint_cache = self.condition.to(device=x_noisy.device, dtype=dtype)
        hint = self._hint_cache
        size = tuple(x_noisy.shape[-2:])
        if window is not None and len(window) and isinstance(window[0], (tuple, list)):
            return self._hint_for_windows(hint, x_noisy, batched_number, [tuple(w) for w in window])
        if window is not None:
            hint = self._window_of(hint, window)
        if tuple(hint.shape[-2:]) != size:
            where = f"window {tuple(window)} of the condition" if window is not None else "condition"
            raise IRControlNetError(
                f"the latent being sampled is {size[1]}x{size[0]} (w x h latent pixels) but the DiffBIR {where} "
                f"latent is {hint.shape[-1]}x{hint.shape[-2]}. Start the sampler from the LATENT output of "
                "'DiffBIR Apply IRControlNet' (it has the right size) instead of resizing or making a latent by hand.")
        n = x_noisy.shape[0]
        per = n // max(1, batched_number)
        b = hint.shape[0]
        if b == n:
            return hint
        if b == 1:
            return hint.expand(n, -1, -1, -1)
        if b == per:
            return hint.repeat(batched_number, 1, 1, 1)
        raise IRControlNetError(
            f"the stage-1 image batch ({b}) does not match the latent batch ({per}): use the LATENT output of 'DiffBIR "
            "Apply IRControlNet', or a stage-1 batch of 1")

    @staticmethod
    def _window_of(hint: torch.Tensor, window) -> torch.Tensor:
        y0, y1, x0, x1 = (int(v) for v in window)
        if not (0 <= y0 < y1 <= hint.shape[-2] and 0 <= x0 < x1 <= hint.shape[-1]):
            raise IRControlNetError(f"window {tuple(window)} lies outside the condition latent "
                                    f"{tuple(hint.shape[-2:])} (latent pixels, (y0, y1, x0, x1))")
        return hint[..., y0:y1, x0:x1]

    def _hint_for_windows(self, hint: torch.Tensor, x_noisy: torch.Tensor, batched_number: int,
                          windows: list) -> torch.Tensor:
        """Several windows batched (a tiled sampler's tile batch): ``x_noisy`` holds, per cond/uncond
        chunk, the windows one after another, each with the latent batch; the condition is sliced the
        same way (per window, broadcast to the latent batch), then repeated per chunk."""
        n = x_noisy.shape[0]
        chunks = max(1, batched_number)
        per_window = n // (chunks * len(windows))
        if per_window * chunks * len(windows) != n:
            raise IRControlNetError(f"a batch of {n} latents cannot hold {len(windows)} windows x {chunks} "
                                    "conditionings evenly")
        parts = []
        for window in windows:
            part = self._window_of(hint, window)
            if tuple(part.shape[-2:]) != tuple(x_noisy.shape[-2:]):
                raise IRControlNetError(f"window {window} of the condition is {tuple(part.shape[-2:])} but the "
                                        f"latent tiles are {tuple(x_noisy.shape[-2:])}")
            b = part.shape[0]
            if b == 1:
                part = part.expand(per_window, -1, -1, -1)
            elif b != per_window:
                raise IRControlNetError(
                    f"the stage-1 image batch ({b}) does not match the latent batch ({per_window}): use the LATENT "
                    "output of 'DiffBIR Apply IRControlNet', or a stage-1 batch of 1")
            parts.append(part)
        one_chunk = torch.cat(parts)
        return one_chunk.repeat(chunks, 1, 1, 1) if chunks > 1 else one_chunk

    def control_for_window(self, x_noisy, t, cond, batched_number, transformer_options=None, window=None,
                           control_prev=None):
        """The merged control dict for ``x_noisy`` (k-diffusion space, at sigma ``t``); see the class
        docstring for ``window``. Applies strength and adds the previous control net's output."""
        dtype = self.compute_dtype()
        hint = self.hint_for(x_noisy, batched_number, window)
        model_sampling = self.model_sampling_current
        if model_sampling is None:
            raise IRControlNetError("the IRControlNet was not prepared for sampling (pre_run was not called)")
        timestep = model_sampling.timestep(t).float()
        x_in = model_sampling.calculate_input(t, x_noisy)
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        context = comfy.model_management.cast_to_device(context, x_noisy.device, dtype)
        control = self.control_model(x=x_in.to(dtype), hint=hint, timesteps=timestep, context=context)
        return self.control_merge(control, control_prev, output_dtype=None)


# -- finding the control object inside CONDITIONING ----------------------------------------------
def _chain(control):
    while control is not None:
        yield control
        control = control.previous_controlnet


def find_ircontrolnets(conditioning) -> list[IRControlNetControl]:
    """Every IRControlNet control object in a CONDITIONING list (in chain order, each once)."""
    found, seen = [], set()
    for _, d in conditioning:
        for c in _chain(d.get("control")):
            if isinstance(c, IRControlNetControl) and id(c) not in seen:
                seen.add(id(c))
                found.append(c)
    return found


def control_chain_rebuilder(replace):
    """A function ``rebuild(control)`` that rebuilds a control chain bottom-up: ``replace(c)`` gives
    the object to use for ``c`` (``c`` itself to keep it); a kept control whose predecessor changed is
    shallow-copied and re-linked. Memoised, so an object shared by several conditionings (positive
    and negative) stays shared and ComfyUI still batches cond and uncond together."""
    memo = {}

    def rebuild(control):
        if control is None:
            return None
        if id(control) in memo:
            return memo[id(control)]
        prev = rebuild(control.previous_controlnet)
        new = replace(control)
        if new is control and prev is not control.previous_controlnet:
            new = copy.copy(control)
        if new is not control:
            new.previous_controlnet = prev
        memo[id(control)] = new
        return new

    return rebuild


def replace_ircontrolnets(conditionings, fn):
    """Returns copies of the given CONDITIONING lists in which every IRControlNet control object
    ``c`` (anywhere in a control chain) is replaced by ``fn(c)``; the controls above it in the chain
    are copied and re-linked (``control_chain_rebuilder``)."""
    rebuild = control_chain_rebuilder(lambda c: fn(c) if isinstance(c, IRControlNetControl) else c)

    out = []
    for conditioning in conditionings:
        entries = []
        for t, d in conditioning:
            d = d.copy()
            if d.get("control") is not None:
                d["control"] = rebuild(d["control"])
            entries.append([t, d])
        out.append(entries)
    return out
