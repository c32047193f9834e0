"""Region-adaptive restoration guidance (DiffBIR v2.0, "RG"; v1's "latent image guidance") as a
ComfyUI MODEL patch. One job per file:

- ``maths``: the official maths (weight map, loss and step, sampling range) and the options;
- ``steps``: how strong each sampler step's pull is (sampler kinds, step-count normalisation);
- ``targets``: the stage-1 image as a target, and its VAE posterior (cached per VAE);
- ``rgb_backward``: the step back-propagated through the VAE decoder, memory bounded;
- ``restoration``: ``RestorationGuidance``, the patch that ties them to the sampler.

The names below are the package's API; the nodes use them.
"""

from .maths import (
    LATENT_TARGETS,
    LOSSES,
    RGB_MEMORY,
    SCALE_MULTIPLIER,
    SPACES,
    GuidanceConfig,
    GuidanceError,
    guidance_delta,
    guidance_loss,
    latent_weight_map,
    official_percents,
    official_weight_map,
    timestep_bounds,
)
from .restoration import RestorationGuidance
from .steps import kdiffusion_factor, sampler_kind, step_weight, x0_sensitivity

__all__ = [
    "LATENT_TARGETS", "LOSSES", "RGB_MEMORY", "SCALE_MULTIPLIER", "SPACES", "GuidanceConfig", "GuidanceError",
    "RestorationGuidance", "guidance_delta", "guidance_loss", "kdiffusion_factor", "latent_weight_map",
    "official_percents", "official_weight_map", "sampler_kind", "step_weight", "timestep_bounds", "x0_sensitivity",
]
