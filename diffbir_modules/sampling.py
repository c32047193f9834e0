"""DiffBIR's official schedules and samplers inside ComfyUI's sampling machinery.

- ``make_model_sampling(version)``: a ComfyUI ``model_sampling`` object with exactly the official
  training schedule (v1/v2: eps, linear betas; v2.1: v-prediction, zero terminal SNR).
- ``sample_spaced``: the official respaced DDPM ("spaced") sampler as a k-diffusion style sampler
  function for ``comfy.samplers.KSAMPLER`` (SamplerCustom / SamplerCustomAdvanced).
- ``spaced_sigmas`` / ``edm_sigmas``: SIGMAS for the official spaced and ``edm_*`` schedules.
- ``sample_edm_official``: ComfyUI's k-diffusion solvers driven the way the official ``edm_*``
  samplers drive their vendored copies (noise stream, Brownian-tree seed, timestep lookup).
- ``augment_condition``: the official ``--noise_aug`` on the IRControlNet condition latent.

How ComfyUI represents a DDPM state: k-diffusion samplers carry ``x = x_t * sqrt(1 + sigma^2)``
with ``sigma = sqrt((1 - acp) / acp)``; the model wrapper divides by ``sqrt(1 + sigma^2)`` before
the UNet (``calculate_input``), maps sigma to the nearest of the 1000 training timesteps in
log-sigma (``ModelSamplingDiscrete.timestep``; no interpolation) and returns the denoised x0
(``calculate_denoised``: eps ``x - sigma*eps``; v ``x/(sigma^2+1) - v*sigma/sqrt(sigma^2+1)``),
which for every finite sigma is exactly DiffBIR's ``_predict_xstart_from_eps/_v``.
"""

from __future__ import annotations

import logging
import math

import comfy.k_diffusion.sampling as kds
import comfy.model_management
import comfy.model_sampling
import numpy as np
import torch

from . import ircontrolnet, schedules, sd_model

log = logging.getLogger(__name__)

# ComfyUI's stand-in for the zero alphas_cumprod of a zero-terminal-SNR schedule (its
# rescale_zero_terminal_snr_sigmas): sigma(999) = 4518.9 instead of infinity. Kept identical so that
# DiffBIR's v2.1 table equals the stock ModelSamplingDiscrete(v_prediction, zsnr=True).
COMFY_ZSNR_TERMINAL_ALPHA_CUMPROD = 4.8973451890853435e-08

TIMESTEP_LOOKUPS = ("nearest_1000", "official_edm")


# -- model sampling -------------------------------------------------------------------------------
class DiffBIRDiscreteSchedule(comfy.model_sampling.ModelSamplingDiscrete):
    """ComfyUI's discrete schedule with DiffBIR's own training table.

    ``sigmas`` = sqrt((1 - acp) / acp) of the official float64 alphas_cumprod, stored as float32 as
    ComfyUI stores its own; for v2.1 the infinite sigma(999) is ComfyUI's finite stand-in (see
    COMFY_ZSNR_TERMINAL_ALPHA_CUMPROD). The exact table (with its 0) stays available as
    ``diffbir_alphas_cumprod`` (float64 numpy) for the DiffBIR samplers.

    ``timestep(sigma)``: ComfyUI's nearest training timestep in log-sigma unless
    ``timestep_table = (sigmas, timesteps)`` is set (``sample_edm_official`` sets it for the length
    of one run): then, as the official EDM denoiser does, the timestep of the nearest entry (in
    sigma) of that short table.
    """

    diffbir_version = None

    def __init__(self, version: str, model_config=None):
        prediction, zsnr = schedules.VERSIONS[schedules.check_version(version)]
        super().__init__(model_config, zsnr=False)
        self.zsnr = zsnr
        self.diffbir_version = version
        self.diffbir_prediction = prediction
        self.diffbir_alphas_cumprod = schedules.official_alphas_cumprod(version)
        acp = self.diffbir_alphas_cumprod.copy()
        if zsnr:
            acp[-1] = COMFY_ZSNR_TERMINAL_ALPHA_CUMPROD
        self.set_sigmas(torch.from_numpy(schedules.sigmas_from_alphas_cumprod(acp)))
        self.timestep_table = None

    def timestep(self, sigma):
        if self.timestep_table is None:
            return super().timestep(sigma)
        table_sigmas, table_timesteps = self.timestep_table
        flat = sigma.reshape(-1).to(table_sigmas)
        index = (flat[None, :] - table_sigmas[:, None]).abs().argmin(dim=0)
        return table_timesteps.to(index.device)[index].view(sigma.shape).to(sigma.device)


