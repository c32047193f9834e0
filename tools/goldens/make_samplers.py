"""Golden fixtures for the sampling area (tests/golden/samplers/), made by the official DiffBIR code.

Run with the golden environment (tools/goldens/setup.sh), after the small random SD 2.x checkpoint
exists (it is built with ComfyUI's modules, so with the test venv):

    .venv/bin/python -c "from devkit import model_factory as m; m.sd2_checkpoint('small')"
    .venv-official/bin/python -m tools.goldens.make_samplers

What it writes (all from the official `main` commit unless said):
- schedules.npz: training betas (v2, v2.1), respaced ``spaced`` tables and EDM sigma/timestep tables
  for several step counts, ``space_timesteps`` for several counts, the q_sample of --noise_aug;
- colorfix.safetensors: wavelet_reconstruction (main) and v1's adaptive_instance_normalization (v1a)
  on random images;
- tokens.json: the official OpenCLIP tokenizer's ids for a set of prompts;
- text.safetensors: the official text encoder (FrozenOpenCLIPEmbedder, penultimate) on the small
  checkpoint's CLIP-H weights for one long prompt (truncated at 77 tokens);
- run_*.safetensors: whole Pipeline.apply_cldm runs (ControlLDM = the small checkpoint's UNet/VAE/
  CLIP + an IRControlNet with model_factory's random weights) right after torch.manual_seed(SEED):
  every recorded random draw, the sampled latent, the decoded image and the colour-fixed image, at
  control strength 0 (pure UNet: tests the sampler/schedule/text path) and 1.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from devkit import model_factory
from tools.goldens import official

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

OUT = REPO / "tests" / "golden" / "samplers"
SEED = 231  # the official CLI's default seed
IMAGE_SIZE = 64
STEPS = 4
CONTROLNET_SEED = 1  # model_factory.ircontrolnet_state_dict default

SMALL_UNET = dict(use_checkpoint=False, image_size=32, in_channels=4, model_channels=320, attention_resolutions=[1, 2],
                  num_res_blocks=1, channel_mult=[1, 2], num_head_channels=64, use_spatial_transformer=True,
                  use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, legacy=False)

LONG_CAPTION = ("a weathered wooden fishing boat pulled up on a pebble beach at dawn, with coiled ropes, rusty "
                "chains, a red buoy and seagulls (two of them) standing on the gunwale & looking at the calm sea")

PROMPTS = [
    "",
    "low quality, blurry, low-resolution, noisy, unsharp, weird textures",
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - realistic "
    "maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore detailing, hyper "
    "sharpness, perfect without deformations.",
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, unreal "
    "engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg artifacts, "
    "deformed, lowres, over-smooth.",
    "A (very) beautiful [cat]:1.2, \"quoted\" text; it's 3.5 o'clock!!  Tabs\tand\nnewlines",
    "Fish &amp; chips &lt;b&gt; caf\u00e9 na\u00efve \u00c9COLE",
    "embedding:foo a photo of a dog, (masterpiece:1.3)",
    "supercalifragilisticexpialidocious antidisestablishmentarianism " * 6,
]


def log(*args):
    print(*args, flush=True)


# -- schedules ------------------------------------------------------------------------------------
def make_schedules(out: dict):
    from diffbir.model.gaussian_diffusion import Diffusion
    from diffbir.sampler.edm_sampler import EDMSampler
    from diffbir.sampler.spaced_sampler import SpacedSampler, space_timesteps

    for name, kwargs in (("v2", {}), ("v21", dict(zero_snr=True, parameterization="v"))):
        diffusion = Diffusion(linear_start=0.00085, linear_end=0.012, **kwargs)
        out[f"{name}_betas"] = np.asarray(diffusion.betas, dtype=np.float64)
        for steps in (2, 4, 10, 50):
            spaced = SpacedSampler(diffusion.betas, diffusion.parameterization, False)
            spaced.make_schedule(steps)
            out[f"{name}_spaced{steps}_timesteps"] = np.asarray(spaced.timesteps, dtype=np.int64)
            for key in ("posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance", "sqrt_alphas_cumprod",
                        "sqrt_one_minus_alphas_cumprod"):
                out[f"{name}_spaced{steps}_{key}"] = getattr(spaced, key).numpy()
            edm = EDMSampler(diffusion.betas, diffusion.parameterization, False, "edm_euler", 0, 0, 300, 1, 1, 1)
            edm.make_schedule(steps)
            out[f"{name}_edm{steps}_sigmas"] = edm.sigmas.numpy()
            out[f"{name}_edm{steps}_timesteps"] = edm.timesteps.numpy()
        # --noise_aug: q_sample of a random latent at t = 200 with given noise
        g = torch.Generator().manual_seed(5)
        x0 = torch.randn(1, 4, 8, 8, generator=g)
        noise = torch.randn(1, 4, 8, 8, generator=g)
        t = torch.full((1,), 200, dtype=torch.long)
        out[f"{name}_qsample_x0"] = x0.numpy()
        out[f"{name}_qsample_noise"] = noise.numpy()
        out[f"{name}_qsample200"] = diffusion.q_sample(x0, t, noise).numpy()
    for count in (1, 2, 3, 4, 7, 10, 25, 50, 100, 999, 1000):
        out[f"space_timesteps_{count}"] = np.array(sorted(space_timesteps(1000, str(count))), dtype=np.int64)
    out["space_timesteps_10_20_30"] = np.array(sorted(space_timesteps(1000, "10,20,30")), dtype=np.int64)
    out["space_timesteps_ddim25"] = np.array(sorted(space_timesteps(1000, "ddim25")), dtype=np.int64)


# -- samplers on an analytic model -----------------------------------------------------------------
ANALYTIC_SOLVERS = ("euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "lms", "dpm++_2s_a", "dpm++_sde", "dpm++_2m",
                    "dpm++_2m_sde", "dpm++_3m_sde")


def analytic_model(x, t, cond):
    """A cheap stand-in for ControlLDM.forward (eps or v output), nonlinear in x and t; the test
    evaluates the same formula on ComfyUI's side."""
    t = t.float().view(-1, 1, 1, 1)
    return 0.8 * torch.tanh(x) * (1.0 + t / 1000.0) + cond * (0.5 - t / 2000.0) + 0.1 * torch.cos(t / 150.0)


