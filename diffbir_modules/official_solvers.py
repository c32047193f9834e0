"""The official ``ddim`` and ``dpm++_m2`` samplers and ``--rescale_cfg``, inside ComfyUI's sampling.

- ``ddim_sigmas`` / ``sample_ddim``: the official DDIM sampler (eta 0, deterministic) on the official
  timesteps ``range(0, 1000, 1000 // steps) + 1`` (4 steps -> 751, 501, 251, 1; 7 steps -> 8 timesteps
  995 .. 1, as officially). ComfyUI's ``ddim_uniform`` scheduler selects the same ones only when
  ``steps`` divides 1000 (it keeps the last ``steps``).
  The official last step goes to ``alphas_cumprod[0]``, not to 0, and the official code decodes that
  slightly noisy latent: so does this sampler (a plain euler run with the same sigmas ends on x0).
- ``DPMSolverSchedule`` / ``sample_dpm_solver``: the official DPM-Solver++ multistep, order 2
  (``dpm++_m2``): continuous times ``linspace(1, 1/N, steps + 1)``, log(alpha) interpolated linearly
  between the 1000 training steps, the UNet evaluated at the fractional timestep ``1000 * t - 1000/N``,
  first step of order 1 and, below 10 steps, the last one too.
- ``rescaled_cfg_scale``: the official ``--rescale_cfg`` schedule, 1 + cfg * (1 - cos(pi * ((1000 -
  t) / 1000) ** 5)) / 2 at model timestep t (cfg rises from 1 at t = 999 to cfg + 1 at t = 0).

Both samplers start from the official ``x_T`` as it is (the latent at their first timestep, not
scaled): ComfyUI scales the initial noise by ``sqrt(1 + sigma^2)`` or ``sigma`` (see
``initial_noise``), which is undone first.
"""

from __future__ import annotations

import math

import comfy.model_management
import torch

from . import schedules

DPM_SOLVER_ORDER = 2  # the official command line offers dpm++_m2 only
DPM_SOLVER_LAMBDA_CLIP = -5.1  # the official schedule drops the steps whose half log-SNR is below this
DPM_SOLVER_LOWER_ORDER_BELOW = 10  # under this many steps the last step is of order 1, as officially


class OfficialSamplerError(ValueError):
    pass


def _model_sampling(model):
    return model.inner_model.inner_model.model_sampling


def initial_noise(x: torch.Tensor, sigmas: torch.Tensor, model_sampling) -> torch.Tensor:
    """The noise ComfyUI's KSAMPLER scaled into ``x`` (an empty latent plus ``noise * sqrt(1 +
    sigma0^2)`` when sigma0 is the schedule's largest, else ``noise * sigma0``): the official ``x_T``."""
    sigma0 = float(sigmas[0])
    sigma_max = float(model_sampling.sigma_max)
    scale = math.sqrt(1.0 + sigma0**2) if (math.isclose(sigma_max, sigma0, rel_tol=1e-5) or sigma0 > sigma_max) \
        else sigma0
    return x / scale


def _step_info(extra_args: dict) -> dict:
    return {} if extra_args is None else extra_args