class DiffBIRModelSamplingEPS(DiffBIRDiscreteSchedule, comfy.model_sampling.EPS):
    pass


class DiffBIRModelSamplingV(DiffBIRDiscreteSchedule, comfy.model_sampling.V_PREDICTION):
    pass


def make_model_sampling(version: str, model_config=None) -> DiffBIRDiscreteSchedule:
    prediction, _ = schedules.VERSIONS[schedules.check_version(version)]
    cls = DiffBIRModelSamplingV if prediction == "v" else DiffBIRModelSamplingEPS
    return cls(version, model_config)


def with_model_sampling(model, version: str):
    """A clone of the ModelPatcher ``model`` sampled with the schedule ``version`` was trained with."""
    patched = model.clone()
    patched.add_object_patch("model_sampling", make_model_sampling(version, model.model.model_config))
    return patched


def training_alphas_cumprod(model_sampling) -> np.ndarray:
    """The 1000 training alphas_cumprod (float64) of a discrete ComfyUI schedule: DiffBIR's exact
    table when it is ours, otherwise 1 / (1 + sigma^2) of ComfyUI's float32 sigmas, with the terminal
    value set to 0 when the schedule is zero-terminal-SNR (ComfyUI's stand-in for 0)."""
    exact = getattr(model_sampling, "diffbir_alphas_cumprod", None)
    if exact is not None:
        return exact
    sigmas = getattr(model_sampling, "sigmas", None)
    if sigmas is None or not isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscrete):
        raise ValueError(f"the DiffBIR samplers need a discrete DDPM schedule (SD 1.x/2.x style); this model "
                         f"samples with {type(model_sampling).__name__}")
    acp = schedules.alphas_cumprod_from_sigmas(sigmas.detach().double().cpu().numpy())
    if getattr(model_sampling, "zsnr", False):
        acp[-1] = 0.0
    return acp


def nearest_timesteps(model_sampling, sigmas: torch.Tensor) -> list[int]:
    """ComfyUI's own sigma -> training timestep mapping for every sigma (nearest in log-sigma)."""
    table = model_sampling.log_sigmas.detach().float().cpu()
    flat = sigmas.detach().float().cpu().reshape(-1)
    with torch.no_grad():
        index = (flat.log()[None, :] - table[:, None]).abs().argmin(dim=0)
    return [int(i) for i in index]


def checked_timesteps(model_sampling, sigmas: torch.Tensor, sampler: str, fix: str,
                      error: type[ValueError] = ValueError) -> tuple[list[int], int | None]:
    """The training timesteps ``sigmas`` select for a sampler that runs the official table: one per
    step (the non-zero sigmas before the last), and the end's (None when the last sigma is 0, a run to
    x0). Raises ``error`` naming ``sampler`` and the node that makes valid sigmas (``fix``) unless the
    sigmas are positive (only the last may be 0) and their timesteps strictly decreasing."""
    sig = sigmas.detach().float().cpu()
    if (sig[:-1] <= 0).any() or float(sig[-1]) < 0:
        raise error(f"{sampler} needs decreasing positive sigmas (only the last may be 0), got "
                    f"{[round(float(s), 4) for s in sig]}: use {fix}")
    step_t = nearest_timesteps(model_sampling, sig[:-1])
    end_t = nearest_timesteps(model_sampling, sig[-1:])[0] if float(sig[-1]) > 0 else None
    chain = step_t + ([end_t] if end_t is not None else [])
    if any(a <= b for a, b in zip(chain, chain[1:])):
        raise error(f"{sampler}: the sigmas select the timesteps {chain}, which are not strictly decreasing: "
                    f"use {fix} (or fewer steps)")
    return step_t, end_t


def _table_sigma(model_sampling, t: int) -> float:
    return float(model_sampling.sigmas[int(t)])


