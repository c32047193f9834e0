"""The official DiffBIR defaults per version and task, in one table. Plain data: every part of the pack
(stage-1 size rules, preset loader, prompts, example workflows) reads it; nothing else hard-codes them.

Read from the official code: ``diffbir/inference/{bsr,bfr,bid,unaligned_bfr}_loop.py``,
``pretrained_models.py``, ``pipeline.py`` and ``inference.py`` at v2.1.0 / main, v2.0.0's
``inference.py``, and ``inference.py`` of the v1 release 7bd5675 (see docs/stage1.md, docs/samplers.md).

Per version (``VERSION_DEFAULTS``): the SD checkpoint (a key of ``weights.CATALOGUE``), whether it
needs v-prediction with zero terminal SNR, the official sampler, steps, cfg and prompts.
Per version and task (``PRESETS``):
- ``cleaner``: the stage-1 weights (catalogue key); ``background_cleaner`` for faces in the wild;
- ``stage1``: which stage-1 size rules the official pipeline applies (see ``stage1.RULES``):
  ``swinir`` (SwinIRPipeline), ``bsrnet`` (BSRNetPipeline), ``scunet`` (SCUNetPipeline) or
  ``v1_release`` (the 7bd5675 inference.py);
- ``ircontrolnet``: the IRControlNet weights (catalogue key);
- ``upscale``: the ``--upscale`` of the official README command for that task.
"""

from __future__ import annotations

from dataclasses import dataclass

V21_POSITIVE = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - realistic "
    "maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore detailing, hyper "
    "sharpness, perfect without deformations.")
V21_NEGATIVE = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, unreal "
    "engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg artifacts, "
    "deformed, lowres, over-smooth.")
V2_NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"

# The model generations (what the preset loader and the prompt node offer) and the stage-1 variants.
VERSIONS = ("v1", "v2", "v2.1")
STAGE1_VERSIONS = ("v2.1", "v2", "v1", "v1 release")
PRESET_VERSIONS = ("v1", "v2", "v2.1", "v1 release")  # the v1 release: v1 models, its own stage-1 rules
TASKS = ("sr", "face", "denoise", "unaligned_face")
STAGE1_TASKS = ("sr", "face", "denoise")


@dataclass(frozen=True)
class VersionDefaults:
    checkpoint: str  # catalogue key of the SD 2.1 weights
    v_prediction_zsnr: bool
    sampler: str  # the official sampler, in words
    sampler_name: str  # the official sampler's name in the official CLI
    steps: int
    cfg: float
    positive: str = ""
    negative: str = ""


VERSION_DEFAULTS = {
    "v1": VersionDefaults("sd21_base_safetensors", False, "spaced DDPM, 50 steps (v1 code)", "spaced", 50, 1.0),
    "v2": VersionDefaults("sd21_base_safetensors", False, "spaced DDPM, 50 steps (v2.0 code)", "spaced", 50, 4.0,
                          negative=V2_NEGATIVE),
    "v2.1": VersionDefaults("sd21_zsnr", True, "EDM DPM++ 3M SDE, 10 steps (v2.1 CLI; its README commands use cfg 8)",
                            "edm_dpm++_3m_sde", 10, 6.0, positive=V21_POSITIVE, negative=V21_NEGATIVE),
}


