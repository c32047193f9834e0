"""The official guidance maths: the options, the w_mse weight map (pixels and latent cells), the
loss and its gradient step, and the sampling range (official timesteps <-> percents)."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

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