def spaced_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """SIGMAS selecting the official respaced timesteps (``space_timesteps(1000, str(steps))``), from
    the largest down, then 0. Each value is the model table's sigma at that timestep, so ComfyUI maps
    it back to exactly that timestep (for v2.1's t=999 the table's finite stand-in)."""
    used = schedules.space_timesteps(len(model_sampling.sigmas), str(int(steps)))
    return torch.tensor([_table_sigma(model_sampling, t) for t in reversed(used)] + [0.0], dtype=torch.float32)


EDM_FIRST_SIGMAS = ("auto", "official", "schedule")


def edm_sigmas(model_sampling, steps: int, first_sigma: str = "official") -> torch.Tensor:
    """The official EDM sampler's SIGMAS: timesteps ``linspace(999, 0, steps, endpoint=False)``,
    sigma = sqrt((1 - acp) / acp), then 0; float32 like the official buffers.

    ``first_sigma``: official: acp of the first timestep forced to 1e-8 (sigma 1e4) as the official
    code does for every version; schedule: the model's own sigma at that timestep (for v1/v2 eps models
    14.6: the official 1e4 is far above what an eps model at t=999 assumes, so the first official step
    over-scales its x0 estimate by ~1e4/14.6); auto: official for v-prediction (where 1e4 stands for the
    infinite sigma of zero terminal SNR), schedule for eps.
    """
    if first_sigma not in EDM_FIRST_SIGMAS:
        raise ValueError(f"unknown first_sigma {first_sigma!r}; expected one of {', '.join(EDM_FIRST_SIGMAS)}")
    if first_sigma == "auto":
        first_sigma = "official" if sd_model.prediction_of(model_sampling) == "v" else "schedule"
    acp = training_alphas_cumprod(model_sampling)
    first = schedules.EDM_FIRST_ALPHA_CUMPROD if first_sigma == "official" else None
    sigmas, timesteps = schedules.edm_schedule(acp, int(steps), first)
    if first is None:
        sigmas[0] = _table_sigma(model_sampling, timesteps[0])  # finite stand-in if acp is 0
    return torch.tensor(sigmas, dtype=torch.float32)


# -- noise ----------------------------------------------------------------------------------------
NOISE_STREAMS = ("official", "official_after_noise_aug", "comfyui")


def make_noise_sampler(x: torch.Tensor, seed, stream: str = "official"):
    """A ``noise_sampler(sigma, sigma_next) -> tensor like x`` for the per-step noise.

    official: one CPU generator seeded with ``seed`` that has already produced the initial noise
      (ComfyUI's initial noise for that seed is the same draw), so the step noises continue that
      stream exactly as the official code's single global generator does after ``x_T``;
    official_after_noise_aug: the same after one more latent-sized draw (official ``--noise_aug`` > 0
      draws the condition noise right after ``x_T``);
    comfyui: whatever the running ComfyUI's stock samplers draw (``default_noise_sampler``): a fresh
      generator seeded with ``seed`` up to ComfyUI 0.3.x of 2025 (the first step noise repeats the
      initial noise), seeded with ``seed + 1`` on the CPU in newer releases.

    The two official streams do not depend on the ComfyUI release: the official-parity figures use
    them (the DiffBIR sampler nodes' default). Stock KSampler ancestral/SDE samplers use ComfyUI's own
    stream, which differs from the official one on every release.
    """
    if stream == "comfyui":
        return kds.default_noise_sampler(x, seed=seed)
    if stream not in NOISE_STREAMS:
        raise ValueError(f"unknown noise stream {stream!r}; expected one of {', '.join(NOISE_STREAMS)}")
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    shape = tuple(x.shape)
    for _ in range(2 if stream == "official_after_noise_aug" else 1):
        torch.randn(shape, dtype=torch.float32, generator=generator)

    def noise_sampler(sigma=None, sigma_next=None):
        return torch.randn(shape, dtype=torch.float32, generator=generator).to(device=x.device, dtype=x.dtype)

    noise_sampler.generator = generator
    return noise_sampler


# -- the official spaced sampler ------------------------------------------------------------------
def _float32(value) -> float:
    """The float32 rounding of ``value`` (the official code keeps its tables as float32 buffers)."""
    return float(np.float32(value))


