"""Region-adaptive restoration guidance (DiffBIR v2.0, "RG"; v1's "latent image guidance").

During sampling the predicted clean latent x0 is pulled toward the stage-1 result: with ``w_mse`` the
pull is weighted by a map that is ~1 where the stage-1 image is flat and ~0 on edges and texture, so
flat regions follow the stage-1 image while details stay free to be generated.

Official v2.0 (``utils/cond_fn.py``, ``utils/sampler.py::SpacedSampler.apply_cond_fn``), per step of
its respaced DDPM sampler, when ``t_stop < t + 1 < t_start``, ``repeat`` times::

    L     = sum_b mean_chw( W * (pred - target)^2 )   (W = 1 for mse)
    delta = -(g_scale * 3000) * dL/dpred
    x0   += delta / posterior_mean_coef1               (the posterior mean moves by exactly delta)

``latent`` space: pred = x0, target = VAE-encoded stage-1 image (posterior *sample*, re-drawn every
repeat). ``rgb`` space: pred = VAE-decode(x0), target = stage-1 image in [-1, 1], and delta is
back-propagated through the decoder. W (``official_weight_map``): Sobel magnitude of the gray
stage-1 image, summed over 2x2 blocks, ``1 - tanh``.

This module applies the same rule as a ComfyUI MODEL patch (a post-CFG function on the denoised x0):
- under DiffBIR's spaced sampler (``transformer_options["diffbir_step"]`` present) with exactly the
  official ``1 / posterior_mean_coef1``;
- under any k-diffusion sampler with the x0 shift that moves that step's x by the same amount
  (``step_factor``; derivation in docs/guidance.md), so a scale means the same strength everywhere;
- with a step-count normalisation (``reference_steps``) so the total strength does not depend on
  the number of steps (the official rule adds one full shift per step, whatever the step count).

Deliberate differences from the official code, each with a switch (see docs/guidance.md):
``w_mse`` in latent space works (the official code crashes there; W is computed in pixel space and
averaged over each latent cell's 8x8 pixels); the latent target defaults to the posterior mode
(deterministic; ``latent_target="posterior_sample"`` draws as the official code does); rgb space
bounds its memory with gradient checkpointing of the decoder (exact) or a tiled decode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import logging
import math
import uuid

import torch
import torch.nn.functional as F

log = logging.getLogger("DiffBIR")

LOSSES = ("w_mse", "mse")
SPACES = ("latent", "rgb")
LATENT_TARGETS = ("mode", "posterior_sample")
RGB_MEMORY = ("checkpoint", "tiled", "full")
SCALE_MULTIPLIER = 3000.0  # official: Guidance.scale = g_scale * 3000
NUM_TRAIN_TIMESTEPS = 1000
PAD_MULTIPLE = 64  # official: the stage-1 image (and so the target) is zero-padded to a multiple of 64
LATENT_FACTOR = 8  # SD VAE: 8 pixels per latent cell
GRAY = (0.2989, 0.5870, 0.1140)  # official rgb -> gray weights
RUN_KEY = "diffbir_guidance_runs"
WINDOW_KEY = "diffbir_window"  # the pack's tiling convention (tiled_diffusion.py)
STEP_KEY = "diffbir_step"


# Peak memory of one rgb-space gradient per decoded pixel (fp32; measured on the CPU with
# scripts/benchmark_guidance.py, see docs/guidance.md), and the temporary copy of the decoder weights.
RGB_BYTES_PER_PIXEL = {"full": 25e3, "checkpoint": 9.5e3, "tiled": 8e3}
DECODER_WEIGHTS_BYTES = 200e6

# VAE posteriors of recent targets: a sweep runs the guidance node once per scale with the same image
_ENCODED: dict = {}
_ENCODED_KEEP = 4


class GuidanceError(ValueError):
    """An input restoration guidance cannot use; the message says what and what to do."""


# == the official maths =============================================================================
def official_weight_map(rgb01: torch.Tensor) -> torch.Tensor:
    """v2.0 ``WeightedMSEGuidance._get_weight``: [B,3,H,W] image in [0,1] (H, W even) -> [B,1,H,W].

    gray = 0.2989 R + 0.5870 G + 0.1140 B; Sobel x/y with replicate padding; magnitude; per 2x2 block
    the SUM of the magnitudes, tanh, broadcast back; W = 1 - that. Flat: ~1, edges: ~0."""
    if rgb01.ndim != 4 or rgb01.shape[1] != 3:
        raise GuidanceError(f"the weight map needs an RGB image [B,3,H,W], got shape {tuple(rgb01.shape)}")
    n, _, h, w = rgb01.shape
    if h % 2 or w % 2:
        raise GuidanceError(f"the weight map works on 2x2 blocks: height and width must be even, got {h}x{w}")
    kernel = torch.tensor(GRAY, dtype=rgb01.dtype, device=rgb01.device).view(1, 3, 1, 1)
    gray = torch.sum(rgb01 * kernel, dim=1, keepdim=True)
    sobel = torch.tensor([[[1, 0, -1], [2, 0, -2], [1, 0, -1]], [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]],
                         dtype=rgb01.dtype, device=rgb01.device).unsqueeze(1)
    grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), sobel)
    magnitude = grad.pow(2).sum(dim=1, keepdim=True).sqrt()
    blocks = magnitude.view(n, 1, h // 2, 2, w // 2, 2).sum(dim=(3, 5))
    return 1 - blocks.tanh().repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def latent_weight_map(pixel_weight: torch.Tensor, factor: int = LATENT_FACTOR) -> torch.Tensor:
    """The pixel weight map on the latent grid: the mean over each latent cell's factor x factor
    pixels (the fraction of "flat" area the cell covers). [B,1,H,W] -> [B,1,H/f,W/f]."""
    h, w = pixel_weight.shape[-2:]
    if h % factor or w % factor:
        raise GuidanceError(f"the weight map ({h}x{w}) is not a multiple of the latent factor {factor}")
    return F.avg_pool2d(pixel_weight, factor)


def guidance_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Official loss: per image the mean over (C,H,W) of [W *] (pred - target)^2, summed over the batch."""
    err = (pred - target).pow(2)
    if weight is not None:
        err = err * weight
    return err.mean((1, 2, 3)).sum()