def _callback(callback, i, x_comfy, sigma, denoised):
    if callback is not None:
        callback({"x": x_comfy, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


# -- DDIM -----------------------------------------------------------------------------------------
def ddim_timesteps(steps: int, num_timesteps: int = schedules.NUM_TIMESTEPS) -> list[int]:
    """The official DDIM ("uniform") timesteps, from the largest down: every (1000 // steps)-th
    training step from 0, plus 1; that can be more than ``steps`` (7 -> 8 timesteps)."""
    stride = num_timesteps // int(steps)
    if stride < 1:
        raise OfficialSamplerError(f"DiffBIR DDIM Sigmas: at most {num_timesteps} steps, got {steps}")
    timesteps = [t + 1 for t in range(0, num_timesteps, stride)]
    if timesteps[-1] >= num_timesteps:
        raise OfficialSamplerError(f"DiffBIR DDIM Sigmas: {steps} steps would need timestep {timesteps[-1]}, past the "
                                   f"last training step (the official DDIM fails the same way); choose another count")
    return timesteps[::-1]


def ddim_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """SIGMAS at the official DDIM timesteps (the model table's sigma of each), then 0."""
    return torch.tensor([float(model_sampling.sigmas[t]) for t in ddim_timesteps(steps)] + [0.0], dtype=torch.float32)


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """The official DDIM sampler with eta 0 (what the official ``--sampler ddim`` runs).

    Each non-zero sigma selects its training timestep (ComfyUI's nearest); per step, from the
    denoised x0 and the implied noise ``eps = (x_in - x0) / sigma``:
    ``x_prev = sqrt(acp_prev) * x0 + sqrt(1 - acp_prev) * eps``, where ``acp_prev`` is that of the next
    timestep and, for the last step before a final sigma 0, ``alphas_cumprod[0]`` as officially.
    Returns that official latent (in DDPM scale, not ComfyUI's ``x * sqrt(1 + sigma^2)``) when the last
    sigma is 0; a run that stops at a non-zero sigma returns ComfyUI's representation there."""
    from . import sampling

    extra_args = _step_info(extra_args)
    model_sampling = _model_sampling(model)
    acp = sampling.training_alphas_cumprod(model_sampling)
    n = len(sigmas) - 1
    if n < 1:
        return x
    step_t, end_t = sampling.checked_timesteps(model_sampling, sigmas, "DiffBIR DDIM Sampler", "DiffBIR DDIM Sigmas",
                                               OfficialSamplerError)
    ends_clean = end_t is None
    if acp[step_t[0]] == 0.0:
        raise OfficialSamplerError("DiffBIR DDIM Sampler: the first timestep has alphas_cumprod 0 (zero terminal SNR); "
                                   "the official DDIM timesteps never include t = 999: use DiffBIR DDIM Sigmas")

    def float32(value):
        return torch.tensor(value, dtype=torch.float32, device=x.device)

    s_in = x.new_ones([x.shape[0]])
    x_t = initial_noise(x, sigmas, model_sampling)
    for i in range(n):
        comfy.model_management.throw_exception_if_processing_interrupted()
        a_t = float32(acp[step_t[i]])
        a_prev = float32(acp[(0 if ends_clean else end_t) if i == n - 1 else step_t[i + 1]])
        sigma = sigmas[i].to(x)
        x_in = x_t / a_t.sqrt()
        x0 = model(x_in, sigma * s_in, **extra_args)
        eps = (x_in - x0) / sigma
        _callback(callback, i, x_in, sigmas[i], x0)
        x_t = a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps
    if ends_clean:
        return x_t
    return x_t * torch.sqrt(1.0 + sigmas[-1].to(x) ** 2)


# -- DPM-Solver++ ---------------------------------------------------------------------------------
class DPMSolverSchedule:
    """The official DPM-Solver noise schedule ("discrete", from the training betas as float32):
    log(alpha_t) = 0.5 * cumsum(log(1 - beta)), the steps whose half log-SNR is below -5.1 dropped
    (for zero terminal SNR the last few), the rest placed at t = 1/N, 2/N, ..., 1 and interpolated
    linearly in t."""

    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=torch.float32)
        log_alphas = 0.5 * torch.log(1.0 - betas).cumsum(dim=0)
        log_sigmas = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alphas))
        lambdas = log_alphas - log_sigmas
        dropped = int(torch.searchsorted(torch.flip(lambdas, [0]), DPM_SOLVER_LAMBDA_CLIP))
        if dropped > 0:
            log_alphas = log_alphas[:-dropped]
        self.log_alphas = log_alphas
        self.total_n = len(log_alphas)
        self.times = torch.linspace(0.0, 1.0, self.total_n + 1)[1:]

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).float()
        k = len(self.times)
        j = torch.searchsorted(self.times, t).clamp(1, k - 1)
        x0, x1 = self.times[j - 1], self.times[j]
        y0, y1 = self.log_alphas[j - 1], self.log_alphas[j]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def alpha_sigma_lambda(self, t: torch.Tensor):
        log_alpha = self.log_alpha(t)
        alpha = torch.exp(log_alpha)
        sigma = torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))
        lam = log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
        return alpha, sigma, lam

    def times_for(self, steps: int) -> torch.Tensor:
        """The official time_uniform grid: linspace(1, 1/N, steps + 1) (float32)."""
        return torch.linspace(1.0, 1.0 / self.total_n, int(steps) + 1)

    def model_timesteps(self, times: torch.Tensor) -> torch.Tensor:
        """The (fractional) UNet timestep of each continuous time."""
        return (times - 1.0 / self.total_n) * 1000.0

    def comfy_sigmas(self, times: torch.Tensor) -> torch.Tensor:
        """ComfyUI's sigma (sqrt((1 - acp) / acp) = sigma_t / alpha_t) of each continuous time."""
        alpha, sigma, _ = self.alpha_sigma_lambda(times)
        return sigma / alpha


def dpm_solver_schedule(model_sampling) -> DPMSolverSchedule:
    version = getattr(model_sampling, "diffbir_version", None)
    if version is None:
        raise OfficialSamplerError("DiffBIR DPM-Solver needs the model through DiffBIR Model Sampling (its schedule "
                                   "and the fractional timesteps the official solver evaluates)")
    return DPMSolverSchedule(schedules.official_betas(version))


def dpm_solver_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """SIGMAS of the official dpm++_m2 grid (the last one is that of t = 1/N, about 0.029, not 0)."""
    schedule = dpm_solver_schedule(model_sampling)
    return schedule.comfy_sigmas(schedule.times_for(steps))


