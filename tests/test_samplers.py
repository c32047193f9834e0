"""The DiffBIR samplers (diffbir_modules/sampling.py) against the official samplers, step for step, on
an analytic stand-in for the network (tests/golden/samplers/analytic.safetensors, made by
tools/goldens/make_samplers.py with the official SpacedSampler / EDMSampler), plus the sampler
contract other areas build on, and the sampling nodes in a real ComfyUI."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from devkit.analytic_sampling import (
    GOLDEN,
    SEED,
    Denoiser,
    official_seed_noise,
    recorded,
    start,
)


@pytest.fixture(scope="module")
def analytic():
    return load_file(str(GOLDEN / "analytic.safetensors"))


@pytest.fixture(scope="module")
def smp(comfy):
    return comfy.pack_module("diffbir_modules.sampling")


VERSIONS = [("v2", "v2"), ("v2.1", "v21")]


@pytest.mark.parametrize("version,key", VERSIONS)
@pytest.mark.parametrize("steps", [4, 10, 50])
def test_spaced_sampler_matches_official_with_recorded_noise(smp, analytic, version, key, steps):
    ms = smp.make_model_sampling(version)
    draws = analytic[f"{key}_spaced_{steps}_draws"]
    sigmas = smp.spaced_sigmas(ms, steps)
    denoiser = Denoiser(ms, analytic["cond"], analytic["uncond"])
    noise = recorded(draws[1:])
    z = smp.sample_spaced(denoiser, start(ms, sigmas, draws[0]), sigmas, {"model_options": {}, "seed": SEED},
                          disable=True, noise_sampler=noise)
    z = ms.inverse_noise_scaling(sigmas[-1], z)
    official = analytic[f"{key}_spaced_{steps}_z"]
    err = (z - official).abs().max().item()
    print(f"spaced {version} {steps} steps: max abs diff {err:.2e} (|z| <= {official.abs().max():.1f})")
    assert err < 1e-4 * max(1.0, official.abs().max().item() / 10)
    assert not noise.queue  # one noise per step, including the last
    assert [t for _, t, _ in denoiser.calls] == smp.schedules.space_timesteps(1000, str(steps))[::-1]


@pytest.mark.parametrize("version,key", VERSIONS)
def test_spaced_sampler_official_noise_stream_is_the_official_generator(smp, analytic, version, key):
    """Same seed, no injection: ComfyUI's initial noise for the seed is the official x_T and the
    'official' stream continues it exactly as the official global generator does."""
    draws = analytic[f"{key}_spaced_10_draws"]
    assert torch.equal(official_seed_noise(), draws[0])
    ms = smp.make_model_sampling(version)
    sigmas = smp.spaced_sigmas(ms, 10)
    z = smp.sample_spaced(Denoiser(ms, analytic["cond"], analytic["uncond"]), start(ms, sigmas, official_seed_noise()),
                          sigmas, {"model_options": {}, "seed": SEED}, disable=True)
    assert (z - analytic[f"{key}_spaced_10_z"]).abs().max() < 1e-4


EDM_SOLVERS = ["euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "lms", "dpm++_2s_a", "dpm++_sde", "dpm++_2m",
               "dpm++_2m_sde", "dpm++_3m_sde"]


@pytest.mark.parametrize("version,key", VERSIONS)
@pytest.mark.parametrize("solver", EDM_SOLVERS)
def test_edm_sampler_matches_official(smp, analytic, version, key, solver):
    """Every official edm_* sampler with the same seed: DiffBIR EDM Sigmas (official first sigma) +
    DiffBIR EDM Sampler (official noise stream and timestep lookup) = the official run."""
    ms = smp.make_model_sampling(version)
    sigmas = smp.edm_sigmas(ms, 10, "official")
    z = smp.sample_edm_official(Denoiser(ms, analytic["cond"], analytic["uncond"]),
                                start(ms, sigmas, official_seed_noise()), sigmas,
                                {"model_options": {}, "seed": SEED}, disable=True, solver=solver,
                                noise_stream="official", timestep_lookup="official_edm")
    official = analytic[f"{key}_edm_{solver.replace('+', 'p')}_10_z"]
    rel = ((z - official).abs().max() / official.abs().max()).item()
    print(f"edm_{solver} {version}: max abs diff {(z - official).abs().max().item():.2e}, relative {rel:.2e}")
    # v1/v2 with the official first sigma 1e4 leave latents of ~1e4 (the official quirk): compare relatively
    assert rel < 2e-6 if version == "v2" else (z - official).abs().max() < 1e-4


@pytest.mark.parametrize("solver", ["dpm_2", "dpm++_2s_a"])
def test_edm_timestep_lookup_matters_only_between_scheduled_sigmas(smp, analytic, solver):
    ms = smp.make_model_sampling("v2.1")
    sigmas = smp.edm_sigmas(ms, 10, "official")
    runs, timesteps = {}, {}
    for lookup in ("official_edm", "nearest_1000"):
        denoiser = Denoiser(ms, analytic["cond"], analytic["uncond"])
        runs[lookup] = smp.sample_edm_official(denoiser, start(ms, sigmas, official_seed_noise()), sigmas,
                                               {"model_options": {}, "seed": SEED}, disable=True, solver=solver,
                                               timestep_lookup=lookup)
        timesteps[lookup] = [t for _, t, _ in denoiser.calls]
    official = analytic[f"v21_edm_{solver.replace('+', 'p')}_10_z"]
    assert (runs["official_edm"] - official).abs().max() < 1e-4
    scheduled = set(smp.schedules.edm_timesteps(10).tolist())
    assert set(timesteps["official_edm"]) <= scheduled  # mid-step evaluations snap to the schedule
    assert not set(timesteps["nearest_1000"]) <= scheduled
    print(solver, "official:", timesteps["official_edm"], "comfyui:", timesteps["nearest_1000"],
          f"output diff {(runs['nearest_1000'] - official).abs().max().item():.2e}")
    assert ms.timestep_table is None  # restored after the run


def test_step_info_contract_and_posterior_mean_shift(smp, analytic):
    """The restoration-guidance contract: diffbir_step in transformer_options at every model call, and
    adding delta / posterior_mean_coef1 to the denoised x0 in a post-CFG patch shifts the posterior
    mean by exactly delta (official v2.0: pred_x0 += delta * (1 / coef1))."""
    ms = smp.make_model_sampling("v2")
    sched = smp.schedules.official_spaced_schedule("v2", 4)
    sigmas = smp.spaced_sigmas(ms, 4)
    draws = analytic["v2_spaced_4_draws"]
    delta = torch.full((1, 4, 8, 8), 0.01)
    seen = []

    def guidance(args):
        info = args["model_options"]["transformer_options"]["diffbir_step"]
        seen.append(info)
        return args["denoised"] + delta / info["posterior_mean_coef1"]

    options = {"sampler_post_cfg_function": [guidance], "transformer_options": {"keep": 1}}
    outputs = {}
    for name, model_options in (("plain", {}), ("guided", options)):
        denoiser = Denoiser(ms, analytic["cond"], analytic["uncond"])
        x = smp.sample_spaced(denoiser, start(ms, sigmas[:2], draws[0]), sigmas[:2],
                              {"model_options": model_options, "seed": SEED}, disable=True,
                              noise_sampler=recorded(draws[1:]))
        outputs[name] = ms.calculate_input(sigmas[1], x)  # x_t of the next step
    assert torch.allclose(outputs["guided"] - outputs["plain"], delta, atol=1e-6)
    assert options["transformer_options"] == {"keep": 1}  # the caller's dict is not modified
    info = seen[0]
    assert info["t"] == 999 and info["step"] == 0 and info["total_steps"] == 1  # a one-step (split) run
    assert info["posterior_mean_coef1"] == pytest.approx(float(sched.posterior_mean_coef1[3]), rel=1e-7)
    assert info["posterior_mean_coef2"] == pytest.approx(float(sched.posterior_mean_coef2[3]), rel=1e-7)
    assert info["posterior_variance"] == pytest.approx(float(sched.posterior_variance[3]), rel=1e-7)
    assert info["sqrt_alphas_cumprod"] == pytest.approx(float(sched.sqrt_alphas_cumprod[3]), rel=1e-7)
    assert info["prediction"] == "eps"
    # the full run gives the official index/t pairs
    denoiser = Denoiser(ms, analytic["cond"], analytic["uncond"])
    smp.sample_spaced(denoiser, start(ms, sigmas, draws[0]), sigmas, {"model_options": {}, "seed": SEED},
                      disable=True, noise_sampler=recorded(draws[1:]))
    assert [(c[2]["t"], c[2]["index"], c[2]["total_steps"]) for c in denoiser.calls] == [
        (999, 3, 4), (666, 2, 4), (333, 1, 4), (0, 0, 4)]


def test_spaced_sampler_with_the_stock_scheduler_and_stock_model_sampling(smp, analytic):
    """The 'normal' scheduler of ComfyUI selects the official timesteps for 4 and 10 steps, and the stock
    ModelSamplingDiscrete(v_prediction, zsnr) gives the official v2.1 run too."""
    import comfy.model_sampling
    import comfy.samplers
    import comfy.supported_models

    cls = type("Stock", (comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION), {})
    stock = cls(comfy.supported_models.SD20({}), zsnr=True)
    sigmas = comfy.samplers.calculate_sigmas(stock, "normal", 10)
    draws = analytic["v21_spaced_10_draws"]
    z = smp.sample_spaced(Denoiser(stock, analytic["cond"], analytic["uncond"]), start(stock, sigmas, draws[0]),
                          sigmas, {"model_options": {}, "seed": SEED}, disable=True, noise_sampler=recorded(draws[1:]))
    assert (z - analytic["v21_spaced_10_z"]).abs().max() < 1e-4


def test_spaced_sampler_partial_schedules_chain(smp, analytic):
    """Splitting the sigmas (SplitSigmas) and running the halves one after the other gives the same
    result as one run: a non-zero last sigma stops at that noise level in ComfyUI's convention."""
    ms = smp.make_model_sampling("v2.1")
    sigmas = smp.spaced_sigmas(ms, 10)
    draws = analytic["v21_spaced_10_draws"]
    noise = recorded(draws[1:])
    denoiser = Denoiser(ms, analytic["cond"], analytic["uncond"])
    x = smp.sample_spaced(denoiser, start(ms, sigmas, draws[0]), sigmas[:5], {"model_options": {}}, disable=True,
                          noise_sampler=noise)
    x = smp.sample_spaced(denoiser, x, sigmas[4:], {"model_options": {}}, disable=True, noise_sampler=noise)
    assert (x - analytic["v21_spaced_10_z"]).abs().max() < 1e-4