def guidance_delta(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                   scale: float) -> tuple[torch.Tensor, float]:
    """``-scale * dL/dpred`` (scale = g_scale * 3000) and the loss value, as the official Guidance
    ``_forward`` computes them (autograd on a detached copy)."""
    with torch.inference_mode(False), torch.enable_grad():
        pred = pred.detach().clone().requires_grad_(True)
        target = target.detach().clone()
        weight = None if weight is None else weight.detach().clone()
        loss = guidance_loss(pred, target, weight)
        grad = torch.autograd.grad(loss, pred)[0]
    return -grad * scale, float(loss.item())


def official_percents(t_start: int = 1001, t_stop: int = -1) -> tuple[float, float]:
    """(start_percent, end_percent) reproducing the official gate ``t_stop < t + 1 < t_start`` (v2.0
    ``--g_start/--g_stop``, v1 ``--g_t_start/--g_t_stop``) on a 1000-step model: guidance is on for
    model timesteps t_stop <= t <= t_start - 2."""
    start = min(max((NUM_TRAIN_TIMESTEPS + 1 - t_start) / (NUM_TRAIN_TIMESTEPS - 1), 0.0), 1.0)
    end = min(max((NUM_TRAIN_TIMESTEPS - 1 - t_stop) / (NUM_TRAIN_TIMESTEPS - 1), 0.0), 1.0)
    return start, end


def timestep_bounds(start_percent: float, end_percent: float) -> tuple[float, float]:
    """Model timesteps (low, high) between which guidance is on: percent p <-> t = 999 * (1 - p), the
    mapping ComfyUI's percent_to_sigma uses for SD models. Inclusive with half a step of slack so that
    integer timesteps given as percents (official_percents) gate exactly."""
    last = NUM_TRAIN_TIMESTEPS - 1
    return last * (1.0 - end_percent) - 0.5, last * (1.0 - start_percent) + 0.5


# == from the official DDPM step to any sampler =====================================================
# How strongly a sampler's step moves x when its denoised x0 moves (the x0 "sensitivity" of one
# step from sigma to sigma_next, in ComfyUI's x = x0 + sigma * noise space):
#   ode:       first-order ODE / multistep solvers (euler, heun, dpmpp_2m, lms, ...): 1 - r, r = sn/s
#   ancestral: euler_ancestral-style steps to sigma_down (eta):                         1 - sigma_down/s
#   sde:       dpmpp_*_sde-style exponential SDE steps (eta):                           1 - r^(1 + eta)
#   ddpm:      DDPM posterior mean (ComfyUI ddpm, the official spaced sampler):         1 - r^2
#   x0:        the step lands on x0 itself (lcm, *_cfg_pp):                              1
SAMPLER_KINDS = {
    "ancestral": ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "res_multistep_ancestral"),
    "sde": ("dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
            "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "er_sde", "seeds_2", "seeds_3",
            "sa_solver", "sa_solver_pece"),
    "ddpm": ("ddpm",),
    "x0": ("lcm",),
}
# the official edm_* solver names (DiffBIR EDM Sampler's "solver" option)
OFFICIAL_EDM_KINDS = {"euler_a": "ancestral", "dpm_2_a": "ancestral", "dpm++_2s_a": "ancestral",
                      "dpm++_sde": "sde", "dpm++_2m_sde": "sde", "dpm++_3m_sde": "sde"}


