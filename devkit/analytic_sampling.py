"""The analytic stand-in for the network that the sampler goldens were made with
(tools/goldens/make_samplers.py), and what a ComfyUI sampler function is given around it: shared by
tests/test_samplers.py and tools/measure_native_samplers.py."""

from pathlib import Path
from types import SimpleNamespace

import torch

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "samplers"
SEED = 231
CFG = 4.0


def analytic_model(x, t, cond):
    """The same formula as make_samplers.analytic_model (the official side's network)."""
    t = t.float().view(-1, 1, 1, 1)
    return 0.8 * torch.tanh(x) * (1.0 + t / 1000.0) + cond * (0.5 - t / 2000.0) + 0.1 * torch.cos(t / 150.0)


class Denoiser:
    """What a ComfyUI sampler function is given (KSamplerX0Inpaint around a CFGGuider), with the
    analytic network in place of the UNet: ComfyUI's own model_sampling does the input scaling,
    timestep lookup and x0 conversion, CFG is done on x0 as ComfyUI does, then every
    sampler_post_cfg_function of the model options runs."""

    def __init__(self, model_sampling, cond, uncond, cfg=CFG):
        self.ms = model_sampling
        self.cond, self.uncond, self.cfg = cond, uncond, cfg
        patcher = SimpleNamespace(get_model_object=lambda name: model_sampling)
        self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=model_sampling),
                                           model_patcher=patcher)
        self.calls = []

    def __call__(self, x, sigma, model_options=None, seed=None, denoise_mask=None):
        model_options = model_options or {}
        x_in = self.ms.calculate_input(sigma, x)
        t = self.ms.timestep(sigma)
        step = model_options.get("transformer_options", {}).get("diffbir_step")
        self.calls.append((float(sigma[0]), int(t[0]), step))
        cond = self.ms.calculate_denoised(sigma, analytic_model(x_in, t, self.cond), x)
        uncond = self.ms.calculate_denoised(sigma, analytic_model(x_in, t, self.uncond), x)
        denoised = uncond + (cond - uncond) * self.cfg
        for fn in model_options.get("sampler_post_cfg_function", []):
            denoised = fn({"denoised": denoised, "sigma": sigma, "model_options": model_options, "input": x})
        return denoised


def recorded(draws):
    queue = list(draws)

    def noise_sampler(sigma, sigma_next):
        return queue.pop(0).clone()

    noise_sampler.queue = queue
    return noise_sampler


def start(ms, sigmas, x_T):
    """KSAMPLER's start: noise_scaling of the initial noise at sigmas[0] on an empty latent."""
    import comfy.samplers

    max_denoise = comfy.samplers.Sampler().max_denoise(SimpleNamespace(inner_model=SimpleNamespace(model_sampling=ms)),
                                                      sigmas)
    return ms.noise_scaling(sigmas[0], x_T.clone(), torch.zeros_like(x_T), max_denoise)


def official_seed_noise(shape=(1, 4, 8, 8)):
    """ComfyUI's initial noise for SEED (comfy.sample.prepare_noise draws it the same way)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(SEED))
