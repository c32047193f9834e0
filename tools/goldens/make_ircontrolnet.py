"""Golden fixtures for the IRControlNet: the official ControlLDM (main 3f8b530,
``diffbir/model/cldm.py`` with ``configs/inference/cldm.yaml``) run on small random weights.

Run with the golden environment: ``.venv-official/bin/python -m tools.goldens.make_ircontrolnet``.

The UNet/ControlNet config is cldm.yaml with the sizes of devkit/model_factory.py's "small" variant
(model_channels 320, channel_mult [1, 2], num_res_blocks 1, attention at both levels, transformer
depth 1, context 1024, num_head_channels 64); the VAE is cldm.yaml's. Weights are exactly the ones
the tests load into ComfyUI: the UNet and VAE from ``model_factory.sd2_checkpoint("small")`` (fp16
values, used in fp32 on both sides) and the IRControlNet from ``ircontrolnet_file("small")``. The text
encoder is not part of these comparisons (the context tensor is given), so it is built with a tiny
tower to save memory; its weights are unused.

Writes tests/golden/ircontrolnet/:
- condition.safetensors: a stage-1 image (1,3,40,72) in [0,1] and the official condition
  ``vae_encode(pad64(image)*2-1, sample=False)`` = posterior mode x 0.18215, (1,4,8,16).
- residuals.safetensors: x_t, t, text contexts, strength and the official control residuals (after
  control_scales) for one case, in the official order (zero convs by input block, then middle).
- eps.safetensors: x_t, t, contexts, strength and the official ControlLDM output (eps) for four
  cases (t 999/750/500/250/1, batch 1 and 2, strength 0.5, 1 and 2).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from tools.goldens import official

REPO = Path(__file__).resolve().parents[2]

OUT = REPO / "tests" / "golden" / "ircontrolnet"
VERSION = "main"


def build_test_weights() -> tuple[Path, Path]:
    """The test checkpoints, built (or found in the cache) by model_factory in the project's venv."""
    code = ("from devkit import model_factory as m; "
            "print(m.sd2_checkpoint('small')); print(m.ircontrolnet_file('small', fmt='safetensors'))")
    out = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()
    return Path(out[-2]), Path(out[-1])


def build_official_cldm():
    from omegaconf import OmegaConf

    root = official.activate(VERSION)
    from diffbir.model.cldm import ControlLDM

    cfg = OmegaConf.load(root / "configs" / "inference" / "cldm.yaml")
    params = OmegaConf.to_container(cfg.params, resolve=True)
    for key in ("unet_cfg", "controlnet_cfg"):
        params[key].update(channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[1, 2], use_checkpoint=False)
    params["clip_cfg"]["vision_cfg"].update(layers=1, width=64, head_width=32, image_size=28)
    params["clip_cfg"]["text_cfg"].update(layers=2, width=64, heads=1)
    params["clip_cfg"]["embed_dim"] = 64
    return ControlLDM(**params).eval(), params


def main() -> None:
    from safetensors.torch import load_file, save_file

    torch.set_grad_enabled(False)
    sd_path, irc_path = build_test_weights()
    cldm, params = build_official_cldm()
    # the text encoder stays out (its tiny stand-in has other shapes; the context is given)
    sd = {k: v.float() for k, v in load_file(str(sd_path)).items() if not k.startswith("cond_stage_model.")}
    unused, missing = cldm.load_pretrained_sd(sd)
    missing_unet_vae = sorted(k for k in missing if not k.startswith("cond_stage_model."))
    assert not missing_unet_vae, missing_unet_vae
    cldm.load_controlnet_from_ckpt({k: v.float() for k, v in load_file(str(irc_path)).items()})

    meta = {"official_commit": official.COMMITS[VERSION], "config": json.dumps(
        {k: params[k] for k in ("unet_cfg", "controlnet_cfg")}), "weights": f"{sd_path.name} + {irc_path.name}"}
    OUT.mkdir(parents=True, exist_ok=True)

    # 1. the condition: pad to a multiple of 64 (untiled official path), encode, posterior mode x 0.18215
    g = torch.Generator().manual_seed(20)
    low = torch.rand(1, 3, 5, 9, generator=g)
    image = (torch.nn.functional.interpolate(low, size=(40, 72), mode="bilinear") * 0.8
             + torch.rand(1, 3, 40, 72, generator=g) * 0.2).clamp(0, 1)
    padded = torch.nn.functional.pad(image, (0, (-72) % 64, 0, (-40) % 64))
    c_img = cldm.vae_encode(padded * 2 - 1, sample=False)
    save_file({"image": image.contiguous(), "c_img": c_img.contiguous()}, str(OUT / "condition.safetensors"),
              metadata=meta)

    # 2. residuals and model output for given x_t, t, condition and text context. Contexts are drawn
    # in fp16 (stored so, used in fp32 on both sides) to keep the files small.
    gen = torch.Generator().manual_seed(21)
    contexts = torch.randn(2, 77, 1024, generator=gen).half()

    def case(batch, t_values, strength, context_index, width, seed):
        gen = torch.Generator().manual_seed(seed)
        x_t = torch.randn(batch, 4, c_img.shape[-2], width, generator=gen)
        context = contexts[context_index].float()
        t = torch.tensor(t_values, dtype=torch.long)
        cond = {"c_txt": context, "c_img": c_img[..., :width].expand(batch, -1, -1, -1)}
        cldm.control_scales = [strength] * 13
        control = cldm.controlnet(x=x_t, hint=cond["c_img"], timesteps=t, context=context)
        control = [c * s for c, s in zip(control, cldm.control_scales)]
        eps = cldm(x_t, t, cond)
        inputs = dict(x_t=x_t, t=t, context_index=torch.tensor(context_index), strength=torch.tensor(strength))
        return inputs, control, eps

    # the residuals of one case, on the left 8 latent columns of the condition (files stay small)
    inputs, control, eps = case(1, [500], 1.0, [0], 8, seed=22)
    tensors = dict(inputs, contexts=contexts[:1].contiguous(), eps=eps)
    tensors.update({f"residual_{i}": r.contiguous() for i, r in enumerate(control)})
    save_file(tensors, str(OUT / "residuals.safetensors"), metadata=dict(meta, residuals=str(len(control))))

    tensors = {"contexts": contexts}
    cases = {"a": (1, [999], 1.0, [0], 16, 23), "b": (2, [500, 1], 0.5, [0, 1], 16, 24),
             "c": (1, [1], 1.0, [1], 16, 25), "d": (2, [250, 750], 2.0, [1, 0], 16, 26)}
    for name, args in cases.items():
        inputs, _, eps = case(*args)
        tensors.update({f"{name}.{k}": v for k, v in inputs.items()})
        tensors[f"{name}.eps"] = eps
    save_file(tensors, str(OUT / "eps.safetensors"), metadata=meta)
    for f in sorted(OUT.glob("*.safetensors")):
        print(f"{f.relative_to(REPO)}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