def sampler_kind(name: str) -> str:
    """The sensitivity class (see SAMPLER_KINDS) of a k-diffusion sampler name ("euler", "dpmpp_2m_sde" ...)."""
    name = name.removeprefix("sample_")
    if "cfg_pp" in name:
        return "x0"
    for kind, names in SAMPLER_KINDS.items():
        if name in names:
            return kind
    return "ode"


def x0_sensitivity(kind: str, sigma: float, sigma_next: float, eta: float = 1.0) -> float:
    """d x_next / d x0 of one step of a sampler of ``kind`` from sigma to sigma_next (see SAMPLER_KINDS)."""
    if sigma_next <= 0.0 or kind == "x0":
        return 1.0
    if sigma_next >= sigma:  # not a denoising step (e.g. churn); treat as a full step
        return 1.0
    r = sigma_next / sigma
    if kind == "ancestral":
        if not eta:
            return 1.0 - r
        sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        return 1.0 - (sigma_next**2 - sigma_up**2) ** 0.5 / sigma
    if kind == "sde":
        return 1.0 - r ** (1.0 + eta)
    if kind == "ddpm":
        return 1.0 - r * r
    return 1.0 - r


def kdiffusion_factor(sigma: float, sigma_next: float, kind: str = "ode", eta: float = 1.0) -> float:
    """The x0 multiplier of the official delta for one k-diffusion step: the official rule moves the
    DDPM state x_{t-1} (= x / sqrt(1 + sigma^2)) by delta; in ComfyUI's unscaled x that is
    delta * sqrt(1 + sigma_next^2), and the step moves x by sensitivity * (x0 shift)."""
    return math.sqrt(1.0 + sigma_next**2) / x0_sensitivity(kind, sigma, sigma_next, eta)


def step_of(sample_sigmas: torch.Tensor, sigma: float) -> int:
    """Index i of the step (sigma_i -> sigma_{i+1}) that a model evaluation at ``sigma`` belongs to:
    the last i with sigma_i >= sigma (relative tolerance 1e-4); 0 above the first sigma."""
    values = [float(s) for s in sample_sigmas[:-1]]
    index = 0
    for i, s in enumerate(values):
        if s >= sigma * (1.0 - 1e-4):
            index = i
    return index


def _discrete_timestep(model_sampling, sigma: torch.Tensor) -> float:
    return float(model_sampling.timestep(sigma.reshape(1)).reshape(-1)[0])


def step_weight(sample_sigmas, model_sampling, reference_steps: int) -> float:
    """The per-step share of the guidance when it is normalised to ``reference_steps`` steps of the
    official sampler: reference_steps / steps, times the fraction of the 1000 training timesteps
    this run covers (t(first sigma) down to t(last sigma), -1 for a final sigma of 0). 1 when
    reference_steps is 0 (official: one full shift per step, so strength grows with the step count)."""
    if not reference_steps or sample_sigmas is None or len(sample_sigmas) < 2:
        return 1.0
    steps = len(sample_sigmas) - 1
    first = _discrete_timestep(model_sampling, sample_sigmas[0:1].float())
    last_sigma = float(sample_sigmas[-1])
    last = -1.0 if last_sigma <= 0 else _discrete_timestep(model_sampling, sample_sigmas[-1:].float())
    covered = max(first - last, 0.0) / NUM_TRAIN_TIMESTEPS
    return reference_steps * covered / steps


# == autograd through ComfyUI's VAE =================================================================
@contextlib.contextmanager
def autograd_usable(*modules: torch.nn.Module):
    """ComfyUI creates weights under torch.inference_mode, and inference tensors cannot be saved for
    backward. For the duration of the block, every inference parameter/buffer of ``modules`` is
    replaced by a normal copy (a temporary copy of those weights; the originals are put back)."""
    swapped = []
    try:
        with torch.inference_mode(False):
            for root in modules:
                for module in root.modules():
                    for store in (module._parameters, module._buffers):
                        for name, value in list(store.items()):
                            if value is not None and value.is_inference():
                                copy = value.detach().clone()
                                if isinstance(value, torch.nn.Parameter):
                                    copy = torch.nn.Parameter(copy, requires_grad=False)
                                swapped.append((store, name, value))
                                store[name] = copy
        yield
    finally:
        for store, name, value in reversed(swapped):
            store[name] = value


_CHECKPOINT_CLASSES = ("ResnetBlock", "AttnBlock", "Upsample", "MemoryEfficientAttnBlock", "SDPAttnBlock")