def make_analytic():
    """The official spaced and EDM samplers (every solver) driven by analytic_model, seeded like the
    pipeline (torch.manual_seed(SEED) then x_T), with every draw recorded."""
    from diffbir.model.gaussian_diffusion import Diffusion
    from diffbir.sampler.edm_sampler import EDMSampler
    from diffbir.sampler.spaced_sampler import SpacedSampler

    g = torch.Generator().manual_seed(3)
    cond = torch.randn(1, 4, 8, 8, generator=g)
    uncond = torch.randn(1, 4, 8, 8, generator=g)
    out = {"cond": cond, "uncond": uncond}
    for name, kwargs in (("v2", {}), ("v21", dict(zero_snr=True, parameterization="v"))):
        diffusion = Diffusion(linear_start=0.00085, linear_end=0.012, **kwargs)
        jobs = [("spaced", steps) for steps in (4, 10, 50)] + [(f"edm_{s}", 10) for s in ANALYTIC_SOLVERS]
        for sampler_type, steps in jobs:
            if sampler_type == "spaced":
                sampler = SpacedSampler(diffusion.betas, diffusion.parameterization, False)
            else:
                sampler = EDMSampler(diffusion.betas, diffusion.parameterization, False, sampler_type,
                                     0.0, 0.0, 300.0, 1.0, 1.0, 1)
            torch.manual_seed(SEED)
            with torch.no_grad(), Recorder() as rec:
                x_T = torch.randn((1, 4, 8, 8), dtype=torch.float32)
                z = sampler.sample(analytic_model, "cpu", steps, (1, 4, 8, 8), cond, uncond, 4.0, x_T=x_T,
                                   progress=False)
            key = f"{name}_{sampler_type.replace('+', 'p')}_{steps}"
            out[f"{key}_z"] = z
            if sampler_type == "spaced":
                out[f"{key}_draws"] = torch.stack(rec.draws)
            if rec.ints:
                out[f"{key}_randint"] = torch.tensor(rec.ints, dtype=torch.int64)
            log(key, float(z.abs().max()), len(rec.draws))
    return out


# -- colour fix -----------------------------------------------------------------------------------
def make_colorfix():
    from diffbir.utils.common import wavelet_reconstruction

    g = torch.Generator().manual_seed(11)
    content = torch.rand(2, 3, 40, 56, generator=g) * 1.4 - 0.2  # a decoder output may leave [0, 1]
    style = torch.nn.functional.interpolate(torch.rand(2, 3, 5, 7, generator=g), size=(40, 56), mode="bilinear")
    style = (style * 0.8 + torch.rand(2, 3, 40, 56, generator=g) * 0.2)
    tensors = {"content": content, "style": style, "wavelet": wavelet_reconstruction(content, style)}
    # v1's utils/image/align_color.py, loaded from its file (it imports only torch, PIL, torchvision).
    path = official.source("v1a") / "utils" / "image" / "align_color.py"
    spec = importlib.util.spec_from_file_location("official_v1_align_color", path)
    align_color = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(align_color)
    tensors["adain"] = align_color.adaptive_instance_normalization(content, style)
    tensors["wavelet_v1"] = align_color.wavelet_reconstruction(content, style)
    return tensors


