"""DiffBIR's schedules (diffbir_modules/schedules.py and the model sampling of sampling.py) against the
official code's tables (tests/golden/samplers/schedules.npz, tools/goldens/make_samplers.py) and the
values in the reference notes, and how they sit in ComfyUI's ModelSamplingDiscrete."""

from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "samplers"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "schedules.npz"))


@pytest.fixture(scope="module")
def sch(comfy):
    return comfy.pack_module("diffbir_modules.schedules")


@pytest.fixture(scope="module")
def smp(comfy):
    return comfy.pack_module("diffbir_modules.sampling")


@pytest.fixture(scope="module")
def sd_model(comfy):
    return comfy.pack_module("diffbir_modules.sd_model")


def f32(x):
    return torch.tensor(np.asarray(x), dtype=torch.float32)


@pytest.mark.parametrize("version,key", [("v2", "v2"), ("v1", "v2"), ("v2.1", "v21")])
def test_training_betas_equal_official(sch, golden, version, key):
    betas = sch.official_betas(version)
    assert betas.dtype == np.float64
    if version != "v2.1":
        assert np.array_equal(betas, golden[f"{key}_betas"])  # numpy's linspace and square: bit for bit
        return
    # v2.1's zero-terminal-SNR rescale runs torch float64 cumprod / sqrt / division, whose vectorised
    # kernels round differently per CPU instruction set. A beta is 1 - alpha with alpha near 1, so the
    # difference is a few ulps of 1.0 (2.2e-16), not of beta: against the golden (made on another CPU)
    # an AVX-512 machine measured max 7.8e-16 absolute (24 of 1000 betas). Bound: 20 ulps of 1.0,
    # far below any real change of the schedule (> 1e-8).
    np.testing.assert_allclose(betas, golden[f"{key}_betas"], rtol=0, atol=20 * np.finfo(np.float64).eps)


def test_reference_values(sch):
    acp = sch.official_alphas_cumprod("v2")
    assert acp[999] == pytest.approx(0.0046601, abs=1e-7)
    assert np.sqrt(acp[999]) == pytest.approx(0.068265, abs=1e-6)
    acp21 = sch.official_alphas_cumprod("v2.1")
    assert acp21[999] == 0.0 and sch.official_betas("v2.1")[999] == 1.0
    assert acp21[0] == pytest.approx(acp[0], abs=1e-15)  # the rescale keeps the first one


def test_space_timesteps_equal_official(sch, golden):
    for key, value in golden.items():
        if key.startswith("space_timesteps_"):
            arg = key[len("space_timesteps_"):].replace("_", ",")
            assert sch.space_timesteps(1000, arg) == value.tolist(), key
    assert sch.space_timesteps(1000, "50")[:6] == [0, 20, 41, 61, 82, 102]
    assert sch.space_timesteps(1000, "50")[-2:] == [979, 999]
    assert sch.space_timesteps(1000, "10") == list(range(0, 1000, 111))
    assert sch.space_timesteps(1000, "4") == [0, 333, 666, 999]


@pytest.mark.parametrize("version,key", [("v2", "v2"), ("v2.1", "v21")])
@pytest.mark.parametrize("steps", [2, 4, 10, 50])
def test_spaced_tables_equal_official_float32(sch, golden, version, key, steps):
    ours = sch.official_spaced_schedule(version, steps)
    assert ours.timesteps.tolist() == golden[f"{key}_spaced{steps}_timesteps"].tolist()
    for name in ("posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod"):
        assert torch.equal(f32(getattr(ours, name)), f32(golden[f"{key}_spaced{steps}_{name}"])), name


@pytest.mark.parametrize("version,key", [("v2", "v2"), ("v2.1", "v21")])
@pytest.mark.parametrize("steps", [2, 4, 10, 50])
def test_edm_tables_equal_official_float32(sch, golden, version, key, steps):
    sigmas, timesteps = sch.official_edm_schedule(version, steps)
    assert torch.equal(f32(sigmas), f32(golden[f"{key}_edm{steps}_sigmas"]))
    assert timesteps.tolist() == golden[f"{key}_edm{steps}_timesteps"].tolist()


def test_edm_sigmas_of_the_reference_notes(sch):
    v2, t = sch.official_edm_schedule("v2", 10)
    assert t.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]
    np.testing.assert_allclose(v2, [1e4, 8.303, 5.088, 3.321, 2.276, 1.613, 1.161, 0.8299, 0.5693, 0.3417, 0],
                               rtol=6e-4)
    v21, _ = sch.official_edm_schedule("v2.1", 10)
    np.testing.assert_allclose(v21, [1e4, 18.13, 7.411, 4.114, 2.605, 1.768, 1.241, 0.8747, 0.5948, 0.355, 0],
                               rtol=6e-4)


