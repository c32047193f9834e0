"""Sampling nodes: DiffBIR's official schedules and samplers for SamplerCustom / SamplerCustomAdvanced,
the per-version model sampling, and condition noise augmentation."""

import comfy.samplers
import torch
from comfy_api.latest import io

from ..diffbir_modules import attention, convolution, feed_forward, guards, official_solvers, sampling, schedules
from ..diffbir_modules.cpu_precision import CPU_PRECISIONS, with_cpu_precision
from . import menu

VERSIONS = list(schedules.VERSIONS)
VERSION_TOOLTIP = ("The DiffBIR generation the IRControlNet belongs to. v1 and v2: eps-prediction SD 2.1 base "
                   "(v2-1_512-ema-pruned). v2.1: v-prediction with zero terminal SNR "
                   "(sd2.1-base-zsnr-laionaes5).")
NOISE_STREAM_TOOLTIP = (
    "Where the per-step noise comes from. official: the seed's random stream continued after the initial noise, "
    "as the official code's single generator (same seed and size as an official CPU run -> same noise). "
    "official_after_noise_aug: the same after one more latent-sized draw, matching an official run with "
    "--noise_aug > 0. comfyui: ComfyUI's usual fresh generator from the seed (its first step noise repeats the "
    "initial noise). Changes only which random image you get, not its quality.")


class DiffBIRModelSampling(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRModelSampling",
            **menu.search("model sampling", "v prediction", "zero terminal snr", "ztsnr"),
            display_name="DiffBIR Model Sampling",
            category=menu.SAMPLING,
            description=(
                "Sets the model's noise schedule and prediction type to exactly what the DiffBIR version was "
                "trained with: v1/v2 eps-prediction on SD's linear betas, v2.1 v-prediction with zero terminal "
                "SNR. Put it between the checkpoint loader and the sampler. For v2.1 it equals the stock "
                "ModelSamplingDiscrete (v_prediction, zsnr on); the wrong choice gives washed-out or noisy "
                "restorations, so it matters for both fidelity and realism."),
            inputs=[
                io.Model.Input("model", tooltip="The SD 2.1 base model from the checkpoint loader."),
                io.Combo.Input("version", options=VERSIONS, default="v2.1", tooltip=VERSION_TOOLTIP),
                io.Combo.Input("unet_attention", options=list(attention.UNET_ATTENTION_CHOICES),
                               default="fastest_exact", optional=True, tooltip=(
                                   "fastest_exact: where ComfyUI's attention is its slow CPU default (split or "
                                   "sub-quadratic), the UNet runs torch's fused scaled-dot-product attention "
                                   "instead, as the official DiffBIR code does (same maths; the UNet took about a "
                                   "quarter less CPU time at 512 px). A faster kernel you chose (xformers, flash, "
                                   "sage, --use-pytorch-cross-attention) is kept. On a CPU the first self-attention, "
                                   "equal for cond and uncond under cfg, runs once for both (same result, bit for "
                                   "bit). comfyui: leave ComfyUI's choice alone.")),
                io.Combo.Input("cpu_precision", options=list(CPU_PRECISIONS), default="fp32",
                               optional=True, tooltip=(
                                   "Only when sampling runs on a CPU. fp32: as the official code, exact. bf16: the "
                                   "UNet and the IRControlNet compute in bfloat16 (torch autocast), a sampling step "
                                   "faster on a CPU with bf16 instructions: about 2.5x with AMX (Intel Xeon 4th "
                                   "generation and later), 1.6x with AVX-512 BF16 alone (AMD Zen 4 and later); the "
                                   "image moves by a few levels. "
                                   "On a CPU without them it stays fp32 (bf16 would be emulated there, slowly), with a "
                                   "warning. On a GPU ComfyUI already picks fp16 or bf16 itself.")),
                io.Combo.Input("cpu_convolution", options=list(convolution.CPU_CONVOLUTION_CHOICES),
                               default="fastest_exact", optional=True, tooltip=(
                                   "Only when sampling runs on a CPU in fp32. fastest_exact: the widest "
                                   "convolutions of the UNet and the IRControlNet at their smallest sizes (1280 "
                                   "channels at 8x8 and 16x16 for a 512 px image) run as one matrix product "
                                   "instead of through oneDNN, which copies their weights on every call: a "
                                   "sampling step about 5 % faster at 512 px, same maths (the sums run in another "
                                   "order, about 1e-6). pytorch: PyTorch's own choice, as the official code.")),
                io.Combo.Input("cpu_feed_forward", options=list(feed_forward.CPU_FEED_FORWARD_CHOICES),
                               default="in_pieces", optional=True, tooltip=(
                                   "Only when sampling runs on a CPU in fp32. in_pieces: the feed-forward layers "
                                   "of the UNet's and the IRControlNet's transformer blocks go over 1024 tokens at "
                                   "a time instead of all at once: sampling at 1024 px peaked about 0.4 GiB "
                                   "lower, no slower; same maths (the result may move by about 1e-6 where the CPU's "
                                   "matrix library sums pieces in another order). whole: all tokens at once, "
                                   "as the official code.")),
            ],
            outputs=[io.Model.Output(tooltip=(
                "The same model with DiffBIR's schedule and prediction type (and the attention, convolution and "
                "feed-forward kernels and CPU precision chosen above)."))],
        )

    @classmethod
    def execute(cls, model, version, unet_attention="fastest_exact", cpu_precision="fp32",
                cpu_convolution="fastest_exact", cpu_feed_forward="in_pieces") -> io.NodeOutput:
        patched = attention.with_unet_attention(sampling.with_model_sampling(model, version), unet_attention)
        patched = convolution.with_cpu_convolution(patched, cpu_convolution)
        patched = feed_forward.with_cpu_feed_forward(patched, cpu_feed_forward)
        return io.NodeOutput(with_cpu_precision(patched, cpu_precision))


class DiffBIRSpacedSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRSpacedSigmas",
            **menu.search("sigmas", "schedule", "scheduler", "ddpm", "spaced"),
            display_name="DiffBIR Spaced Sigmas",
            category=menu.SAMPLING,
            description=(
                "The timesteps of DiffBIR's official 'spaced' sampler (IDDPM respacing: 4 steps -> 999, 666, 333, 0; "
                "50 steps -> 999, 979, 958, ... 20, 0) as SIGMAS, for DiffBIR Spaced Sampler in SamplerCustom. "
                "More steps: more detail and realism, slower; the official v1/v2 runs use 50."),
            inputs=[
                io.Model.Input("model", tooltip="The model to sample (its schedule gives the sigma of each timestep)."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip=(
                    "Number of denoising steps (official v1/v2 default: 50).")),
            ],
            outputs=[io.Sigmas.Output(tooltip="Decreasing sigmas at the respaced timesteps, then 0.")],
        )

    @classmethod
    def execute(cls, model, steps) -> io.NodeOutput:
        return io.NodeOutput(sampling.spaced_sigmas(model.get_model_object("model_sampling"), steps))


class DiffBIREDMSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIREDMSigmas",
            **menu.search("sigmas", "schedule", "scheduler", "karras", "edm"),
            display_name="DiffBIR EDM Sigmas",
            category=menu.SAMPLING,
            description=(
                "The sigma schedule of DiffBIR's official edm_* samplers (v2.1's default is edm_dpm++_3m_sde, 10 "
                "steps): timesteps linspace(999, 0, steps) without 0, sigma = sqrt((1-acp)/acp) (the first forced "
                "to 1e4 officially), then 0. With euler, heun, dpmpp_2m (and DiffBIR EDM Sampler for the noisy ones) "
                "in SamplerCustom this reproduces the official samplers. More steps: more detail, slower."),
            inputs=[
                io.Model.Input("model", tooltip=(
                    "The model to sample; its schedule (set it with DiffBIR Model Sampling) gives the sigmas.")),
                io.Int.Input("steps", default=10, min=1, max=1000, tooltip="Number of steps (official v2.1: 10)."),
                io.Combo.Input("first_sigma", options=list(sampling.EDM_FIRST_SIGMAS), default="auto", tooltip=(
                    "official: the first sigma is 1e4 for every version, as officially. schedule: the model's own "
                    "sigma at t=999 (14.6 for v1/v2). auto: official for v2.1 (v-prediction, where 1e4 stands for "
                    "the infinite zero-terminal-SNR sigma), schedule for v1/v2, whose eps models the official 1e4 "
                    "throws off in the first step (use official only to reproduce such a run).")),
            ],
            outputs=[io.Sigmas.Output(tooltip="steps + 1 decreasing sigmas, the last 0.")],
        )

    @classmethod
    def execute(cls, model, steps, first_sigma="auto") -> io.NodeOutput:
        return io.NodeOutput(sampling.edm_sigmas(model.get_model_object("model_sampling"), steps, first_sigma))


class DiffBIRSpacedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRSpacedSampler",
            **menu.search("sampler", "ddpm", "spaced"),
            display_name="DiffBIR Spaced Sampler",
            category=menu.SAMPLING,
            description=(
                "DiffBIR's official 'spaced' sampler (respaced DDPM, the v1/v2 default) for SamplerCustom or "
                "SamplerCustomAdvanced; give it DiffBIR Spaced Sigmas. Stochastic: fresh noise every step, which "
                "adds realistic texture. Matches the official sampler step for step; restoration guidance "
                "patches see the official posterior coefficients of each step."),
            inputs=[
                io.Combo.Input("noise_stream", options=list(sampling.NOISE_STREAMS), default="official",
                               tooltip=NOISE_STREAM_TOOLTIP),
            ],
            outputs=[io.Sampler.Output(tooltip="The sampler, for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, noise_stream) -> io.NodeOutput:
        return io.NodeOutput(comfy.samplers.KSAMPLER(sampling.sample_spaced, {"noise_stream": noise_stream}))


class DiffBIREDMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIREDMSampler",
            **menu.search("sampler", "dpm++", "dpmpp", "edm", "sde"),
            display_name="DiffBIR EDM Sampler",
            category=menu.SAMPLING,
            description=(
                "DiffBIR's official edm_* samplers (v2.1 default: dpm++_3m_sde) for SamplerCustom with DiffBIR EDM "
                "Sigmas: ComfyUI's own k-diffusion solvers, driven with the official options, noise stream, "
                "Brownian-tree seed and timestep lookup, so a run with the same seed and noise matches the official "
                "one. SDE/ancestral solvers add texture (realism); euler/heun/dpm++_2m are deterministic."),
            inputs=[
                io.Combo.Input("solver", options=list(sampling.EDM_SOLVERS), default="dpm++_3m_sde", tooltip=(
                    "The official --sampler without 'edm_'. dpm++_3m_sde is the v2.1 default.")),
                io.Combo.Input("noise_stream", options=list(sampling.NOISE_STREAMS), default="official",
                               tooltip=NOISE_STREAM_TOOLTIP + " For SDE solvers the stream gives the Brownian "
                               "tree's seed (one randint draw), as officially."),
                io.Combo.Input("timestep_lookup", options=list(sampling.TIMESTEP_LOOKUPS), default="official_edm",
                               tooltip=(
                                   "official_edm: each evaluation uses the timestep of the nearest sigma of this "
                                   "run's schedule, as the official EDM denoiser (needs DiffBIR Model Sampling). "
                                   "nearest_1000: ComfyUI's nearest of the 1000 training timesteps. They differ "
                                   "only for dpm_2, dpm_2_a, dpm++_2s_a and dpm++_sde (mid-step evaluations).")),
                io.Float.Input("eta", default=1.0, min=0.0, max=100.0, step=0.01, tooltip=(
                    "Noise added by ancestral/SDE solvers (official --eta 1). 0 makes them deterministic "
                    "(smoother, less texture).")),
                io.Float.Input("s_noise", default=1.0, min=0.0, max=100.0, step=0.01, tooltip=(
                    "Scale of that noise (official --s_noise 1).")),
                io.Float.Input("s_churn", default=0.0, min=0.0, max=100.0, step=0.01, tooltip=(
                    "Extra noise of euler/heun/dpm_2 (official --s_churn 0). Above 0 it comes from torch's global "
                    "generator, not from the seed.")),
                io.Float.Input("s_tmin", default=0.0, min=0.0, max=10000.0, step=0.01, tooltip=(
                    "Lowest sigma s_churn applies to (official --s_tmin 0).")),
                io.Float.Input("s_tmax", default=300.0, min=0.0, max=10000.0, step=0.01, tooltip=(
                    "Highest sigma s_churn applies to (official --s_tmax 300).")),
                io.Int.Input("order", default=1, min=1, max=4, tooltip="Order of the lms solver (official --order 1)."),
            ],
            outputs=[io.Sampler.Output(tooltip="The sampler, for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, solver, noise_stream, timestep_lookup, eta, s_noise, s_churn, s_tmin, s_tmax,
                order) -> io.NodeOutput:
        guards.require_finite_settings("DiffBIR EDM Sampler", eta=eta, s_noise=s_noise, s_churn=s_churn,
                                       s_tmin=s_tmin, s_tmax=s_tmax)
        options = dict(solver=solver, noise_stream=noise_stream, timestep_lookup=timestep_lookup, eta=eta,
                       s_noise=s_noise, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, order=order)
        return io.NodeOutput(comfy.samplers.KSAMPLER(sampling.sample_edm_official, options))


class DiffBIRDDIMSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRDDIMSigmas",
            **menu.search("sigmas", "ddim", "schedule"),
            display_name="DiffBIR DDIM Sigmas",
            category=menu.SAMPLING,
            description=(
                "The timesteps of DiffBIR's official 'ddim' sampler (every 1000 // steps-th training step + 1: 4 "
                "steps -> 751, 501, 251, 1; 7 steps -> 8 timesteps 995 .. 1, as officially) as SIGMAS, then 0, for "
                "DiffBIR DDIM Sampler. The stock ddim_uniform scheduler gives the same only when steps divides "
                "1000. More steps: more detail, slower."),
            inputs=[
                io.Model.Input("model", tooltip="The model to sample (its schedule gives the sigma of each timestep)."),
                io.Int.Input("steps", default=10, min=1, max=500, tooltip="Number of steps (official default 10)."),
            ],
            outputs=[io.Sigmas.Output(tooltip="Decreasing sigmas at the official DDIM timesteps, then 0.")],
        )

    @classmethod
    def execute(cls, model, steps) -> io.NodeOutput:
        return io.NodeOutput(official_solvers.ddim_sigmas(model.get_model_object("model_sampling"), steps))


class DiffBIRDDIMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRDDIMSampler",
            **menu.search("sampler", "ddim"),
            display_name="DiffBIR DDIM Sampler",
            category=menu.SAMPLING,
            description=(
                "DiffBIR's official 'ddim' sampler (eta 0: deterministic) for SamplerCustom / SamplerCustomAdvanced "
                "with DiffBIR DDIM Sigmas. Like the official code it starts from the noise as the latent of its first "
                "timestep and ends at the first training step's noise level instead of 0, so the result equals the "
                "official one (stock ddim / euler end on the denoised estimate and scale the noise differently)."),
            inputs=[],
            outputs=[io.Sampler.Output(tooltip="The sampler, for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(comfy.samplers.KSAMPLER(official_solvers.sample_ddim))


class DiffBIRDPMSolverSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRDPMSolverSigmas",
            **menu.search("sigmas", "dpm", "dpm++_m2", "schedule"),
            display_name="DiffBIR DPM-Solver Sigmas",
            category=menu.SAMPLING,
            description=(
                "The noise levels of DiffBIR's official 'dpm++_m2' sampler (DPM-Solver++ on the continuous times "
                "linspace(1, 1/1000, steps + 1)), for DiffBIR DPM-Solver Sampler. The last one is the first "
                "training step's noise level, not 0, as officially. More steps: more detail, slower."),
            inputs=[
                io.Model.Input("model", tooltip=(
                    "The model through DiffBIR Model Sampling (its version sets the schedule).")),
                io.Int.Input("steps", default=10, min=2, max=1000, tooltip="Number of steps (official default 10)."),
            ],
            outputs=[io.Sigmas.Output(tooltip="steps + 1 decreasing sigmas.")],
        )

    @classmethod
    def execute(cls, model, steps) -> io.NodeOutput:
        return io.NodeOutput(official_solvers.dpm_solver_sigmas(model.get_model_object("model_sampling"), steps))


class DiffBIRDPMSolverSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRDPMSolverSampler",
            **menu.search("sampler", "dpm", "dpm++_m2", "dpm-solver"),
            display_name="DiffBIR DPM-Solver Sampler",
            category=menu.SAMPLING,
            description=(
                "DiffBIR's official 'dpm++_m2' sampler (DPM-Solver++ 2M, deterministic) for SamplerCustom / "
                "SamplerCustomAdvanced with DiffBIR DPM-Solver Sigmas. It evaluates the model at the official "
                "fractional timesteps, which the stock dpmpp_2m cannot, so the result equals the official one. "
                "Needs DiffBIR Model Sampling."),
            inputs=[],
            outputs=[io.Sampler.Output(tooltip="The sampler, for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(comfy.samplers.KSAMPLER(official_solvers.sample_dpm_solver))


class DiffBIRRescaleCFG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRRescaleCFG",
            **menu.search("rescale cfg", "cfg", "guidance"),
            display_name="DiffBIR Rescale CFG",
            category=menu.SAMPLING,
            description=(
                "The official --rescale_cfg: the CFG scale follows 1 + cfg * (1 - cos(pi * ((1000 - t) / "
                "1000)^5)) / 2 over the model timestep t, rising from 1 at the start (t = 999) to cfg + 1 at the "
                "end. Keeps the early, noisy steps close to the stage-1 image (fidelity) and lets the prompt act "
                "on the details (realism). Works with every sampler; CFG of 1 or less is left as it is."),
            inputs=[io.Model.Input("model", tooltip="The model to sample (after DiffBIR Model Sampling).")],
            outputs=[io.Model.Output(tooltip="The same model with the rescaled CFG.")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        return io.NodeOutput(official_solvers.with_rescaled_cfg(model))


class DiffBIRConditionNoiseAugment(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRConditionNoiseAugment",
            **menu.search("noise augmentation", "condition", "noise level"),
            display_name="DiffBIR Condition Noise Augmentation",
            category=menu.CONTROL,
            description=(
                "The official --noise_aug: noises the IRControlNet condition latent to diffusion timestep N "
                "(q_sample) in both positive and negative conditioning (the same noisy tensor, as officially). "
                "v2.1 was trained with such noise (up to 200), so a little lets the model ignore stage-1 "
                "artefacts: more realism and freedom, less fidelity to the stage-1 image. 0 = off (official default)."),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning carrying the DiffBIR IRControlNet."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning carrying the same IRControlNet."),
                io.Model.Input("model", tooltip=(
                    "The model to sample; its schedule gives the noise level of timestep N.")),
                io.Int.Input("noise_aug", default=0, min=0, max=999, tooltip=(
                    "Timestep N of the noise (official --noise_aug). Higher: the condition is trusted less.")),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, tooltip=(
                    "Seed of the noise. With official_order and the sampler's seed it reproduces an official run.")),
                io.Boolean.Input("official_order", default=True, tooltip=(
                    "On: the noise is the second latent-sized draw of the seed's stream (the official run draws the "
                    "initial noise first, then this); use the sampler's seed here and the sampler's "
                    "official_after_noise_aug stream. Off: the first draw of the seed.")),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Positive with the noised condition."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative with the same noised condition."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, model, noise_aug, seed, official_order) -> io.NodeOutput:
        if noise_aug <= 0:
            return io.NodeOutput(positive, negative)
        acp = sampling.training_alphas_cumprod(model.get_model_object("model_sampling"))

        def noise_for(latent):
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            if official_order:
                torch.randn(tuple(latent.shape), dtype=torch.float32, generator=generator)
            return torch.randn(tuple(latent.shape), dtype=torch.float32, generator=generator)

        (pos, neg), count = sampling.augment_condition([positive, negative], noise_aug, acp, noise_for)
        if count == 0:
            raise ValueError("no DiffBIR IRControlNet found in the conditioning: connect this node after "
                             "'DiffBIR Apply IRControlNet' (it noises the IRControlNet's condition latent)")
        return io.NodeOutput(pos, neg)
