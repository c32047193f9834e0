"""Golden fixtures for restoration guidance (tests/golden/guidance/), made by the official DiffBIR v2.0
code (tag v2.0.0, commit 3464638: utils/cond_fn.py, utils/sampler.py, model/cldm.py).

Run with the golden environment (tools/goldens/setup.sh), after the small random SD 2.x checkpoint
exists (it is built with ComfyUI's modules, so with the test venv):

    .venv/bin/python -c "from devkit import model_factory as m; m.sd2_checkpoint('small')"
    .venv-official/bin/python -m tools.goldens.make_guidance

What it writes:
- math.safetensors: the official guidance maths on given tensors, no diffusion: the w_mse weight map,
  loss and step (``-g_scale*3000*dL/dpred``) in rgb space, mse in rgb and latent space, batch of 2.
- step_<case>.safetensors: one ``SpacedSampler.apply_cond_fn`` (the guided pred_x0 of one step) with the
  small checkpoint's VAE: rgb w_mse (decoder back-propagation) and latent mse (posterior samples,
  recorded), repeat 2, at a middle and the last step of a 4-step schedule.
- run_<case>.safetensors: a whole guided sampling run (v2.0 SpacedSampler.sample with cond_fn, 4 steps,
  cfg 4, the v2.0 default prompts) of ControlLDM = the small checkpoint's UNet/VAE/CLIP + an IRControlNet
  with model_factory's random weights, right after torch.manual_seed(SEED): the stage-1 image, every
  random draw in order, the sampled latent and the decoded image. Cases: rgb w_mse and latent mse.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from devkit import model_factory
from tools.goldens import official

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

OUT = REPO / "tests" / "golden" / "guidance"
SEED = 231
IMAGE_SIZE = 64
STEPS = 4
CFG = 4.0
POS_PROMPT = ""
NEG_PROMPT = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"  # v2.0 default
CONTROLNET_SEED = 1  # model_factory.ircontrolnet_state_dict default

SMALL_UNET = dict(use_checkpoint=False, image_size=32, in_channels=4, model_channels=320, attention_resolutions=[1, 2],
                  num_res_blocks=1, channel_mult=[1, 2], num_head_channels=64, use_spatial_transformer=True,
                  use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, legacy=False)

# (name, g_loss, g_space, g_scale, g_repeat) of the whole runs
RUNS = (("rgb_wmse", "w_mse", "rgb", 0.05, 1), ("latent_mse", "mse", "latent", 0.01, 1))
# one-step cases: (name, g_loss, g_space, g_scale, repeat)
STEP_CASES = (("rgb_wmse", "w_mse", "rgb", 0.5, 2), ("latent_mse", "mse", "latent", 0.05, 2))


def log(*args):
    print(*args, flush=True)


def stage1_image(size: int = IMAGE_SIZE) -> torch.Tensor:
    """A natural 64x64 RGB crop (scikit-image's astronaut: face, flat background, edges) in [0,1]."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[:320, 80:400].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(img, size=(size, size), mode="area").clamp(0, 1).contiguous()


class Recorder:
    """Records every torch.randn / randn_like draw (the official code draws from the global generator)."""

    def __enter__(self):
        self.draws = []
        self._randn, self._randn_like = torch.randn, torch.randn_like

        def randn(*args, **kwargs):
            out = self._randn(*args, **kwargs)
            self.draws.append(out.detach().clone())
            return out

        def randn_like(x, *args, **kwargs):
            out = self._randn_like(x, *args, **kwargs)
            self.draws.append(out.detach().clone())
            return out

        torch.randn, torch.randn_like = randn, randn_like
        return self

    def __exit__(self, *exc):
        torch.randn, torch.randn_like = self._randn, self._randn_like


def save(name: str, tensors: dict):
    from safetensors.torch import save_file

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.safetensors"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    log(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1024} KiB)")


def guidance(loss: str, space: str, scale: float, repeat: int, t_start: int = 1001, t_stop: int = -1):
    from utils.cond_fn import MSEGuidance, WeightedMSEGuidance

    cls = WeightedMSEGuidance if loss == "w_mse" else MSEGuidance
    return cls(scale=scale, t_start=t_start, t_stop=t_stop, space=space, repeat=repeat)


# -- (a) maths only -------------------------------------------------------------------------------
def make_math():
    g = torch.Generator().manual_seed(7)
    clean = torch.cat([stage1_image(32), torch.rand(1, 3, 32, 32, generator=g)])  # batch 2: photo + noise
    target = clean * 2 - 1
    pred = (target + 0.3 * torch.randn(target.shape, generator=g)).clamp(-1.5, 1.5)
    lat_target = torch.randn(2, 4, 4, 4, generator=g)
    lat_pred = lat_target + 0.5 * torch.randn(2, 4, 4, 4, generator=g)
    out = {"rgb_target": target, "rgb_pred": pred, "latent_target": lat_target, "latent_pred": lat_pred,
           "g_scale": torch.tensor(0.37, dtype=torch.float64)}
    wmse = guidance("w_mse", "rgb", 0.37, 1)
    out["weight_map"] = wmse._get_weight((target + 1) / 2)
    delta, loss = wmse(target, pred, 500)
    out["rgb_wmse_delta"], out["rgb_wmse_loss"] = delta, torch.tensor(loss, dtype=torch.float64)
    mse = guidance("mse", "rgb", 0.37, 1)
    delta, loss = mse(target, pred, 500)
    out["rgb_mse_delta"], out["rgb_mse_loss"] = delta, torch.tensor(loss, dtype=torch.float64)
    delta, loss = mse(lat_target, lat_pred, 500)
    out["latent_mse_delta"], out["latent_mse_loss"] = delta, torch.tensor(loss, dtype=torch.float64)
    save("math", out)