def test_spaced_sampler_rejects_sigmas_it_cannot_follow(smp, analytic):
    ms = smp.make_model_sampling("v2")
    denoiser = Denoiser(ms, analytic["cond"], analytic["uncond"])
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="not strictly decreasing"):
        smp.sample_spaced(denoiser, x, torch.tensor([14.6, 14.6, 0.0]), {"model_options": {}}, disable=True)


@pytest.mark.parametrize("sigmas", [[14.6, 14.6, 0.0], [14.6, -1.0, 0.0], [14.6, 1.0, 1.0]])
def test_official_table_samplers_check_sigmas_alike(comfy, smp, analytic, sigmas):
    """The spaced and the DDIM sampler check their sigmas with one rule (positive, only the last 0,
    timesteps strictly decreasing, the end's included), each naming itself and the node to use."""
    solvers = comfy.pack_module("diffbir_modules.official_solvers")
    ms = smp.make_model_sampling("v2")
    denoiser = Denoiser(ms, analytic["cond"], analytic["uncond"])
    x, sigmas = torch.zeros(1, 4, 8, 8), torch.tensor(sigmas)
    with pytest.raises(ValueError, match="DiffBIR spaced sampler.*DiffBIR Spaced Sigmas"):
        smp.sample_spaced(denoiser, x, sigmas, {"model_options": {}}, disable=True)
    with pytest.raises(solvers.OfficialSamplerError, match="DiffBIR DDIM Sampler.*DiffBIR DDIM Sigmas"):
        solvers.sample_ddim(denoiser, x, sigmas, {"model_options": {}}, disable=True)