@pytest.mark.parametrize("version,key", [("v2", "v2"), ("v2.1", "v21")])
def test_noise_augmentation_q_sample_equals_official(sch, golden, version, key):
    x0, noise = torch.from_numpy(golden[f"{key}_qsample_x0"]), torch.from_numpy(golden[f"{key}_qsample_noise"])
    ours = sch.q_sample(x0, 200, noise, sch.official_alphas_cumprod(version))
    assert torch.equal(ours, torch.from_numpy(golden[f"{key}_qsample200"]))


# -- in ComfyUI ---------------------------------------------------------------------------------------
def stock_model_sampling(sampling: str, zsnr: bool):
    import comfy.model_sampling
    import comfy.supported_models

    base = comfy.model_sampling.ModelSamplingDiscrete
    kind = comfy.model_sampling.V_PREDICTION if sampling == "v" else comfy.model_sampling.EPS
    cls = type("Stock", (base, kind), {})
    return cls(comfy.supported_models.SD20({}), zsnr=zsnr)


@pytest.mark.parametrize("version,prediction,zsnr", [("v1", "eps", False), ("v2", "eps", False),
                                                     ("v2.1", "v", True)])
def test_model_sampling_equals_stock_model_sampling_discrete(smp, sch, sd_model, version, prediction, zsnr):
    """DiffBIR Model Sampling = stock ModelSamplingDiscrete(eps | v_prediction, zsnr) for SD 2.x: the
    same sigma table to float32 rounding, the same sigma_max stand-in for v2.1, the same c_in/c_out."""
    import comfy.model_sampling

    ours = smp.make_model_sampling(version)
    stock = stock_model_sampling(prediction, zsnr)
    assert sd_model.prediction_of(ours) == prediction and ours.zsnr == zsnr
    assert isinstance(ours, comfy.model_sampling.V_PREDICTION) == (prediction == "v")
    rel = ((ours.sigmas.double() - stock.sigmas.double()).abs() / stock.sigmas.double()).max()
    assert rel < 2e-6, rel
    assert float(ours.sigma_max) == pytest.approx(float(stock.sigma_max), rel=1e-6)
    exact = torch.from_numpy(sch.sigmas_from_alphas_cumprod(sch.official_alphas_cumprod(version))).float()
    finite = torch.isfinite(exact)
    assert torch.equal(ours.sigmas[finite], exact[finite])  # ours is the official table, rounded once
    sigma = ours.sigmas[[10, 500, 998]]
    x = torch.randn(3, 4, 2, 2)
    out = torch.randn(3, 4, 2, 2)
    assert torch.allclose(ours.calculate_input(sigma, x), stock.calculate_input(sigma, x), rtol=1e-6)
    assert torch.allclose(ours.calculate_denoised(sigma, out, x), stock.calculate_denoised(sigma, out, x),
                          rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("version", ["v2", "v2.1"])
def test_comfy_timestep_lookup_hits_the_official_timesteps(smp, sch, version):
    """ComfyUI maps a sigma to the nearest of its 1000 timesteps in log-sigma (no interpolation): every
    sigma of the official spaced and EDM tables comes back as the official model timestep."""
    ms = smp.make_model_sampling(version)
    for steps in (4, 10, 25, 50, 100):
        spaced = smp.spaced_sigmas(ms, steps)
        assert smp.nearest_timesteps(ms, spaced[:-1]) == sch.space_timesteps(1000, str(steps))[::-1]
        assert [int(t) for t in ms.timestep(spaced[:-1])] == sch.space_timesteps(1000, str(steps))[::-1]
        edm = smp.edm_sigmas(ms, steps, "official")
        _, official_t = sch.official_edm_schedule(version, steps)
        assert [int(t) for t in ms.timestep(edm[:-1])] == official_t[:-1].tolist()


def test_edm_sigmas_first_sigma_choices(smp):
    v2 = smp.make_model_sampling("v2")
    assert float(smp.edm_sigmas(v2, 10, "official")[0]) == 1e4
    assert float(smp.edm_sigmas(v2, 10, "auto")[0]) == pytest.approx(14.6146, abs=1e-3)
    v21 = smp.make_model_sampling("v2.1")
    assert float(smp.edm_sigmas(v21, 10, "auto")[0]) == 1e4
    assert float(smp.edm_sigmas(v21, 10, "schedule")[0]) == pytest.approx(4518.9, abs=0.5)
    assert torch.equal(smp.edm_sigmas(v21, 10, "auto")[1:], smp.edm_sigmas(v21, 10, "schedule")[1:])


def test_training_alphas_cumprod_of_stock_model_sampling(smp, sch):
    """The samplers also run on the stock ModelSamplingDiscrete: its table gives the official one to
    float32 precision, with the zsnr stand-in read as the exact 0."""
    for version, prediction, zsnr in (("v2", "eps", False), ("v2.1", "v", True)):
        acp = smp.training_alphas_cumprod(stock_model_sampling(prediction, zsnr))
        exact = sch.official_alphas_cumprod(version)
        if zsnr:
            assert acp[-1] == 0.0
        np.testing.assert_allclose(acp, exact, rtol=3e-6, atol=1e-12)