# -- tokenizer and text encoder -------------------------------------------------------------------
def make_tokens():
    from diffbir.model.open_clip import tokenize

    prompts = PROMPTS + [f"{LONG_CAPTION}, {PROMPTS[2]}"]
    return {"prompts": prompts, "tokens": [tokenize(p)[0].tolist() for p in prompts]}


def build_cldm(sd: dict):
    from diffbir.model import ControlLDM
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(official.source("main") / "configs/inference/cldm.yaml"))
    params = config["params"]
    params["unet_cfg"] = dict(SMALL_UNET, out_channels=4)
    params["controlnet_cfg"] = dict(SMALL_UNET, hint_channels=4)
    cldm = ControlLDM(**params)
    unused, missing = cldm.load_pretrained_sd(sd)
    if missing:
        raise RuntimeError(f"the small checkpoint lacks {sorted(missing)[:5]}")
    shapes = {k: tuple(v.shape) for k, v in cldm.controlnet.state_dict().items()}
    cldm.load_controlnet_from_ckpt(model_factory.random_state_dict(shapes, CONTROLNET_SEED))
    return cldm.eval(), shapes


# -- whole runs -----------------------------------------------------------------------------------
def condition_image() -> torch.Tensor:
    g = torch.Generator().manual_seed(21)
    base = torch.rand(1, 3, IMAGE_SIZE // 8, IMAGE_SIZE // 8, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic").clamp(0, 1)
    return (smooth * 0.8 + torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) * 0.2).contiguous()


class Recorder:
    """Records every torch.randn / randn_like / randint draw, in order."""

    def __init__(self):
        self.draws, self.ints = [], []

    def __enter__(self):
        self.real = torch.randn, torch.randn_like, torch.randint

        def randn(*args, **kwargs):
            out = self.real[0](*args, **kwargs)
            self.draws.append(out.detach().clone())
            return out

        def randn_like(x, *args, **kwargs):
            out = self.real[1](x, *args, **kwargs)
            self.draws.append(out.detach().clone())
            return out

        def randint(*args, **kwargs):
            out = self.real[2](*args, **kwargs)
            self.ints.append(int(out.reshape(-1)[0]))
            return out

        torch.randn, torch.randn_like, torch.randint = randn, randn_like, randint
        return self

    def __exit__(self, *exc):
        torch.randn, torch.randn_like, torch.randint = self.real


def run(cldm, version: str, sampler: str, cfg: float, pos: str, neg: str, strength: float, noise_aug: int = 0,
        rescale_cfg: bool = False):
    from diffbir.model.gaussian_diffusion import Diffusion
    from diffbir.pipeline import Pipeline
    from diffbir.utils.common import wavelet_reconstruction

    kwargs = {} if version == "v2" else dict(zero_snr=True, parameterization="v")
    diffusion = Diffusion(linear_start=0.00085, linear_end=0.012, **kwargs)
    pipeline = Pipeline(None, cldm, diffusion, None, "cpu")
    cond_img = condition_image()
    captured = {}
    real_decode = cldm.vae_decode

    def vae_decode(z, *args, **kw):
        captured["z"] = z.detach().clone()
        return real_decode(z, *args, **kw)

    cldm.vae_decode = vae_decode
    real_encode = cldm.prepare_condition

    def prepare_condition(*args, **kw):
        c = real_encode(*args, **kw)
        captured.setdefault("c_img", c["c_img"].detach().clone())
        return c

    cldm.prepare_condition = prepare_condition
    try:
        torch.manual_seed(SEED)
        with torch.no_grad(), Recorder() as rec:
            x = pipeline.apply_cldm(cond_img, STEPS, strength, False, 256, False, 256, False, 512, 256, pos, neg, cfg,
                                    "noise", sampler, noise_aug, rescale_cfg, 0.0, 0.0, 300.0, 1.0, 1.0, 1)
            fixed = wavelet_reconstruction((x + 1) / 2, cond_img)
    finally:
        cldm.vae_decode = real_decode
        cldm.prepare_condition = real_encode
    out = {"cond_img": cond_img, "z": captured["z"], "decoded": x.detach(), "color_fixed": fixed.detach(),
           "c_img": captured["c_img"], "draws": torch.stack(rec.draws)}
    if rec.ints:
        out["randint"] = torch.tensor(rec.ints, dtype=torch.int64)
    return out


