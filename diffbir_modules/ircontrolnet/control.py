"""The IRControlNet as a ComfyUI control object (what DiffBIR Apply IRControlNet puts into every
positive and negative conditioning, like ComfyUI's ControlNet), and finding it again inside
CONDITIONING (tiled sampling and guidance replace it per window)."""

from __future__ import annotations

import copy
import logging

import comfy.controlnet
import comfy.model_management
import comfy.ops
import comfy.utils
import torch

from .. import comfy_compat, convolution, feed_forward, host_memory, sd_model
from .network import LATENT_CHANNELS, IRControlNet, IRControlNetConfig, IRControlNetError

log = logging.getLogger("DiffBIR")

# Latent pixels of a model call (batch x height x width) from which each call on a CPU first hands the
# previous call's freed memory back: a cfg batch of two 720 px images. Below it the hand-back only costs
# (512 px: 0.6 % of a cfg step, the peak already 0.5 GiB above the weights); at 1024 px it keeps the
# sampler's peak from creeping up (docs/performance.md).
HAND_BACK_LATENT = 2 * 90 * 90


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
        if autoregister:
            comfy_compat.register_multigpu_clone(self, load_device, c)
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
                f"model being sampled, {sd_model.describe(unet_config)}: {'; '.join(mismatch)}. DiffBIR needs SD 2.1 "
                "base: v2-1_512-ema-pruned for v1/v2, sd2.1-base-zsnr-laionaes5 for v2.1.")

    def prediction_warning(self, model_sampling) -> str | None:
        v_pred = sd_model.prediction_of(model_sampling) == "v"
        if self.version == "v2.1" and not v_pred:
            return ("a v2.1 IRControlNet is sampling an eps-prediction model. v2.1 was trained with the zero-terminal-"
                    "SNR v-prediction SD 2.1 (sd2.1-base-zsnr-laionaes5): add a ModelSamplingDiscrete node "
                    "(v_prediction, zsnr on) between the checkpoint loader and the sampler, or results degrade.")
        if self.version in ("v1", "v2") and v_pred:
            return (f"a {self.version} IRControlNet is sampling a v-prediction model; {self.version} was trained on "
                    "the eps-prediction SD 2.1 base (v2-1_512-ema-pruned).")
        return None

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        b, h, w = x_noisy.shape[0], x_noisy.shape[-2], x_noisy.shape[-1]
        if x_noisy.device.type == "cpu" and b * h * w >= HAND_BACK_LATENT:
            # what the previous model call freed goes back to the system before this one allocates: else
            # each call's short-lived tensors spread over more free heap pages and the resident peak creeps
            # up from step to step (1024 px, 2-core CPU, steps 1-3: 1.41 / 1.49 / 1.48 GiB above the
            # weights; 1.36 / 1.35 / 1.20 handed back around each call; docs/performance.md)
            host_memory.release()
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
        chunks = max(1, batched_number)  # cond, uncond, ... each with the latent batch
        per = n // chunks
        b = hint.shape[0]
        if b == 1:
            return hint.expand(n, -1, -1, -1)
        if b == per and per * chunks == n:
            return hint if chunks == 1 else hint.repeat(chunks, 1, 1, 1)
        # (a stage-1 batch the size of cond + uncond together is a mismatch too: each chunk needs them all)
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
        control = self.control_model(x=x_in.to(dtype), hint=hint, timesteps=timestep, context=context,
                                     convolution=convolution.chosen(transformer_options),
                                     feed_forward=feed_forward.chosen(transformer_options))
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
