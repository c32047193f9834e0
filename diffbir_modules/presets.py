"""The official DiffBIR defaults per version and task, in one table (read from the official code:
``diffbir/inference/{bsr,bfr,bid}_loop.py``, ``pretrained_models.py``, ``pipeline.py`` at v2.1.0 / main,
and ``inference.py`` of the v1 release 7bd5675). Plain data: every area of the pack reads its columns
from here, nothing else hard-codes them. Add columns for your area; keep values literal.

Columns
- ``cleaner``: the stage-1 weights file the official code downloads (into ComfyUI's upscale_models).
- ``stage1``: which stage-1 size rules the official pipeline applies (see ``stage1.RULES``):
  ``swinir`` (SwinIRPipeline), ``bsrnet`` (BSRNetPipeline), ``scunet`` (SCUNetPipeline) or
  ``v1_release`` (the 7bd5675 inference.py).
- ``controlnet``: the IRControlNet weights; ``sd``: the Stable Diffusion 2.1 weights.
- ``upscale``: the ``--upscale`` of the README command for that task (the CLI default is 4.0).
"""

from __future__ import annotations

VERSIONS = ("v2.1", "v2", "v1", "v1 release")
TASKS = ("sr", "face", "denoise")

SD21 = "v2-1_512-ema-pruned.ckpt"
SD21_ZSNR = "sd2.1-base-zsnr-laionaes5.ckpt"

PRESETS: dict[tuple[str, str], dict] = {
    ("v2.1", "sr"): dict(cleaner="realesrgan_s4_swinir_100k.pth", stage1="swinir", controlnet="DiffBIR_v2.1.pt",
                         sd=SD21_ZSNR, upscale=4.0),
    ("v2.1", "face"): dict(cleaner="face_swinir_v1.ckpt", stage1="swinir", controlnet="DiffBIR_v2.1.pt",
                           sd=SD21_ZSNR, upscale=1.0),
    ("v2.1", "denoise"): dict(cleaner="realesrgan_s4_swinir_100k.pth", stage1="swinir",
                              controlnet="DiffBIR_v2.1.pt", sd=SD21_ZSNR, upscale=1.0),
    ("v2", "sr"): dict(cleaner="BSRNet.pth", stage1="bsrnet", controlnet="v2.pth", sd=SD21, upscale=4.0),
    ("v2", "face"): dict(cleaner="face_swinir_v1.ckpt", stage1="swinir", controlnet="v2.pth", sd=SD21, upscale=1.0),
    ("v2", "denoise"): dict(cleaner="scunet_color_real_psnr.pth", stage1="scunet", controlnet="v2.pth", sd=SD21,
                            upscale=1.0),
    ("v1", "sr"): dict(cleaner="general_swinir_v1.ckpt", stage1="swinir", controlnet="v1_general.pth", sd=SD21,
                       upscale=4.0),
    ("v1", "face"): dict(cleaner="face_swinir_v1.ckpt", stage1="swinir", controlnet="v1_face.pth", sd=SD21,
                         upscale=1.0),
    ("v1", "denoise"): dict(cleaner="general_swinir_v1.ckpt", stage1="swinir", controlnet="v1_general.pth", sd=SD21,
                            upscale=1.0),
    # The v1 release (commit 7bd5675, inference.py): one general and one face model, SwinIR stage 1,
    # its own resize rules (ceil, PIL bicubic to 512). Its "full" checkpoints hold ControlNet and SwinIR.
    ("v1 release", "sr"): dict(cleaner="general_swinir_v1.ckpt", stage1="v1_release", controlnet="v1_general.pth",
                               sd=SD21, upscale=4.0),
    ("v1 release", "face"): dict(cleaner="face_swinir_v1.ckpt", stage1="v1_release", controlnet="v1_face.pth",
                                 sd=SD21, upscale=1.0),
    ("v1 release", "denoise"): dict(cleaner="general_swinir_v1.ckpt", stage1="v1_release",
                                    controlnet="v1_general.pth", sd=SD21, upscale=1.0),
}

# Stage-1 cleaner tiling defaults of the official CLI (--cleaner_tiled off, 512 / 256).
CLEANER_TILE_SIZE = 512
CLEANER_TILE_STRIDE = 256
# Stage 1 output must be at least this on both sides (Pipeline.run asserts it); SD 2.1 works at 512.
MIN_SHORT_SIDE = 512


def preset_name(version: str, task: str) -> str:
    return f"{version} {task}"


def preset(name: str) -> dict:
    """The row for a name such as "v2.1 sr" (version, space, task)."""
    version, _, task = name.rpartition(" ")
    try:
        return PRESETS[(version, task)]
    except KeyError:
        raise KeyError(f"unknown DiffBIR preset {name!r}; known: {', '.join(preset_names())}") from None


def preset_names() -> list[str]:
    return [preset_name(v, t) for v, t in PRESETS]