def _with_step_info(extra_args: dict, info: dict) -> dict:
    model_options = dict(extra_args.get("model_options") or {})
    transformer_options = dict(model_options.get("transformer_options") or {})
    transformer_options["diffbir_step"] = info
    model_options["transformer_options"] = transformer_options
    return {**extra_args, "model_options": model_options}


@torch.no_grad()
def sample_spaced(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
                  noise_stream: str = "official"):
    """DiffBIR's official respaced DDPM sampler (``spaced``; IDDPM respacing, "fixed_small" variance).

    ``sigmas`` only select the timesteps: each non-zero sigma is mapped to its training timestep the
    way ComfyUI maps it (nearest in log-sigma), and the chain runs on the exact official table of
    those timesteps (respaced betas, posterior coefficients, rounded to float32 as the official
    buffers). A final sigma 0 ends on x0; a final non-zero sigma stops at that noise level. With
    ``DiffBIR Spaced Sigmas`` (or the "normal" scheduler for 4 or 10 steps) these are the official
    timesteps, and the run matches the official sampler step for step given the same noise.

    Per step: the model (with CFG and every patch) returns the denoised x0 at
    ``x_t * sqrt(1 + sigma^2)``; ``mean = coef1 * x0 + coef2 * x_t``; ``x_{t-1} = mean + sqrt(var) *
    noise``. A noise is drawn at every step, including the last where it is multiplied by 0, as the
    official sampler does (``noise_sampler`` can inject recorded noise). For a zero-terminal-SNR
    v-prediction schedule at t=999 (acp = 0, sigma infinite) ComfyUI evaluates at its finite stand-in
    sigma; x0 is then recovered exactly as the official ``-v`` from the denoised output.

    Contract for model patches (restoration guidance): during each model call
    ``model_options["transformer_options"]["diffbir_step"]`` (a per-call copy; the caller's dict is
    not modified) holds the current step as python numbers:
      ``t`` (model timestep), ``index`` (respaced index, official ``t`` of ``p_sample``: n-1 .. 0),
      ``step`` (0-based sampling step), ``total_steps``, ``sigma`` (the sigma the model was called
      with), ``alphas_cumprod``, ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
      ``posterior_mean_coef1``, ``posterior_mean_coef2``, ``posterior_variance`` (all float32-rounded
      official values), ``prediction`` ("eps" or "v"), and ``noise_sampler`` (the callable this run
      draws its step noise from; a patch that draws from it during the model call lands between the
      official draws exactly where v2.0's latent-space guidance draws its posterior samples).
    The posterior mean is computed from the model's final denoised output (after CFG and every
    ``sampler_post_cfg_function``), so a patch that adds ``delta / posterior_mean_coef1`` to the
    denoised x0 shifts the mean by exactly ``delta``, as official v2.0 guidance does.
    """
    extra_args = {} if extra_args is None else extra_args
    model_sampling = model.inner_model.inner_model.model_sampling
    prediction = sd_model.prediction_of(model_sampling)
    acp_train = training_alphas_cumprod(model_sampling)

    n = len(sigmas) - 1
    if n < 1:
        return x
    step_t, end_t = checked_timesteps(model_sampling, sigmas, "the DiffBIR spaced sampler", "DiffBIR Spaced Sigmas")
    kept = sorted(set(step_t) | ({end_t} if end_t is not None else set()))
    table = schedules.respaced_schedule(acp_train, kept)
    position = {t: i for i, t in enumerate(table.timesteps.tolist())}

    if noise_sampler is None:
        noise_sampler = make_noise_sampler(x, extra_args.get("seed"), noise_stream)

    s_in = x.new_ones([x.shape[0]])
    x_t = x / torch.sqrt(1.0 + sigmas[0].to(x) ** 2.0)
    for i in range(n):
        comfy.model_management.throw_exception_if_processing_interrupted()
        t = step_t[i]
        index = position[t]
        acp = float(table.alphas_cumprod[index])
        terminal = acp == 0.0
        sigma = float(model_sampling.sigmas[t]) if terminal else _float32(math.sqrt((1.0 - acp) / acp))
        sigma_t = torch.tensor(sigma, dtype=torch.float32, device=x.device)
        scale = torch.sqrt(1.0 + sigma_t**2.0)
        coef1 = _float32(table.posterior_mean_coef1[index])
        coef2 = _float32(table.posterior_mean_coef2[index])
        variance = _float32(table.posterior_variance[index])
        info = {
            "t": t, "index": index, "step": i, "total_steps": n, "sigma": sigma, "prediction": prediction,
            "alphas_cumprod": _float32(acp), "sqrt_alphas_cumprod": _float32(math.sqrt(acp)),
            "sqrt_one_minus_alphas_cumprod": _float32(math.sqrt(1.0 - acp)),
            "posterior_mean_coef1": coef1, "posterior_mean_coef2": coef2, "posterior_variance": variance,
            # the sampler's noise stream: restoration guidance draws its latent-target posterior samples
            # from it, between this step's model call and its noise, as the official v2.0 sampler does
            "noise_sampler": noise_sampler,
        }
        x_in = x_t * scale
        denoised = model(x_in, sigma_t * s_in, **_with_step_info(extra_args, info))
        if terminal:
            if prediction != "v":
                raise ValueError("alphas_cumprod is 0 at this timestep (zero terminal SNR) but the model is not "
                                 "v-prediction: x0 is undefined. Use DiffBIR Model Sampling (v2.1).")
            # ComfyUI: denoised = x_in / (s^2+1) - v * s / sqrt(s^2+1); official x0 at acp = 0 is -v.
            x0 = (denoised - x_in / (1.0 + sigma_t**2.0)) * (scale / sigma_t)
        else:
            x0 = denoised
        if callback is not None:
            callback({"x": x_in, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x0})
        mean = coef1 * x0 + coef2 * x_t
        noise = noise_sampler(sigmas[i], sigmas[i + 1])
        last = i == n - 1 and end_t is None
        nonzero = 0.0 if last else 1.0
        x_t = mean + nonzero * torch.sqrt(torch.tensor(variance, dtype=x.dtype, device=x.device)) * noise
    if end_t is None:
        return x_t
    return x_t * torch.sqrt(1.0 + sigmas[-1].to(x) ** 2.0)