def test_noise_streams(smp):
    x = torch.zeros(1, 4, 8, 8)
    g = torch.Generator().manual_seed(SEED)
    stream = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(4)]
    official = smp.make_noise_sampler(x, SEED, "official")
    assert torch.equal(official(None, None), stream[1]) and torch.equal(official(None, None), stream[2])
    after_aug = smp.make_noise_sampler(x, SEED, "official_after_noise_aug")
    assert torch.equal(after_aug(None, None), stream[2])


def test_comfyui_stream_is_the_stock_samplers_noise(smp):
    """The "comfyui" stream draws what the running ComfyUI's own ancestral samplers draw for the seed
    (0.3.75: the initial noise's stream again; 0.33 seeds it with seed + 1 on the CPU). Recovered from
    one stock euler_ancestral step on zeros with a denoiser that returns 0: x_next = noise * sigma_up."""
    import comfy.k_diffusion.sampling as kds

    ms = smp.make_model_sampling("v2")

    def denoise_to_zero(x, sigma, **extra):
        return torch.zeros_like(x)

    denoise_to_zero.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=ms))
    x = torch.zeros(1, 4, 8, 8)
    sigmas = torch.tensor([1.0, 0.5])
    stepped = kds.sample_euler_ancestral(denoise_to_zero, x, sigmas, extra_args={"seed": SEED}, disable=True)
    _, sigma_up = kds.get_ancestral_step(sigmas[0], sigmas[1], eta=1.0)
    stock_noise = stepped / sigma_up
    ours = smp.make_noise_sampler(x, SEED, "comfyui")(None, None)
    # one multiply and one divide by sigma_up (float32): a few ulps
    assert torch.allclose(ours, stock_noise, rtol=1e-6, atol=1e-6)