@contextlib.contextmanager
def checkpointed(decoder: torch.nn.Module):
    """Gradient checkpointing of the decoder's residual, attention and upsampling blocks for the
    duration of the block: only each block's input is kept for backward and the block is recomputed
    during backward (same values, less memory). Keep backward inside the block."""
    from torch.utils.checkpoint import checkpoint

    patched = []
    for module in decoder.modules():
        if type(module).__name__ not in _CHECKPOINT_CLASSES:
            continue
        original = module.forward

        def forward(*args, _original=original, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)
            return _original(*args, **kwargs)

        had_own = "forward" in module.__dict__
        patched.append((module, had_own, original))
        module.forward = forward
    try:
        yield
    finally:
        for module, had_own, original in reversed(patched):
            if had_own:
                module.forward = original
            else:
                del module.forward


def tile_spans(size: int, core: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping cores of length <= core covering [0, size), each with its context window
    (start, end) extended by margin: [(core_start, core_end, window_start, window_end)]."""
    spans = []
    count = max(1, math.ceil(size / core))
    bounds = [round(i * size / count) for i in range(count + 1)]
    for a, b in zip(bounds, bounds[1:]):
        spans.append((a, b, max(0, a - margin), min(size, b + margin)))
    return spans


# == the guidance ===================================================================================
@dataclasses.dataclass
class GuidanceConfig:
    scale: float = 0.0  # official g_scale (the step is g_scale * 3000 * -dL/dx0)
    loss: str = "w_mse"
    space: str = "latent"
    start_percent: float = 0.0
    end_percent: float = 1.0
    repeat: int = 1
    latent_target: str = "mode"
    reference_steps: int = 50  # 0: official per-step rule
    rgb_memory: str = "checkpoint"
    rgb_tile: int = 32  # latent cells per tile core for rgb_memory="tiled" (256 px)
    rgb_tile_margin: int = 8

    def check(self):
        if self.loss not in LOSSES:
            raise GuidanceError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.space not in SPACES:
            raise GuidanceError(f"unknown space {self.space!r}; choose one of {', '.join(SPACES)}")
        if self.latent_target not in LATENT_TARGETS:
            raise GuidanceError(f"unknown latent target {self.latent_target!r}; choose {', '.join(LATENT_TARGETS)}")
        if self.rgb_memory not in RGB_MEMORY:
            raise GuidanceError(f"unknown rgb memory mode {self.rgb_memory!r}; choose {', '.join(RGB_MEMORY)}")
        if not math.isfinite(self.scale) or self.scale < 0:
            raise GuidanceError(f"the guidance scale must be a finite number >= 0, got {self.scale}")
        if self.repeat < 1:
            raise GuidanceError(f"repeat must be at least 1, got {self.repeat}")
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise GuidanceError(f"need 0 <= start_percent <= end_percent <= 1, got {self.start_percent} and "
                                f"{self.end_percent}")
        if self.reference_steps < 0:
            raise GuidanceError(f"reference_steps must be >= 0, got {self.reference_steps}")
        if self.rgb_tile < 8 or self.rgb_tile_margin < 0:
            raise GuidanceError("rgb_tile must be >= 8 latent cells and rgb_tile_margin >= 0")


def pad_to(rgb: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero padding at the bottom and right (the official pad_to_multiples_of)."""
    h, w = rgb.shape[-2:]
    if (h, w) == (height, width):
        return rgb.clone()
    return F.pad(rgb, (0, width - w, 0, height - h), mode="constant", value=0)


def padded_size(h: int, w: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


class Target:
    """The stage-1 image as a guidance target for one padded pixel size: the [-1,1] image, its pixel
    weight map, and (latent space) the VAE posterior (mean, std) of the padded image."""

    def __init__(self, rgb01: torch.Tensor, height: int, width: int):
        self.height, self.width = height, width
        self.pixels = pad_to(rgb01, height, width) * 2 - 1  # official cond_fn.target = pad_clean * 2 - 1
        self.pixel_weight = official_weight_map((self.pixels + 1) / 2)
        self.mean = self.std = None
        self._device_cache = {}

    def on(self, device, name: str, make):
        key = (name, str(device))
        if key not in self._device_cache:
            self._device_cache[key] = make().to(device)
        return self._device_cache[key]


class RestorationGuidance:
    """The guidance of one patched MODEL: the stage-1 target, the VAE and the options. Call
    ``patch(model)`` for the patched clone; the patch is ``post_cfg`` (a sampler_post_cfg_function)
    plus a SAMPLER_SAMPLE wrapper that learns the sampler and seed of every run."""

    def __init__(self, vae, image_rgb01: torch.Tensor, config: GuidanceConfig, noise_source=None):
        config.check()
        if image_rgb01.ndim != 4 or image_rgb01.shape[1] != 3:
            raise GuidanceError(f"the target must be an RGB image batch [B,3,H,W], got {tuple(image_rgb01.shape)}")
        bad = (~torch.isfinite(image_rgb01)).sum().item()
        if bad:
            raise GuidanceError(f"the target (stage-1) image has {bad} NaN or infinite values; fix the node that "
                                "produced it (restoration guidance would spread them into every step)")
        self.vae = vae
        self.config = config
        # not clipped: the official v2.0 target is the stage-1 output as it is (pad_clean * 2 - 1)
        self.image = image_rgb01.detach().float().cpu()
        self.key = uuid.uuid4().hex
        self.noise_source = noise_source  # tests: callable(shape) -> posterior noise
        self._targets: dict[tuple[int, int], Target] = {}
        self._fallback_run = None
        self.last_losses: list[tuple[int, float]] = []

    # -- targets ----------------------------------------------------------------------------------
    def target(self, height: int, width: int) -> Target:
        """The target for a sampled image of height x width pixels (the latent size x 8)."""
        h, w = self.image.shape[-2:]
        if height < h or width < w or height - h >= PAD_MULTIPLE or width - w >= PAD_MULTIPLE:
            raise GuidanceError(
                f"restoration guidance: the sampled latent is for a {width}x{height} image but the target (stage-1) "
                f"image is {w}x{h}. Connect the same stage-1 image that DiffBIR Apply IRControlNet encoded and "
                "sample its LATENT output (the image zero-padded to a multiple of 64), or resize the target "
                "to the latent's size x 8.")
        key = (height, width)
        if key not in self._targets:
            self._targets[key] = Target(self.image, height, width)
        target = self._targets[key]
        if self.config.space == "latent" and target.mean is None:
            cache_key = (id(self.vae.first_stage_model), self._image_digest(), height, width)
            if cache_key not in _ENCODED:
                _ENCODED[cache_key] = self.encode(target.pixels)
                while len(_ENCODED) > _ENCODED_KEEP:
                    _ENCODED.pop(next(iter(_ENCODED)))
            target.mean, target.std = _ENCODED[cache_key]
        return target

    def _image_digest(self) -> str:
        if getattr(self, "_digest", None) is None:
            data = self.image.contiguous().numpy().tobytes()
            self._digest = hashlib.sha1(data).hexdigest() + str(tuple(self.image.shape))
        return self._digest

    def prepare(self):
        """Precomputes the target for the official padding (multiple of 64) at node time."""
        h, w = self.image.shape[-2:]
        self.target(*padded_size(h, w))

    def encode(self, pixels_pm1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) of a [-1,1] image batch, float32 on the CPU (unscaled latent)."""
        import comfy.model_management

        vae = self.vae
        fsm = vae.first_stage_model
        if not (hasattr(fsm, "encoder") and hasattr(fsm, "quant_conv")):
            if self.config.latent_target == "posterior_sample":
                raise GuidanceError("this VAE does not expose its posterior (encoder + quant_conv): use "
                                    "latent_target 'mode'")
            mean = vae.encode(((pixels_pm1 + 1) / 2).movedim(1, -1)).float().cpu()
            return mean, torch.zeros_like(mean)
        comfy.model_management.load_models_gpu([vae.patcher])
        means, stds = [], []
        with torch.no_grad():
            for i in range(pixels_pm1.shape[0]):
                x = pixels_pm1[i:i + 1].to(device=vae.device, dtype=vae.vae_dtype)
                moments = fsm.quant_conv(fsm.encoder(x)).float()
                mean, logvar = torch.chunk(moments, 2, dim=1)
                logvar = torch.clamp(logvar, -30.0, 20.0)
                means.append(mean.cpu())
                stds.append(torch.exp(0.5 * logvar).cpu())
        return torch.cat(means), torch.cat(stds)

    # -- the patch --------------------------------------------------------------------------------
    def patch(self, model):
        """A clone of the ModelPatcher ``model`` with this guidance attached (scale 0: a plain clone)."""
        import comfy.patcher_extension

        m = model.clone()
        if self.config.scale == 0:
            return m
        m.set_model_sampler_post_cfg_function(self.post_cfg)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "diffbir_guidance_" + self.key,
                               self.sampler_wrapper)
        if self.config.space == "rgb" or self.config.latent_target == "posterior_sample":
            m.set_additional_models("diffbir_guidance_" + self.key, [self.vae.patcher])
        return m

    def sampler_wrapper(self, executor, guider, sigmas, extra_args, *args, **kwargs):
        """SAMPLER_SAMPLE wrapper: a fresh run state (sampler kind, eta, seed) for every sampling run."""
        sampler = getattr(executor, "class_obj", None)
        function = getattr(sampler, "sampler_function", None)
        options = dict(getattr(sampler, "extra_options", None) or {})
        name = getattr(function, "__name__", "") or ""
        if name == "sample_edm_official" and "solver" in options:
            kind = OFFICIAL_EDM_KINDS.get(options["solver"], "ode")
        else:
            kind = sampler_kind(name)
        eta = options.get("eta")
        if eta is None and function is not None:
            with contextlib.suppress(TypeError, ValueError):
                parameter = inspect.signature(function).parameters.get("eta")
                if parameter is not None and isinstance(parameter.default, (int, float)):
                    eta = parameter.default
        run = self._new_run(kind=kind, eta=1.0 if eta is None else float(eta), seed=extra_args.get("seed"),
                            sampler=name)
        transformer_options = extra_args.setdefault("model_options", {}).setdefault("transformer_options", {})
        runs = dict(transformer_options.get(RUN_KEY) or {})
        runs[self.key] = run
        transformer_options[RUN_KEY] = runs
        return executor(guider, sigmas, extra_args, *args, **kwargs)

    def _new_run(self, kind="ode", eta=1.0, seed=None, sampler="") -> dict:
        self.last_losses = []
        return {"kind": kind, "eta": eta, "seed": seed, "sampler": sampler, "generator": None, "weight": None,
                "losses": self.last_losses}

    def _run(self, transformer_options: dict) -> dict:
        run = (transformer_options.get(RUN_KEY) or {}).get(self.key)
        if run is None:
            if self._fallback_run is None:
                log.warning("DiffBIR restoration guidance: no sampler information for this run (the model was "
                            "called outside ComfyUI's sampler); assuming a first-order ODE sampler")
                self._fallback_run = self._new_run()
            run = self._fallback_run
        return run

    def step_factor(self, sigma: torch.Tensor, transformer_options: dict, model_sampling, run: dict
                    ) -> tuple[int, torch.Tensor | float]:
        """(model timestep, x0 multiplier of the official delta) for this model evaluation."""
        sample_sigmas = transformer_options.get("sample_sigmas")
        if run["weight"] is None:
            run["weight"] = step_weight(sample_sigmas, model_sampling, self.config.reference_steps)
        weight = run["weight"]
        step = transformer_options.get(STEP_KEY)
        if step is not None:  # DiffBIR's spaced sampler: exactly the official grad_rescale
            rescale = 1 / torch.tensor(step["posterior_mean_coef1"], dtype=torch.float32)
            return int(step["t"]), (rescale if weight == 1.0 else rescale * weight)
        s = sigma.reshape(-1)[:1].float()
        t = int(round(_discrete_timestep(model_sampling, s)))
        s = float(s)
        if sample_sigmas is None:
            sigma_next = 0.0
        else:
            sigma_next = float(sample_sigmas[min(step_of(sample_sigmas, s) + 1, len(sample_sigmas) - 1)])
        return t, weight * kdiffusion_factor(s, sigma_next, run["kind"], run["eta"])

    def active(self, t: int) -> bool:
        low, high = timestep_bounds(self.config.start_percent, self.config.end_percent)
        return low <= t <= high

    def post_cfg(self, args: dict) -> torch.Tensor:
        """sampler_post_cfg_function: the guided x0."""
        denoised = args["denoised"]
        if self.config.scale == 0:
            return denoised
        model = args["model"]
        transformer_options = (args.get("model_options") or {}).get("transformer_options") or {}
        run = self._run(transformer_options)
        t, factor = self.step_factor(args["sigma"], transformer_options, model.model_sampling, run)
        if not self.active(t):
            return denoised
        with torch.inference_mode(False), torch.no_grad():
            x0 = denoised.detach().clone()
            if isinstance(factor, torch.Tensor):
                factor = factor.to(x0.device)
            parts = self._windows(x0, transformer_options)
            losses = []
            for _ in range(self.config.repeat):
                deltas, loss = [], 0.0
                for rows, window in parts:
                    delta, part_loss = self.delta(x0[rows], model, window, transformer_options, run)
                    deltas.append(delta)
                    loss += part_loss
                losses.append(loss)
                delta = deltas[0] if len(deltas) == 1 else torch.cat(deltas)
                x0 = x0 + delta.to(x0.dtype) * factor
            run["losses"].append((t, sum(losses) / len(losses)))
        return x0

    @staticmethod
    def _windows(x0: torch.Tensor, transformer_options: dict) -> list[tuple[slice, tuple | None]]:
        """(batch rows, latent window) pairs of this evaluation. Normally one pair covering the whole
        latent (guidance runs after CFG on the full latent, also under DiffBIR's tiled sampling). A
        wrapper that calls the sampling function per window passes the pack's tiling convention:
        ``diffbir_window`` = (y0, y1, x0, x1) in latent pixels, or a list of them for windows stacked
        along the batch, with ``diffbir_tiles["latent_shape"]`` the full latent's shape."""
        window = transformer_options.get(WINDOW_KEY)
        if window is None:
            return [(slice(None), None)]
        tiles = transformer_options.get("diffbir_tiles") or {}
        shape = tiles.get("latent_shape")
        if shape is None:
            raise GuidanceError("restoration guidance: diffbir_window without diffbir_tiles['latent_shape'] (the "
                                "full latent's shape); a windowing wrapper must pass both")
        full = (int(shape[-2]), int(shape[-1]))
        windows = [window] if len(window) == 4 and all(isinstance(v, int) for v in window) else list(window)
        if x0.shape[0] % len(windows):
            raise GuidanceError(f"restoration guidance: {len(windows)} windows for a batch of {x0.shape[0]}")
        per = x0.shape[0] // len(windows)
        return [(slice(i * per, (i + 1) * per), (*(int(v) for v in w), *full)) for i, w in enumerate(windows)]

    # -- one gradient step ------------------------------------------------------------------------
    def _locate(self, x0: torch.Tensor, window) -> tuple[Target, tuple[int, int, int, int], float]:
        """The target for x0's full image, x0's latent region inside it and the loss normaliser
        (x0's share of the full image: 1 unless a wrapper evaluates windows)."""
        h, w = x0.shape[-2:]
        if window is not None:
            y0, y1, x_0, x_1, full_h, full_w = window
            if (y1 - y0, x_1 - x_0) != (h, w) or y0 < 0 or x_0 < 0 or y1 > full_h or x_1 > full_w:
                raise GuidanceError(f"restoration guidance: window {window[:4]} of a {full_h}x{full_w} latent does "
                                    f"not match a {h}x{w} evaluation")
            top, left = y0, x_0
        else:
            full_h, full_w, top, left = h, w, 0, 0
        target = self.target(full_h * LATENT_FACTOR, full_w * LATENT_FACTOR)
        return target, (top, left, h, w), (h * w) / (full_h * full_w)

    def _batch(self, tensor: torch.Tensor, batch: int, what: str) -> torch.Tensor:
        if tensor.shape[0] == batch:
            return tensor
        if tensor.shape[0] == 1:
            return tensor.expand(batch, *tensor.shape[1:])
        raise GuidanceError(f"restoration guidance: the {what} has a batch of {tensor.shape[0]} and the latent a "
                            f"batch of {batch}; use one target image or one per latent")

    def _posterior_noise(self, x0: torch.Tensor, transformer_options: dict, run: dict) -> torch.Tensor:
        if self.noise_source is not None:
            return self.noise_source(tuple(x0.shape)).to(x0)
        step = transformer_options.get(STEP_KEY) or {}
        sampler_noise = step.get("noise_sampler")
        if callable(sampler_noise):  # the spaced sampler's own stream: the official draw order
            return sampler_noise(None, None).to(x0)
        if run["generator"] is None:
            generator = torch.Generator(device="cpu")
            seed = run["seed"]
            generator.manual_seed((int(seed) if seed is not None else 0) + 0x5EED)
            run["generator"] = generator
        return torch.randn(tuple(x0.shape), generator=run["generator"], dtype=torch.float32).to(x0)

    def delta(self, x0, model, window, transformer_options, run) -> tuple[torch.Tensor, float]:
        """-g_scale * 3000 * dL/dx0 at x0 (latent: direct; rgb: through the VAE decoder)."""
        target, (top, left, h, w), share = self._locate(x0, window)
        scale = self.config.scale * SCALE_MULTIPLIER
        batch = x0.shape[0]
        use_weight = self.config.loss == "w_mse"
        if self.config.space == "latent":
            region = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
            mean = self._batch(target.on(x0.device, "mean", lambda: target.mean), batch, "target image")[region]
            if self.config.latent_target == "posterior_sample":
                std = self._batch(target.on(x0.device, "std", lambda: target.std), batch, "target image")[region]
                # official: vae.encode(target).sample() * scale_factor, one draw per repeat
                latent = mean.float() + std.float() * self._posterior_noise(mean.float(), transformer_options, run)
            else:
                latent = mean.float()
            goal = model.latent_format.process_in(latent)
            weight = None
            if use_weight:
                weight = target.on(x0.device, "latent_weight", lambda: latent_weight_map(target.pixel_weight))
                weight = self._batch(weight, batch, "target image")[region]
            delta, loss = guidance_delta(x0.float(), goal, weight, scale)
            return delta * share, loss
        return self._rgb_delta(x0, model, target, (top, left, h, w), share, scale, batch, use_weight)

    def _rgb_delta(self, x0, model, target, region, share, scale, batch, use_weight):
        import comfy.model_management

        top, left, h, w = region
        f = LATENT_FACTOR
        pix_region = (slice(None), slice(None), slice(top * f, (top + h) * f), slice(left * f, (left + w) * f))
        goal = self._batch(target.on(x0.device, "pixels", lambda: target.pixels), batch, "target image")[pix_region]
        weight = None
        if use_weight:
            weight = self._batch(target.on(x0.device, "pixel_weight", lambda: target.pixel_weight), batch,
                                 "target image")[pix_region]
        vae = self.vae
        comfy.model_management.load_models_gpu([vae.patcher])
        fsm = vae.first_stage_model
        device, dtype = vae.device, vae.vae_dtype
        memory = self.config.rgb_memory
        self._make_room(vae, batch, h * f, w * f)
        with torch.inference_mode(False), autograd_usable(*self._decoder_parts(fsm)), \
                (checkpointed(fsm.decoder) if memory != "full" else contextlib.nullcontext()):
            goal = goal.clone()  # normal tensors (the cached target may have been made in inference mode)
            weight = None if weight is None else weight.clone()
            if memory == "tiled":
                grad, loss = self._tiled_vjp(x0, model, fsm, goal, weight, scale, device, dtype)
            else:
                grad, loss = self._full_vjp(x0, model, fsm, goal, weight, scale, device, dtype)
        return grad.to(x0.device, torch.float32) * share, loss

    def _make_room(self, vae, batch: int, height: int, width: int):
        """On a GPU, asks ComfyUI to offload models that this sampling run does not use (e.g. the text
        encoder) until the decoder back-propagation is likely to fit; models in use stay loaded."""
        import comfy.model_management as mm

        device = torch.device(vae.device)
        if device.type == "cpu":
            return
        memory = self.config.rgb_memory
        pixels = height * width
        if memory == "tiled":
            side = (self.config.rgb_tile + 2 * self.config.rgb_tile_margin) * LATENT_FACTOR
            pixels = min(pixels, side * side)
        dtype_size = torch.tensor([], dtype=vae.vae_dtype).element_size()
        need = batch * pixels * RGB_BYTES_PER_PIXEL[memory] * dtype_size / 4 + DECODER_WEIGHTS_BYTES * dtype_size / 4
        keep = [m for m in mm.current_loaded_models if getattr(m, "currently_used", False)]
        mm.free_memory(need, device, keep_loaded=keep)

    @staticmethod
    def _decoder_parts(fsm):
        parts = [fsm.decoder]
        for name in ("post_quant_conv", "bn"):
            part = getattr(fsm, name, None)
            if isinstance(part, torch.nn.Module):
                parts.append(part)
        return parts

    @staticmethod
    def _backward(pixels: torch.Tensor, delta: torch.Tensor):
        """pixels.backward(delta), rescaled for low-precision VAEs so small deltas do not underflow."""
        if pixels.dtype == torch.float32:
            pixels.backward(delta)
            return 1.0
        peak = float(delta.abs().max())
        norm = peak if peak > 0 else 1.0
        pixels.backward((delta / norm).to(pixels.dtype))
        return norm

    def _full_vjp(self, x0, model, fsm, goal, weight, scale, device, dtype):
        with torch.enable_grad():
            z = x0.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
            pixels = fsm.decode(model.latent_format.process_out(z))
            delta, loss = guidance_delta(pixels.detach().float(), goal.to(device), None if weight is None
                                         else weight.to(device), scale)
            norm = self._backward(pixels, delta.to(device))
        return z.grad.float() * norm, loss

    def _tiled_vjp(self, x0, model, fsm, goal, weight, scale, device, dtype):
        """Decode-with-grad per tile: each tile's core pixels get the official per-pixel gradient
        (normalised by the whole image), the tile's margin gives the decoder its context."""
        h, w = x0.shape[-2:]
        f = LATENT_FACTOR
        grad = torch.zeros(x0.shape, dtype=torch.float32, device=device)
        numel = goal.shape[1] * goal.shape[2] * goal.shape[3]
        total = 0.0
        for cy0, cy1, wy0, wy1 in tile_spans(h, self.config.rgb_tile, self.config.rgb_tile_margin):
            for cx0, cx1, wx0, wx1 in tile_spans(w, self.config.rgb_tile, self.config.rgb_tile_margin):
                with torch.enable_grad():
                    z = x0[..., wy0:wy1, wx0:wx1].detach().to(device=device, dtype=dtype).clone()
                    z.requires_grad_(True)
                    pixels = fsm.decode(model.latent_format.process_out(z))
                    core = (slice(None), slice(None), slice((cy0 - wy0) * f, (cy1 - wy0) * f),
                            slice((cx0 - wx0) * f, (cx1 - wx0) * f))
                    img = (slice(None), slice(None), slice(cy0 * f, cy1 * f), slice(cx0 * f, cx1 * f))
                    pred = pixels.detach().float()[core].clone().requires_grad_(True)
                    err = (pred - goal[img].to(device)).pow(2)
                    if weight is not None:
                        err = err * weight[img].to(device)
                    loss = err.sum() / numel
                    delta = -torch.autograd.grad(loss, pred)[0] * scale
                    full = torch.zeros_like(pixels, dtype=torch.float32)
                    full[core] = delta
                    norm = self._backward(pixels, full)
                total += float(loss.detach())
                grad[..., wy0:wy1, wx0:wx1] += z.grad.float() * norm
        return grad, total