# -- the official EDM samplers --------------------------------------------------------------------
# official name -> (ComfyUI k-diffusion function, the options the official EDMSampler passes, noise)
EDM_SOLVERS = {
    "euler": (kds.sample_euler, ("s_churn", "s_tmin", "s_tmax", "s_noise"), "churn"),
    "euler_a": (kds.sample_euler_ancestral, ("eta", "s_noise"), "ancestral"),
    "heun": (kds.sample_heun, ("s_churn", "s_tmin", "s_tmax", "s_noise"), "churn"),
    "dpm_2": (kds.sample_dpm_2, ("s_churn", "s_tmin", "s_tmax", "s_noise"), "churn"),
    "dpm_2_a": (kds.sample_dpm_2_ancestral, ("eta", "s_noise"), "ancestral"),
    "lms": (kds.sample_lms, ("order",), None),
    "dpm++_2s_a": (kds.sample_dpmpp_2s_ancestral, ("eta", "s_noise"), "ancestral"),
    "dpm++_sde": (kds.sample_dpmpp_sde, ("eta", "s_noise"), "brownian"),
    "dpm++_2m": (kds.sample_dpmpp_2m, (), None),
    "dpm++_2m_sde": (kds.sample_dpmpp_2m_sde, ("eta", "s_noise"), "brownian"),
    "dpm++_3m_sde": (kds.sample_dpmpp_3m_sde, ("eta", "s_noise"), "brownian"),
}
# the official CLI defaults (--s_churn 0 --s_tmin 0 --s_tmax 300 --s_noise 1 --eta 1 --order 1)
EDM_DEFAULTS = dict(s_churn=0.0, s_tmin=0.0, s_tmax=300.0, s_noise=1.0, eta=1.0, order=1)


def _official_dpmpp_sde_times(noise_sampler, sigmas):
    """The official dpm++_sde queries its Brownian tree at exp(-(-log sigma)) for the scheduled sigmas
    (ComfyUI's rewrite passes them as they are); a Brownian tree is sensitive to that last bit."""
    scheduled = {float(s) for s in sigmas.detach().float().cpu()}

    def official_time(sigma):
        sigma = torch.as_tensor(sigma)
        return sigma.log().neg().neg().exp() if float(sigma) in scheduled else sigma

    return lambda sigma, sigma_next: noise_sampler(official_time(sigma), official_time(sigma_next))


