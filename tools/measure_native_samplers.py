"""How close ComfyUI's own samplers/schedulers come to the official DiffBIR samplers (the figures of
docs/samplers.md). Run from the repository root with the test environment (scripts/setup.sh):

    .venv/bin/python -m tools.measure_native_samplers

Two measurements, both against the official code's own outputs in tests/golden/samplers/:
1. whole runs (run_*.safetensors: the small random SD 2.x checkpoint + random IRControlNet, strength
   1, 64x64 image, 4 steps): the same graph as tests/test_samplers_parity.py with a native
   sampler/scheduler in place of ours; the same initial noise (seed 231) and, for the stochastic
   ones, the official step noise injected, so that only the algorithm differs;
2. the analytic stand-in network (analytic.safetensors) for 10 and 50 steps, where the schedules
   differ more, with the official noise injected.
Prints a markdown table: max |ours - official| of the latent, and its ratio to max |official|.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from devkit import comfy_runtime, model_factory

REPO = Path(__file__).resolve().parents[1]

GOLDEN = REPO / "tests" / "golden" / "samplers"
LATENT_SCALE = 0.18215
ROWS = []


def row(case, setting, ours, official):
    err = (ours - official).abs().max().item()
    ROWS.append((case, setting, err, err / official.abs().max().item()))
    print(f"| {case} | {setting} | {err:.2e} | {err / official.abs().max().item():.1e} |", flush=True)


def stock_model_sampling(node, model, version):
    sampling, zsnr = ("v_prediction", True) if version == "v2.1" else ("eps", False)
    return node("ModelSamplingDiscrete", model, sampling, zsnr)[0]


def main():
    from safetensors import safe_open
    from safetensors.torch import load_file

    base = Path(tempfile.mkdtemp(prefix="diffbir-measure-"))
    models_dir = model_factory.CACHE.parent / "test-comfy-models"
    comfy_runtime.start(base, models_dir)
    import comfy.k_diffusion.sampling as kds
    import comfy.samplers

    from devkit.model_factory import install_model

    sampling = comfy_runtime.pack_module("diffbir_modules.sampling")

    def node(name, *args):
        cls = comfy_runtime.node_class(name)
        with torch.inference_mode():
            if hasattr(cls, "define_schema"):
                return cls.execute(*args).result
            return getattr(cls(), cls.FUNCTION)(*args)

    ckpt = install_model("checkpoints", model_factory.sd2_checkpoint("small"))
    irc_name = install_model("diffbir", model_factory.ircontrolnet_file("small", 1, "safetensors"))
    model, clip, vae = node("CheckpointLoaderSimple", ckpt)
    encoded = {}

    def encode(text):
        if text not in encoded:
            encoded[text] = node("DiffBIRTextEncode", clip, text, True, False)[0]
        return encoded[text]

    class Recorded:
        """The official x_T (it equals ComfyUI's noise for the seed; the seed also drives the samplers)."""

        def __init__(self, x, seed):
            self.seed, self.x = seed, x

        def generate_noise(self, latent):
            return self.x.clone()

    def run(name, sampler, sigmas_fn, stock_sampling=False):
        path = GOLDEN / f"{name}.safetensors"
        g = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        version = meta["version"]
        m = stock_model_sampling(node, model, version) if stock_sampling else node("DiffBIRModelSampling", model,
                                                                                      version)[0]
        irc = node("DiffBIRIRControlNetLoader", irc_name, version)[0]
        image = g["cond_img"].movedim(1, -1)
        pos, neg, latent = node("DiffBIRApplyIRControlNet", encode(meta["positive"]), encode(meta["negative"]), irc,
                                vae, image, 1.0)
        guider = node("CFGGuider", m, pos, neg, float(meta["cfg"]))[0]
        noise = Recorded(g["draws"][0], int(meta["seed"]))
        out = node("SamplerCustomAdvanced", noise, guider, sampler, sigmas_fn(m), latent)[0]
        return out["samples"] * LATENT_SCALE, g["z_s1"], g

    def queue(draws):
        items = [d.clone() for d in draws]
        return lambda s, sn: items.pop(0)

    def scheduler(name, steps):
        return lambda m: node("BasicScheduler", m, name, steps, 1.0)[0]

    print("| case | setting | max abs diff (latent) | relative |\n|---|---|---|---|", flush=True)
    # -- v2 spaced, 4 steps ---------------------------------------------------------------------
    g = load_file(str(GOLDEN / "run_v2_spaced.safetensors"))
    ours = comfy.samplers.KSAMPLER(sampling.sample_spaced, {"noise_sampler": queue(g["draws"][1:])})
    z, official, _ = run("run_v2_spaced", ours, lambda m: node("DiffBIRSpacedSigmas", m, 4)[0])
    row("v2 spaced, 4 steps", "DiffBIR Spaced Sampler + DiffBIR Spaced Sigmas", z, official)
    for sched in ("normal", "simple", "sgm_uniform", "karras"):
        stock = comfy.samplers.ksampler("ddpm", {"noise_sampler": queue(g["draws"][1:])})
        z, official, _ = run("run_v2_spaced", stock, scheduler(sched, 4), stock_sampling=True)
        row("v2 spaced, 4 steps", f"stock ddpm + {sched} (official noise injected)", z, official)
    # -- v2.1 edm_euler, 4 steps ------------------------------------------------------------------
    euler = node("KSamplerSelect", "euler")[0]
    z, official, _ = run("run_v21_edm_euler", euler, lambda m: node("DiffBIREDMSigmas", m, 4, "official")[0])
    row("v2.1 edm_euler, 4 steps", "stock euler + DiffBIR EDM Sigmas", z, official)
    for sched in ("simple", "normal", "sgm_uniform", "karras", "exponential"):
        z, official, _ = run("run_v21_edm_euler", euler, scheduler(sched, 4), stock_sampling=True)
        row("v2.1 edm_euler, 4 steps", f"stock euler + {sched}", z, official)
    # -- v2.1 edm_dpm++_3m_sde, 4 steps ---------------------------------------------------------
    g = load_file(str(GOLDEN / "run_v21_edm_dpmpp_3m_sde.safetensors"))
    ours = node("DiffBIREDMSampler", "dpm++_3m_sde", "official", "official_edm", 1.0, 1.0, 0.0, 0.0, 300.0, 1)[0]
    z, official, _ = run("run_v21_edm_dpmpp_3m_sde", ours, lambda m: node("DiffBIREDMSigmas", m, 4, "official")[0])
    row("v2.1 edm_dpm++_3m_sde, 4 steps", "DiffBIR EDM Sampler + DiffBIR EDM Sigmas", z, official)
    tree_seed = int(g["randint"][0])

    def tree_sampler():
        def fn(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
            ns = kds.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=tree_seed, cpu=True)
            return kds.sample_dpmpp_3m_sde(model_k, x, sigmas, extra_args, callback, disable, noise_sampler=ns)
        return comfy.samplers.KSAMPLER(fn)

    edm_official = lambda m: node("DiffBIREDMSigmas", m, 4, "official")[0]  # noqa: E731
    z, official, _ = run("run_v21_edm_dpmpp_3m_sde", tree_sampler(), edm_official, stock_sampling=True)
    row("v2.1 edm_dpm++_3m_sde, 4 steps", "stock dpmpp_3m_sde + DiffBIR EDM Sigmas (official Brownian seed)", z,
        official)
    stock = node("KSamplerSelect", "dpmpp_3m_sde")[0]
    z, official, _ = run("run_v21_edm_dpmpp_3m_sde", stock, edm_official, stock_sampling=True)
    row("v2.1 edm_dpm++_3m_sde, 4 steps", "stock dpmpp_3m_sde + DiffBIR EDM Sigmas (ComfyUI's Brownian seed)", z,
        official)
    z, official, _ = run("run_v21_edm_dpmpp_3m_sde", stock, scheduler("simple", 4), stock_sampling=True)
    row("v2.1 edm_dpm++_3m_sde, 4 steps", "stock dpmpp_3m_sde + simple (ComfyUI's Brownian seed)", z, official)

    # -- analytic network, more steps -----------------------------------------------------------
    from devkit import analytic_sampling as ts

    analytic = load_file(str(GOLDEN / "analytic.safetensors"))
    for version, key in (("v2", "v2"), ("v2.1", "v21")):
        ms = sampling.make_model_sampling(version)
        for steps in (10, 50):
            official = analytic[f"{key}_spaced_{steps}_z"]
            draws = analytic[f"{key}_spaced_{steps}_draws"]
            for sched in ("normal", "simple"):
                sigmas = comfy.samplers.calculate_sigmas(ms, sched, steps)
                den = ts.Denoiser(ms, analytic["cond"], analytic["uncond"])
                x = kds.sample_ddpm(den, ts.start(ms, sigmas, draws[0]), sigmas, {"model_options": {}},
                                    disable=True, noise_sampler=queue(draws[1:]))
                row(f"{version} spaced, {steps} steps (analytic)", f"stock ddpm + {sched}", x, official)
        for solver, fn in (("euler", kds.sample_euler), ("dpm++_2m", kds.sample_dpmpp_2m)):
            for steps in (10, 7):
                sig, _ = sampling.schedules.edm_schedule(sampling.training_alphas_cumprod(ms), steps)
                official_sigmas = torch.tensor(sig, dtype=torch.float32)
                den = ts.Denoiser(ms, analytic["cond"], analytic["uncond"])
                ref = fn(den, ts.start(ms, official_sigmas, ts.official_seed_noise()), official_sigmas,
                         {"model_options": {}}, disable=True)
                if steps == 10:  # the reference is the official run (checked), 7 steps have no official golden
                    golden_z = analytic[f"{key}_edm_{solver.replace('+', 'p')}_10_z"]
                    assert (ref - golden_z).abs().max() / golden_z.abs().max() < 2e-6
                for sched in ("simple", "sgm_uniform", "normal"):
                    sigmas = comfy.samplers.calculate_sigmas(ms, sched, steps)
                    den = ts.Denoiser(ms, analytic["cond"], analytic["uncond"])
                    x = fn(den, ts.start(ms, sigmas, ts.official_seed_noise()), sigmas, {"model_options": {}},
                           disable=True)
                    row(f"{version} edm_{solver}, {steps} steps (analytic)", f"stock {solver.replace('+', 'p')} + "
                        f"{sched}", x, ref)


if __name__ == "__main__":
    main()