def main():
    from safetensors.torch import load_file, save_file

    parts = set(sys.argv[1:]) or {"schedules", "analytic", "colorfix", "tokens", "text", "runs"}
    if any(p.startswith("run_") for p in parts):
        parts.add("runs")

    official.activate("main")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    if "schedules" in parts:
        schedules = {}
        make_schedules(schedules)
        np.savez_compressed(OUT / "schedules.npz", **schedules)
        log("schedules.npz", len(schedules))
    if "analytic" in parts:
        save_file({k: v.contiguous() for k, v in make_analytic().items()}, str(OUT / "analytic.safetensors"))
        log("analytic.safetensors")
    if "colorfix" in parts:
        save_file({k: v.contiguous() for k, v in make_colorfix().items()}, str(OUT / "colorfix.safetensors"))
        log("colorfix.safetensors")
    tokens = make_tokens()
    if "tokens" in parts:
        (OUT / "tokens.json").write_text(json.dumps(tokens, indent=0, ensure_ascii=True) + "\n")
        log("tokens.json", len(tokens["prompts"]))
    if not parts & {"text", "runs"}:
        return

    checkpoint = model_factory.CACHE / f"sd2-small-seed0-float16-v{model_factory.FACTORY_VERSION}.safetensors"
    if not checkpoint.exists():
        raise SystemExit(f"missing {checkpoint}: build it first (see this script's docstring)")
    cldm, controlnet_shapes = build_cldm(load_file(str(checkpoint)))
    log("ControlLDM built", sum(p.numel() for p in cldm.parameters()))

    if "text" in parts:
        long_prompt = tokens["prompts"][-1]
        with torch.no_grad():
            c_txt = cldm.clip.encode([long_prompt])
        meta = {"prompt": long_prompt, "checkpoint": checkpoint.name}
        save_file({"c_txt": c_txt.contiguous()}, str(OUT / "text.safetensors"), metadata=meta)
        log("text.safetensors")
    if "runs" not in parts:
        return

    neg_v2 = PROMPTS[1]
    pos_v21, neg_v21 = PROMPTS[2], PROMPTS[3]
    # name -> version, sampler, cfg, positive, negative, noise_aug, rescale_cfg, control strengths
    runs = {
        "run_v2_spaced": ("v2", "spaced", 4.0, "", neg_v2, 0, False, (0.0, 1.0)),
        "run_v21_edm_euler": ("v2.1", "edm_euler", 6.0, pos_v21, neg_v21, 0, False, (0.0, 1.0)),
        "run_v21_edm_dpmpp_3m_sde": ("v2.1", "edm_dpm++_3m_sde", 6.0, f"{LONG_CAPTION}, {pos_v21}", neg_v21, 0, False,
                                     (0.0, 1.0)),
        "run_v21_noise_aug": ("v2.1", "edm_euler", 6.0, pos_v21, neg_v21, 200, False, (1.0,)),
        "run_v2_ddim": ("v2", "ddim", 4.0, "", neg_v2, 0, False, (1.0,)),
        "run_v21_ddim_rescale_cfg": ("v2.1", "ddim", 6.0, pos_v21, neg_v21, 0, True, (1.0,)),
        "run_v2_dpmpp_m2": ("v2", "dpm++_m2", 4.0, "", neg_v2, 0, False, (1.0,)),
        "run_v21_dpmpp_m2_rescale_cfg": ("v2.1", "dpm++_m2", 6.0, pos_v21, neg_v21, 0, True, (1.0,)),
        "run_v21_edm_euler_rescale_cfg": ("v2.1", "edm_euler", 6.0, pos_v21, neg_v21, 0, True, (1.0,)),
    }
    chosen = {p for p in parts if p.startswith("run_")}  # e.g. `make_samplers.py runs run_v2_ddim`: only that one
    for name, (version, sampler, cfg, pos, neg, noise_aug, rescale_cfg, strengths) in runs.items():
        if chosen and name not in chosen:
            continue
        tensors = {}
        for strength in strengths:
            result = run(cldm, version, sampler, cfg, pos, neg, strength, noise_aug, rescale_cfg)
            tag = f"s{int(strength)}"
            for key in ("z", "decoded", "color_fixed"):
                tensors[f"{key}_{tag}"] = result[key]
            if "randint" in result:  # torchsde's internal draws come from its own generators
                result["draws"] = result["draws"][:1]
            for key in ("cond_img", "c_img", "draws", "randint"):
                if key in result:
                    tensors[key] = result[key]
        meta = {"version": version, "sampler": sampler, "cfg": str(cfg), "steps": str(STEPS), "seed": str(SEED),
                "positive": pos, "negative": neg, "noise_aug": str(noise_aug), "rescale_cfg": str(rescale_cfg),
                "checkpoint": checkpoint.name,
                "controlnet_seed": str(CONTROLNET_SEED), "commit": official.COMMITS["main"],
                "controlnet_shapes": json.dumps(controlnet_shapes)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / f"{name}.safetensors"), metadata=meta)
        log(name, {k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