# -- the official model ---------------------------------------------------------------------------
def build_cldm():
    from model.cldm import ControlLDM
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    ckpt = model_factory.sd2_checkpoint("small")
    sd = {k: v.float() for k, v in load_file(str(ckpt)).items()}
    config = OmegaConf.to_container(OmegaConf.load(official.source("v20") / "configs/inference/cldm.yaml"))
    params = config["params"]
    params["unet_cfg"] = dict(SMALL_UNET, out_channels=4)
    params["controlnet_cfg"] = dict(SMALL_UNET, hint_channels=4)
    cldm = ControlLDM(**params)
    cldm.load_pretrained_sd(sd)
    shapes = {k: tuple(v.shape) for k, v in cldm.controlnet.state_dict().items()}
    cldm.load_controlnet_from_ckpt(model_factory.random_state_dict(shapes, CONTROLNET_SEED))
    return cldm.eval()


def diffusion_betas():
    from model.gaussian_diffusion import Diffusion

    return Diffusion(linear_start=0.00085, linear_end=0.012, timesteps=1000).betas


def pad64(x: torch.Tensor) -> torch.Tensor:
    from utils.helpers import pad_to_multiples_of

    return pad_to_multiples_of(x, multiple=64)


# -- (b) one guided step ----------------------------------------------------------------------------
def make_steps(cldm):
    from utils.sampler import SpacedSampler

    sampler = SpacedSampler(diffusion_betas())
    sampler.make_schedule(STEPS)
    clean = stage1_image()
    g = torch.Generator().manual_seed(11)
    pred_x0 = torch.randn(1, 4, IMAGE_SIZE // 8, IMAGE_SIZE // 8, generator=g) * 0.8
    for name, loss, space, scale, repeat in STEP_CASES:
        cond_fn = guidance(loss, space, scale, repeat)
        cond_fn.load_target(pad64(clean) * 2 - 1)
        out = {"clean": clean, "pred_x0": pred_x0, "g_scale": torch.tensor(scale, dtype=torch.float64),
               "repeat": torch.tensor(repeat), "timesteps": torch.tensor(sampler.timesteps.astype(np.int64)),
               "posterior_mean_coef1": sampler.posterior_mean_coef1.clone()}
        for index in (2, 0):
            t = int(sampler.timesteps[index])
            torch.manual_seed(SEED + index)
            with torch.no_grad(), Recorder() as rec:
                guided = sampler.apply_cond_fn(cldm, pred_x0.clone(), torch.tensor([t]), torch.tensor([index]),
                                               cond_fn)
            out[f"index{index}_t"] = torch.tensor(t)
            out[f"index{index}_guided"] = guided
            out[f"index{index}_loss"] = torch.tensor(sampler.context["g_loss"], dtype=torch.float64)
            if rec.draws:
                out[f"index{index}_draws"] = torch.stack(rec.draws)
            log(name, index, t, float((guided - pred_x0).abs().max()), len(rec.draws))
        save(f"step_{name}", out)


# -- (c) whole guided runs --------------------------------------------------------------------------
def make_runs(cldm):
    from utils.sampler import SpacedSampler

    clean = stage1_image()
    pad_clean = pad64(clean)
    h, w = pad_clean.shape[2:]
    for name, loss, space, scale, repeat in RUNS:
        cond_fn = guidance(loss, space, scale, repeat)
        torch.manual_seed(SEED)
        with torch.no_grad(), Recorder() as rec:
            cond = cldm.prepare_condition(pad_clean, [POS_PROMPT])
            uncond = cldm.prepare_condition(pad_clean, [NEG_PROMPT])
            cond_fn.load_target(pad_clean * 2 - 1)
            x_T = torch.randn((1, 4, h // 8, w // 8), dtype=torch.float32)
            sampler = SpacedSampler(diffusion_betas())
            z = sampler.sample(model=cldm, device="cpu", steps=STEPS, batch_size=1, x_size=(4, h // 8, w // 8),
                               cond=cond, uncond=uncond, cfg_scale=CFG, cond_fn=cond_fn, x_T=x_T, progress=False)
            x = cldm.vae_decode(z)[:, :, :IMAGE_SIZE, :IMAGE_SIZE]
        out = {"clean": clean, "draws": torch.stack(rec.draws), "z": z, "x": x, "c_img": cond["c_img"],
               "g_scale": torch.tensor(scale, dtype=torch.float64), "repeat": torch.tensor(repeat),
               "steps": torch.tensor(STEPS), "cfg": torch.tensor(CFG, dtype=torch.float64)}
        # the same run without guidance (same seed): how much guidance changed it
        torch.manual_seed(SEED)
        with torch.no_grad():
            x_T = torch.randn((1, 4, h // 8, w // 8), dtype=torch.float32)
            sampler = SpacedSampler(diffusion_betas())
            out["z_unguided"] = sampler.sample(model=cldm, device="cpu", steps=STEPS, batch_size=1,
                                               x_size=(4, h // 8, w // 8), cond=cond, uncond=uncond, cfg_scale=CFG,
                                               cond_fn=None, x_T=x_T, progress=False)
        log(name, len(rec.draws), float((z - out["z_unguided"]).abs().max()))
        save(f"run_{name}", out)


def main():
    official.activate("v20")
    torch.set_num_threads(2)
    which = set(sys.argv[1:]) or {"math", "steps", "runs"}
    if "math" in which:
        make_math()
    if which & {"steps", "runs"}:
        cldm = build_cldm()
        if "steps" in which:
            make_steps(cldm)
        if "runs" in which:
            make_runs(cldm)


if __name__ == "__main__":
    main()