@torch.no_grad()
def sample_edm_official(model, x, sigmas, extra_args=None, callback=None, disable=None, solver="dpm++_3m_sde",
                        noise_stream="official", timestep_lookup="official_edm", noise_sampler=None,
                        **options):
    """One of the official ``edm_*`` samplers: ComfyUI's k-diffusion solver of the same name (the
    official code vendors the same k-diffusion functions), given the official options and noise:
    ancestral solvers draw their noise from ``noise_stream`` (see make_noise_sampler), SDE solvers use
    a Brownian tree seeded, as officially, with one ``randint(0, 2**63 - 1)`` drawn from that stream.
    With ``timestep_lookup="official_edm"`` and a DiffBIR model sampling, the model timestep of every
    evaluation is that of the nearest entry of this run's sigma table (matters only for solvers that
    evaluate between the scheduled sigmas: dpm_2, dpm_2_a, dpm++_2s_a, dpm++_sde)."""
    extra_args = {} if extra_args is None else extra_args
    if solver not in EDM_SOLVERS:
        raise ValueError(f"unknown official EDM solver {solver!r}; expected one of {', '.join(EDM_SOLVERS)}")
    function, names, noise_kind = EDM_SOLVERS[solver]
    params = {**EDM_DEFAULTS, **options}
    kwargs = {k: params[k] for k in names}
    if noise_kind in ("ancestral", "brownian") and noise_sampler is None and noise_stream != "comfyui":
        stream = make_noise_sampler(x, extra_args.get("seed"), noise_stream)
        if noise_kind == "ancestral":
            noise_sampler = stream
        else:
            positive = sigmas[sigmas > 0]
            tree_seed = int(torch.randint(0, 2**63 - 1, (), generator=stream.generator).item())
            noise_sampler = kds.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=tree_seed, cpu=True)
            if solver == "dpm++_sde":
                noise_sampler = _official_dpmpp_sde_times(noise_sampler, sigmas)
    if noise_sampler is not None and noise_kind in ("ancestral", "brownian"):
        kwargs["noise_sampler"] = noise_sampler

    model_sampling = model.inner_model.inner_model.model_sampling
    use_table = timestep_lookup == "official_edm" and isinstance(model_sampling, DiffBIRDiscreteSchedule)
    if timestep_lookup == "official_edm" and not use_table:
        log.warning("DiffBIR EDM sampler: the official timestep lookup needs DiffBIR Model Sampling; using ComfyUI's")
    previous = getattr(model_sampling, "timestep_table", None)
    if use_table:
        table_sigmas = sigmas.detach().float()
        positive = table_sigmas > 0
        timesteps = torch.zeros(len(table_sigmas), dtype=torch.long)
        timesteps[positive.cpu()] = torch.tensor(nearest_timesteps(model_sampling, table_sigmas[positive]),
                                                 dtype=torch.long)
        model_sampling.timestep_table = (table_sigmas, timesteps.to(table_sigmas.device))
    try:
        return function(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **kwargs)
    finally:
        if use_table:
            model_sampling.timestep_table = previous


# -- condition noise augmentation -----------------------------------------------------------------
def augment_condition(conditionings, timestep: int, training_acp, noise_for):
    """Copies of the CONDITIONING lists in ``conditionings`` in which every IRControlNet control
    carries the condition ``q_sample(condition, timestep, noise)`` instead. ``noise_for(condition) ->
    tensor`` gives the noise; a condition shared by positive and negative is augmented once, so cond
    and uncond see the same tensor (as officially: ``uncond.c_img = cond.c_img``). Returns (new
    lists, number of conditions replaced)."""
    memo_latents = {}

    def augmented(latent):
        key = id(latent)
        if key not in memo_latents:
            memo_latents[key] = schedules.q_sample(latent, timestep, noise_for(latent), training_acp)
        return memo_latents[key]

    out = ircontrolnet.replace_ircontrolnets(conditionings, lambda c: c.with_condition(augmented(c.condition)))
    return out, len(memo_latents)