@dataclass(frozen=True)
class Preset:
    version: str
    task: str
    cleaner: str  # catalogue keys
    ircontrolnet: str
    stage1: str  # stage-1 size rules of the official pipeline
    upscale: float
    background_cleaner: str | None = None  # unaligned_face: the cleaner of the whole picture
    background_stage1: str | None = None
    face_files: tuple[str, ...] = ()  # unaligned_face: detector and parser

    @property
    def model_version(self) -> str:
        """The model generation (schedule, IRControlNet, prompts): the v1 release runs v1's models with
        its own stage-1 rules."""
        return "v1" if self.version == "v1 release" else self.version

    @property
    def defaults(self) -> VersionDefaults:
        return VERSION_DEFAULTS[self.model_version]

    # the per-version values, as attributes of the row
    checkpoint = property(lambda self: self.defaults.checkpoint)
    v_prediction_zsnr = property(lambda self: self.defaults.v_prediction_zsnr)
    sampler = property(lambda self: self.defaults.sampler)
    steps = property(lambda self: self.defaults.steps)
    cfg = property(lambda self: self.defaults.cfg)
    positive = property(lambda self: self.defaults.positive)
    negative = property(lambda self: self.defaults.negative)

    @property
    def name(self) -> str:
        return f"{self.version} {self.task}"

    def files(self) -> list[str]:
        """Catalogue keys of every file this preset loads."""
        keys = [self.checkpoint, self.ircontrolnet, self.cleaner]
        if self.background_cleaner:
            keys.append(self.background_cleaner)
        keys.extend(self.face_files)
        return list(dict.fromkeys(keys))


_FACES = ("retinaface_resnet50", "parsenet")
PRESETS: dict[tuple[str, str], Preset] = {(p.version, p.task): p for p in (
    Preset("v2.1", "sr", "swinir_realesrgan", "v21", "swinir", 4.0),
    Preset("v2.1", "face", "swinir_face", "v21", "swinir", 1.0),
    Preset("v2.1", "denoise", "swinir_realesrgan", "v21", "swinir", 1.0),
    Preset("v2.1", "unaligned_face", "swinir_face", "v21", "swinir", 4.0, "swinir_realesrgan", "swinir", _FACES),
    Preset("v2", "sr", "bsrnet", "v2", "bsrnet", 4.0),
    Preset("v2", "face", "swinir_face", "v2", "swinir", 1.0),
    Preset("v2", "denoise", "scunet_psnr", "v2", "scunet", 1.0),
    Preset("v2", "unaligned_face", "swinir_face", "v2", "swinir", 4.0, "bsrnet", "bsrnet", _FACES),
    Preset("v1", "sr", "swinir_general", "v1_general", "swinir", 4.0),
    Preset("v1", "face", "swinir_face", "v1_face", "swinir", 1.0),
    Preset("v1", "denoise", "swinir_general", "v1_general", "swinir", 1.0),
    # The v1 release (commit 7bd5675, inference.py): SwinIR stage 1 with its own resize rules (ceil,
    # PIL bicubic to 512). Its "full" checkpoints hold ControlNet and SwinIR.
    Preset("v1 release", "sr", "swinir_general", "v1_general", "v1_release", 4.0),
    Preset("v1 release", "face", "swinir_face", "v1_face", "v1_release", 1.0),
    Preset("v1 release", "denoise", "swinir_general", "v1_general", "v1_release", 1.0),
)}

# Stage-1 cleaner tiling defaults of the official CLI (--cleaner_tiled off, 512 / 256).
CLEANER_TILE_SIZE = 512
CLEANER_TILE_STRIDE = 256
# Stage 1 output must be at least this on both sides (Pipeline.run asserts it); SD 2.1 works at 512.
MIN_SHORT_SIDE = 512


def preset_for(version: str, task: str) -> Preset:
    try:
        return PRESETS[(version, task)]
    except KeyError:
        if version.startswith("v1") and task == "unaligned_face":
            raise ValueError("DiffBIR v1 has no unaligned-face mode (the official code raises for it too); "
                             "use v2 or v2.1, or task 'face' with an aligned 512x512 face") from None
        raise ValueError(f"no DiffBIR preset for version {version!r} and task {task!r}; versions: "
                         f"{', '.join(STAGE1_VERSIONS)}; tasks: {', '.join(TASKS)}") from None


def preset(name: str) -> Preset:
    """The row for a name such as "v2.1 sr" (version, space, task)."""
    version, _, task = name.rpartition(" ")
    try:
        return PRESETS[(version, task)]
    except KeyError:
        raise KeyError(f"unknown DiffBIR preset {name!r}; known: {', '.join(preset_names())}") from None


def preset_names() -> list[str]:
    """The stage-1 node's presets: every version and task with one cleaner (faces in the wild has two)."""
    return [p.name for p in PRESETS.values() if p.task in STAGE1_TASKS]
