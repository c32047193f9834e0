"""What kind of Stable Diffusion model the pack is handed: its family from the UNet config (SD 1.x,
SD 2.x, SDXL-shaped) and its prediction type from its model_sampling. The one place that tells SD
models apart; the IRControlNet's checks and the samplers ask it."""

from __future__ import annotations

import comfy.model_sampling


def describe(unet_config: dict) -> str:
    """Which Stable Diffusion family a UNet config is shaped like, with the numbers that tell, for errors."""
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


def prediction_of(model_sampling) -> str | None:
    """"v", "eps", or None for anything else (flow, x0, EDM ...)."""
    if isinstance(model_sampling, comfy.model_sampling.V_PREDICTION) and not isinstance(
            model_sampling, comfy.model_sampling.EDM):
        return "v"
    if type(model_sampling).calculate_denoised is comfy.model_sampling.EPS.calculate_denoised and isinstance(
            model_sampling, comfy.model_sampling.EPS):
        return "eps"
    return None
