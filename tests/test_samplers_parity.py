"""Whole official runs reproduced in ComfyUI (tests/golden/samplers/run_*.safetensors, made by
tools/goldens/make_samplers.py with the official Pipeline.apply_cldm on the small random SD 2.x
checkpoint + model_factory's random IRControlNet, right after torch.manual_seed(231)).

Our side is the graph a user builds: CheckpointLoaderSimple -> DiffBIR Model Sampling ->
DiffBIR Text Encode (x2) -> [DiffBIR Apply IRControlNet] -> CFGGuider -> SamplerCustomAdvanced
(RandomNoise seed 231, DiffBIR Spaced/EDM Sampler, DiffBIR Spaced/EDM Sigmas) -> VAEDecode ->
DiffBIR Colour Fix, node classes called in process. Control strength 0 is the pure UNet (sampler,
schedule, text path); strength 1 adds the IRControlNet."""

import json
import re
from pathlib import Path

import pytest
import torch

from devkit import golden_io, model_factory

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden" / "samplers"
LATENT_SCALE = 0.18215
RESULTS = {}  # name -> measured max abs differences, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def summary():
    """Prints every run's measured differences once the module is done (seen with pytest -s)."""
    yield
    for name, diffs in RESULTS.items():
        print(f"{name}: latent {diffs['latent']:.1e} (relative {diffs['latent_rel']:.1e}), decoded "
              f"{diffs['decoded']:.1e}, colour-fixed {diffs['color_fixed']:.1e}, vs official final "
              f"{diffs['color_fixed_vs_official_final']:.1e}, "
              f"unclamped pipeline {diffs['color_fixed_unclamped_decode']:.1e}")


def golden(name):
    return golden_io.load_safetensors(GOLDEN / f"{name}.safetensors")


@pytest.fixture(scope="module")
def models(stage2_small):
    return stage2_small



def encode(comfy, models, text):
    """DiffBIR Text Encode, once per prompt for the whole module (the text encoder is the slow part)."""
    cache = models.setdefault("encoded", {})
    if text not in cache:
        cache[text] = comfy.call_node("DiffBIRTextEncode", models["clip"], text, True, False)[0]
    return cache[text]


def run_graph(comfy, models, meta, strength, sampler, sigmas_node, noise=None, noise_aug_stream=False):
    version = meta["version"]
    model = comfy.call_node("DiffBIRModelSampling", models["model"], version)[0]
    if meta.get("rescale_cfg") == "True":
        model = comfy.call_node("DiffBIRRescaleCFG", model)[0]
    pos, neg = encode(comfy, models, meta["positive"]), encode(comfy, models, meta["negative"])
    g, _ = golden_cache[meta["name"]]
    image = g["cond_img"].movedim(1, -1)
    if strength > 0:
        irc = comfy.call_node("DiffBIRIRControlNetLoader", models["irc_name"], version)[0]
        pos, neg, latent = comfy.call_node("DiffBIRApplyIRControlNet", pos, neg, irc, models["vae"], image, strength)
    else:
        latent = comfy.call_node("EmptyLatentImage", image.shape[2], image.shape[1], 1)[0]
    seed = int(meta["seed"])
    if int(meta["noise_aug"]) > 0:
        pos, neg = comfy.call_node("DiffBIRConditionNoiseAugment", pos, neg, model, int(meta["noise_aug"]), seed, True)
    guider = comfy.call_node("CFGGuider", model, pos, neg, float(meta["cfg"]))[0]
    sigmas = sigmas_node(model)
    noise = noise if noise is not None else comfy.call_node("RandomNoise", seed)[0]
    out = comfy.call_node("SamplerCustomAdvanced", noise, guider, sampler, sigmas, latent)[0]
    decoded = comfy.call_node("VAEDecode", models["vae"], out)[0]
    fixed = comfy.call_node("DiffBIRColorFix", decoded, image, "wavelet")[0]
    with torch.inference_mode():
        raw = models["vae"].first_stage_model.decode(out["samples"].to(models["vae"].vae_dtype)).float()
    return {"z": out["samples"] * LATENT_SCALE, "decoded": decoded, "fixed": fixed, "raw_decoded": raw}


golden_cache = {}


def load_run(name):
    if name not in golden_cache:
        g, meta = golden(name)
        meta["name"] = name
        golden_cache[name] = (g, meta)
    return golden_cache[name]