@torch.no_grad()
def sample_dpm_solver(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """The official ``dpm++_m2``: DPM-Solver++ (data prediction), multistep, order 2, solver type
    "dpmsolver", time-uniform steps, lower order at the first step and (below 10 steps) the last.

    ``sigmas`` must be DiffBIR DPM-Solver Sigmas (checked): the solver works on its continuous times.
    The model is called at ``x / alpha_t`` and ComfyUI's sigma of that time, with the timestep lookup
    of the model sampling set for this run to the fractional official timestep; its denoised output
    is the official data prediction. Returns the official latent at t = 1/N (not fully denoised), as
    the official code decodes it."""
    extra_args = _step_info(extra_args)
    model_sampling = _model_sampling(model)
    schedule = dpm_solver_schedule(model_sampling)
    steps = len(sigmas) - 1
    if steps < DPM_SOLVER_ORDER:
        raise OfficialSamplerError(f"DiffBIR DPM-Solver Sampler needs at least {DPM_SOLVER_ORDER} steps")
    times = schedule.times_for(steps)
    expected = schedule.comfy_sigmas(times)
    if not torch.allclose(sigmas.detach().float().cpu(), expected, rtol=1e-4, atol=0.0):
        raise OfficialSamplerError("DiffBIR DPM-Solver Sampler: the sigmas are not those of DiffBIR DPM-Solver Sigmas "
                                   f"for {steps} steps (the solver runs on its own continuous times); "
                                   "connect that node")
    alpha, sigma, lam = schedule.alpha_sigma_lambda(times)
    model_t = schedule.model_timesteps(times)

    previous = getattr(model_sampling, "timestep_table", None)
    model_sampling.timestep_table = (expected.to(x.device), model_t.to(x.device))
    s_in = x.new_ones([x.shape[0]])

    def data_prediction(x_t, i):
        comfy.model_management.throw_exception_if_processing_interrupted()
        x_in = x_t / alpha[i].to(x)
        x0 = model(x_in, expected[i].to(x) * s_in, **extra_args)
        _callback(callback, i, x_in, sigmas[i], x0)
        return x0

    def first_order(x_t, s, t, model_s):
        h = lam[t] - lam[s]
        return (sigma[t] / sigma[s]).to(x) * x_t - (alpha[t] * torch.expm1(-h)).to(x) * model_s

    def second_order(x_t, prev_1, prev_0, t, model_1, model_0):
        h_0 = lam[prev_0] - lam[prev_1]
        h = lam[t] - lam[prev_0]
        d1 = (1.0 / (h_0 / h)).to(x) * (model_0 - model_1)
        phi = (alpha[t] * torch.expm1(-h)).to(x)
        return (sigma[t] / sigma[prev_0]).to(x) * x_t - phi * model_0 - 0.5 * phi * d1

    try:
        x_t = initial_noise(x, sigmas, model_sampling)
        history = [(0, data_prediction(x_t, 0))]
        x_t = first_order(x_t, 0, 1, history[-1][1])
        if steps > 1:
            history.append((1, data_prediction(x_t, 1)))
        for step in range(2, steps + 1):
            order = DPM_SOLVER_ORDER
            if steps < DPM_SOLVER_LOWER_ORDER_BELOW:
                order = min(order, steps + 1 - step)
            (i1, m1), (i0, m0) = history[-2], history[-1]
            x_t = first_order(x_t, i0, step, m0) if order == 1 else second_order(x_t, i1, i0, step, m1, m0)
            if step < steps:  # the official solver does not evaluate the model at the last time
                history = [history[-1], (step, data_prediction(x_t, step))]
        return x_t
    finally:
        model_sampling.timestep_table = previous


# -- rescaled CFG ---------------------------------------------------------------------------------
def rescaled_cfg_scale(cfg: float, timestep: torch.Tensor) -> torch.Tensor:
    """The official --rescale_cfg scale at model timestep(s) ``timestep`` (float64, as the official
    python float arithmetic); ``cfg`` itself when cfg <= 1, as officially."""
    t = torch.as_tensor(timestep, dtype=torch.float64)
    if cfg <= 1.0:
        return torch.full_like(t, float(cfg))
    return 1.0 + cfg * (1.0 - torch.cos(math.pi * ((1000.0 - t) / 1000.0) ** 5.0)) / 2.0


def rescaled_cfg_function(args: dict) -> torch.Tensor:
    """A ComfyUI ``sampler_cfg_function``: classifier-free guidance with the official rescaled scale
    at the model timestep of this call (ComfyUI's lookup, or the DiffBIR samplers' official one)."""
    cond, uncond = args["cond"], args["uncond"]
    timestep = args["model"].model_sampling.timestep(args["sigma"]).float()
    scale = rescaled_cfg_scale(float(args["cond_scale"]), timestep.cpu()).to(dtype=cond.dtype, device=cond.device)
    scale = scale.reshape(-1, *([1] * (cond.ndim - 1)))
    return uncond + scale * (cond - uncond)


def with_rescaled_cfg(model):
    """A clone of the ModelPatcher ``model`` whose CFG follows the official --rescale_cfg schedule."""
    patched = model.clone()
    patched.set_model_sampler_cfg_function(rescaled_cfg_function)
    return patched
