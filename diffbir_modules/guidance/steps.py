"""How strong each sampler step's pull is: the sampler kind (ODE, ancestral, SDE) learnt from the
sampler function, the x0 shift that moves a k-diffusion step like the official posterior-mean shift,
and the step-count normalisation (derivations in docs/guidance.md)."""

from __future__ import annotations

import math

import torch

from .maths import NUM_TRAIN_TIMESTEPS

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


def discrete_timestep(model_sampling, sigma: torch.Tensor) -> float:
    return float(model_sampling.timestep(sigma.reshape(1)).reshape(-1)[0])


def step_weight(sample_sigmas, model_sampling, reference_steps: int) -> float:
    """The per-step share of the guidance when it is normalised to ``reference_steps`` steps of the
    official sampler: reference_steps / steps, times the fraction of the 1000 training timesteps
    this run covers (t(first sigma) down to t(last sigma), -1 for a final sigma of 0). 1 when
    reference_steps is 0 (official: one full shift per step, so strength grows with the step count)."""
    if not reference_steps or sample_sigmas is None or len(sample_sigmas) < 2:
        return 1.0
    steps = len(sample_sigmas) - 1
    first = discrete_timestep(model_sampling, sample_sigmas[0:1].float())
    last_sigma = float(sample_sigmas[-1])
    last = -1.0 if last_sigma <= 0 else discrete_timestep(model_sampling, sample_sigmas[-1:].float())
    covered = max(first - last, 0.0) / NUM_TRAIN_TIMESTEPS
    return reference_steps * covered / steps