def compare(comfy, name, strength, ours, g):
    """Max abs differences: latent; decoded image (ComfyUI's VAEDecode clamps to [0, 1]); colour-fixed
    image (ours from the clamped decode, official from its unclamped decode, both clamped at the end
    as the official uint8 conversion does); and the same pipeline without VAEDecode's clamp."""
    color_fix = comfy.pack_module("diffbir_modules.color_fix")
    tag = f"s{int(strength)}"
    official_z = g[f"z_{tag}"]
    official_decoded = g[f"decoded_{tag}"]
    official_img = ((official_decoded + 1) / 2).clamp(0, 1).movedim(1, -1)
    official_fixed_clamped_input = color_fix.wavelet_color_fix(official_img.movedim(-1, 1), g["cond_img"])
    diffs = {
        "latent": (ours["z"] - official_z).abs().max().item(),
        "latent_rel": ((ours["z"] - official_z).abs().max() / official_z.abs().max()).item(),
        "decoded": (ours["decoded"] - official_img).abs().max().item(),
        "decoded_unclamped": (ours["raw_decoded"] - official_decoded).abs().max().item(),
        "color_fixed": (ours["fixed"] - official_fixed_clamped_input.clamp(0, 1).movedim(1, -1)).abs().max().item(),
        "color_fixed_vs_official_final": (ours["fixed"] - g[f"color_fixed_{tag}"].clamp(0, 1).movedim(1, -1)
                                          ).abs().max().item(),
        "color_fixed_unclamped_decode": (
            color_fix.wavelet_color_fix((ours["raw_decoded"] + 1) / 2, g["cond_img"]) - g[f"color_fixed_{tag}"]
        ).abs().max().item(),
    }
    RESULTS[f"{name} strength {strength:g}"] = diffs
    print(f"{name} strength {strength:g}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return diffs


# Bounds from the measured spread: every run of this file with torch threads 1 and 2, on ComfyUI 0.3.75
# and 0.33 (identical per thread count), on an AVX-512 CPU against goldens made on another CPU
# (2026-12-04). Float32 summation order changes with the thread count and the CPU's vector width, and
# 4 steps of cfg 6 carry it into the latent: max relative latent difference 2.14e-5 (v2.1 euler,
# 2 threads; v1/v2 runs <= 4.4e-6), max image difference 3.3e-5 (unclamped decode). Bounds: 5e-5
# relative on the latent, 1e-4 on images (both > 2x the largest measured), far below a real change
# (a wrong schedule or noise draw moves the latent by > 1e-2). The ddim, dpm++_m2 and rescale_cfg runs
# (4 steps, strength 1) measured <= 2.6e-6 relative on the latent and <= 7.6e-6 on images (torch threads
# 1 and 2, ComfyUI 0.3.75; 0.33 gives the same figures), goldens from the same CPU: inside the same bounds
# with > 10x margin.
LATENT_RELATIVE_BOUND = 5e-5


def assert_parity(diffs):
    assert diffs["latent_rel"] < LATENT_RELATIVE_BOUND
    assert diffs["decoded"] < 1e-4
    assert diffs["decoded_unclamped"] < 1e-4
    assert diffs["color_fixed"] < 1e-4
    assert diffs["color_fixed_unclamped_decode"] < 1e-4


def spaced_sigmas(comfy, steps):
    return lambda model: comfy.call_node("DiffBIRSpacedSigmas", model, steps)[0]


def edm_sigmas(comfy, steps, first="official"):
    return lambda model: comfy.call_node("DiffBIREDMSigmas", model, steps, first)[0]


def edm_sampler(comfy, solver, stream="official"):
    return comfy.call_node("DiffBIREDMSampler", solver, stream, "official_edm", 1.0, 1.0, 0.0, 0.0, 300.0, 1)[0]


def test_golden_ircontrolnet_is_model_factory_small():
    _, meta = load_run("run_v2_spaced")
    shapes = {k: tuple(v) for k, v in json.loads(meta["controlnet_shapes"]).items()}
    assert shapes == model_factory.ircontrolnet_shapes("small")


def test_v2_spaced_run(comfy, models):
    """v2: eps, spaced sampler, 4 steps, cfg 4, '' / the v2 negative prompt, seed 231, strength 0 (the
    pure UNet). The official draws are exactly our seed's stream."""
    g, meta = load_run("run_v2_spaced")
    stream = torch.Generator().manual_seed(int(meta["seed"]))
    assert all(torch.equal(torch.randn(tuple(d.shape), generator=stream), d) for d in g["draws"])
    sampler = comfy.call_node("DiffBIRSpacedSampler", "official")[0]
    ours = run_graph(comfy, models, meta, 0.0, sampler, spaced_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2 spaced", 0.0, ours, g))


def test_v2_spaced_run_with_injected_official_noise(comfy, models):
    """Strength 1, with the official recorded draws injected instead of the seed: the initial noise
    through a NOISE object, the step noise through the sampler's noise_sampler option."""
    import comfy.samplers as samplers

    g, meta = load_run("run_v2_spaced")
    draws = list(g["draws"])

    class RecordedNoise:
        seed = 0

        def generate_noise(self, latent):
            return draws[0].clone()

    queue = list(draws[1:])
    sampling = comfy.pack_module("diffbir_modules.sampling")
    sampler = samplers.KSAMPLER(sampling.sample_spaced, {"noise_sampler": lambda s, sn: queue.pop(0).clone()})
    ours = run_graph(comfy, models, meta, 1.0, sampler, spaced_sigmas(comfy, 4), noise=RecordedNoise())
    assert not queue
    assert_parity(compare(comfy, "v2 spaced (injected noise)", 1.0, ours, g))


def test_v21_edm_euler_run(comfy, models):
    """v2.1: v-prediction with zero terminal SNR, edm_euler, 4 steps, cfg 6, the default prompts,
    strength 0."""
    g, meta = load_run("run_v21_edm_euler")
    ours = run_graph(comfy, models, meta, 0.0, edm_sampler(comfy, "euler"), edm_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2.1 edm_euler", 0.0, ours, g))


def test_v21_edm_euler_with_the_stock_euler_sampler(comfy, models):
    """Strength 1. The deterministic solvers need nothing of ours but the sigmas: stock KSamplerSelect
    euler."""
    g, meta = load_run("run_v21_edm_euler")
    sampler = comfy.call_node("KSamplerSelect", "euler")[0]
    ours = run_graph(comfy, models, meta, 1.0, sampler, edm_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2.1 stock euler + EDM sigmas", 1.0, ours, g))


def test_v21_default_sampler_run(comfy, models):
    """v2.1's default edm_dpm++_3m_sde (Brownian tree seeded from the seed's stream), with a caption
    that makes the positive prompt longer than 77 tokens (truncated as officially)."""
    g, meta = load_run("run_v21_edm_dpmpp_3m_sde")
    stream = torch.Generator().manual_seed(int(meta["seed"]))
    torch.randn(tuple(g["draws"][0].shape), generator=stream)
    assert int(torch.randint(0, 2**63 - 1, (), generator=stream)) == int(g["randint"][0])
    ours = run_graph(comfy, models, meta, 1.0, edm_sampler(comfy, "dpm++_3m_sde"), edm_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2.1 edm_dpm++_3m_sde", 1.0, ours, g))


def test_v21_noise_aug_run(comfy, models):
    """--noise_aug 200: the condition noised in the official order (second draw of the seed) and the
    sampler's stream after it."""
    g, meta = load_run("run_v21_noise_aug")
    ours = run_graph(comfy, models, meta, 1.0, edm_sampler(comfy, "euler", "official_after_noise_aug"),
                     edm_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2.1 noise_aug 200", 1.0, ours, g))


def ddim_sigmas(comfy, steps):
    return lambda model: comfy.call_node("DiffBIRDDIMSigmas", model, steps)[0]


def dpm_solver_sigmas(comfy, steps):
    return lambda model: comfy.call_node("DiffBIRDPMSolverSigmas", model, steps)[0]


@pytest.mark.parametrize("steps, expected", [
    (4, [751, 501, 251, 1]),
    (10, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
    (7, [995, 853, 711, 569, 427, 285, 143, 1]),
])
def test_ddim_sigmas_select_the_official_ddim_timesteps(comfy, models, steps, expected):
    """The official DDIM timesteps are range(0, 1000, 1000 // steps) + 1, from the largest down (7
    steps: stride 142, 8 timesteps: the official DDIM runs len(range(0, 1000, 142)) steps). The stock
    ddim_uniform scheduler selects the same when steps divides 1000, and drops 995 for 7 steps."""
    model = comfy.call_node("DiffBIRModelSampling", models["model"], "v2")[0]
    sampling = comfy.pack_module("diffbir_modules.sampling")
    model_sampling = model.get_model_object("model_sampling")
    sigmas = comfy.call_node("DiffBIRDDIMSigmas", model, steps)[0]
    assert sampling.nearest_timesteps(model_sampling, sigmas[:-1]) == expected
    assert float(sigmas[-1]) == 0.0
    stock = comfy.call_node("BasicScheduler", model, "ddim_uniform", steps, 1.0)[0]
    assert (sampling.nearest_timesteps(model_sampling, stock[:-1]) == expected) == (1000 % steps == 0)


def test_v2_ddim_run(comfy, models):
    """v2 --sampler ddim (eta 0), 4 steps, cfg 4, strength 1: DiffBIR DDIM Sigmas + DiffBIR DDIM
    Sampler. Its draws are the official sampler's randn_like * 0: none reaches the result."""
    g, meta = load_run("run_v2_ddim")
    sampler = comfy.call_node("DiffBIRDDIMSampler")[0]
    ours = run_graph(comfy, models, meta, 1.0, sampler, ddim_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2 ddim", 1.0, ours, g))


def test_v21_ddim_rescale_cfg_run(comfy, models):
    """v2.1 (v-prediction) --sampler ddim --rescale_cfg, cfg 6, strength 1: DiffBIR Rescale CFG on the model."""
    g, meta = load_run("run_v21_ddim_rescale_cfg")
    sampler = comfy.call_node("DiffBIRDDIMSampler")[0]
    ours = run_graph(comfy, models, meta, 1.0, sampler, ddim_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2.1 ddim rescale_cfg", 1.0, ours, g))


def test_v2_dpm_solver_run(comfy, models):
    """v2 --sampler dpm++_m2, 4 steps, cfg 4, strength 1: DiffBIR DPM-Solver Sigmas + Sampler (the model
    evaluated at the official fractional timesteps 999, 749.25, 499.5, 249.75)."""
    g, meta = load_run("run_v2_dpmpp_m2")
    sampler = comfy.call_node("DiffBIRDPMSolverSampler")[0]
    ours = run_graph(comfy, models, meta, 1.0, sampler, dpm_solver_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2 dpm++_m2", 1.0, ours, g))


def test_v21_dpm_solver_rescale_cfg_run(comfy, models):
    """v2.1 --sampler dpm++_m2 --rescale_cfg, cfg 6: the zero-terminal-SNR schedule loses its last
    steps to the official log-SNR clip, which moves every time of the grid."""
    g, meta = load_run("run_v21_dpmpp_m2_rescale_cfg")
    sampler = comfy.call_node("DiffBIRDPMSolverSampler")[0]
    ours = run_graph(comfy, models, meta, 1.0, sampler, dpm_solver_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2.1 dpm++_m2 rescale_cfg", 1.0, ours, g))


def test_v21_edm_rescale_cfg_run(comfy, models):
    """v2.1 edm_euler --rescale_cfg: the scale at the official EDM timestep of each step."""
    g, meta = load_run("run_v21_edm_euler_rescale_cfg")
    ours = run_graph(comfy, models, meta, 1.0, edm_sampler(comfy, "euler"), edm_sigmas(comfy, 4))
    assert_parity(compare(comfy, "v2.1 edm_euler rescale_cfg", 1.0, ours, g))


def test_dpm_solver_sampler_refuses_other_sigmas(comfy, models):
    """The solver runs on its own continuous times: other sigmas are an error naming the node to use."""
    g, meta = load_run("run_v2_dpmpp_m2")
    sampler = comfy.call_node("DiffBIRDPMSolverSampler")[0]
    with pytest.raises(Exception, match="DiffBIR DPM-Solver Sigmas"):
        run_graph(comfy, models, meta, 1.0, sampler, ddim_sigmas(comfy, 4))


def test_every_official_run_has_a_parity_test():
    """Each official run the golden maker writes is read by a test (this module or another): a run file
    that no test reads would otherwise go unchecked."""
    runs = {p.stem for p in GOLDEN.glob("run_*.safetensors")}
    sources = "\n".join(t.read_text() for t in Path(__file__).parent.glob("test_*.py"))
    read = set(re.findall(r'"(run_\w+)"', sources))
    assert runs, f"no official runs in {GOLDEN}: run .venv-official/bin/python -m tools.goldens.make_samplers"
    assert runs <= read, f"official runs no test reads: {sorted(runs - read)}"
