"""The weights catalogue: every published file this pack can use, where ComfyUI keeps it, where it is
published, and how to check a download.

Sizes and sha256 values are only recorded where a public source states them (each entry names its
source). Where none was found the value is None and a download of that file is reported as
"unverified" instead of pretending otherwise. Nothing here was computed from a download: no machine
that wrote this table could fetch the files.

Hashes marked ``source_kind="mirror"`` come from re-uploads of the same file name elsewhere on
Hugging Face (Git LFS pointers), not from the original publisher; a download from the original URL
that does not match is still refused, and the error says which source the expected value came from.

``PRESETS`` maps (version, task) to the files and the official defaults of that combination
(diffbir.md sections 1.3, 2.3 and 3.2); the preset loader node reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SD_LICENSE = "CreativeML Open RAIL++-M (Stability AI); accept its use restrictions before downloading"
DIFFBIR_LICENSE = "Apache-2.0 (DiffBIR, XPixelGroup; Hugging Face repo lxq007/DiffBIR-v2 is tagged apache-2.0)"
KAIR_LICENSE = "KAIR release asset (cszn/KAIR, MIT licence)"
FACEXLIB_LICENSE = ("facexlib release asset (facexlib: MIT; RetinaFace from biubug6/Pytorch_Retinaface, MIT; "
                    "ParseNet from chaofengc/PSFRGAN - check its licence for your use)")

HF = "https://huggingface.co"
GH = "https://github.com"


@dataclass(frozen=True)
class WeightFile:
    key: str
    filename: str
    folder: str  # ComfyUI model folder name (folder_paths), e.g. "checkpoints"
    urls: tuple[str, ...]  # tried in order; every download is checked against sha256/size below
    used_by: str
    license: str
    size: int | None = None  # exact bytes, from `source`
    sha256: str | None = None  # lower-case hex, from `source`
    source: str = ""  # where size/sha256 were published
    source_kind: str = "publisher"  # "publisher" (the original repo) or "mirror" (an identical re-upload)
    approx_size: str = ""  # as shown on the publisher's page when the exact size is not known
    alternatives: tuple[str, ...] = field(default=())  # catalogue keys of files that can stand in for this one

    @property
    def url(self) -> str:
        return self.urls[0]

    def size_text(self) -> str:
        if self.size is not None:
            return _human(self.size)
        return self.approx_size or "size not published"

    def verification(self) -> str:
        """What a download of this file is checked against."""
        if self.sha256:
            return "sha256"
        if self.size is not None:
            return "size"
        return "unverified"


def _human(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


_SD21_MIRROR = f"{HF}/Manojb/stable-diffusion-2-1-base/resolve/main"
_SD21_ORIGINAL = f"{HF}/stabilityai/stable-diffusion-2-1-base/resolve/main"

CATALOGUE: dict[str, WeightFile] = {w.key: w for w in (
    # --- Stable Diffusion 2.1 base (v1, v2) -------------------------------------------------------
    # The original stabilityai/stable-diffusion-2-1-base repository went offline in late 2025 (reported in
    # jtscmw01/ComfyUI-DiffBIR#20, cswry/OSEDiff#77, XPixelGroup/HYPIR#58). Manojb/stable-diffusion-2-1-base
    # is a clone of it; the sha256 below (from Stability AI's own commit) decides whether a mirror's file is
    # the real one.
    WeightFile(
        key="sd21_base_safetensors", filename="v2-1_512-ema-pruned.safetensors", folder="checkpoints",
        urls=(f"{_SD21_MIRROR}/v2-1_512-ema-pruned.safetensors", f"{_SD21_ORIGINAL}/v2-1_512-ema-pruned.safetensors"),
        used_by="SD 2.1 base for DiffBIR v1 and v2 (same weights as the .ckpt, safetensors format)",
        license=SD_LICENSE, size=5214604494,
        sha256="df955bdf6b682338ea9b55dfc0d8f3475aadf4836e204893d28b82355e0956d2",
        # LFS pointer of glowforge-dev/stable-diffusion-2-1-img2img-jonathan2 ("Duplicate from
        # stabilityai/stable-diffusion-2-1-base", a Hugging Face duplicate keeps the LFS object).
        source="Git LFS pointer of a Hugging Face duplicate of stabilityai/stable-diffusion-2-1-base",
        source_kind="mirror", alternatives=("sd21_base",)),
    WeightFile(
        key="sd21_base", filename="v2-1_512-ema-pruned.ckpt", folder="checkpoints",
        urls=(f"{_SD21_MIRROR}/v2-1_512-ema-pruned.ckpt", f"{_SD21_ORIGINAL}/v2-1_512-ema-pruned.ckpt"),
        used_by="SD 2.1 base for DiffBIR v1 and v2 (the file the official code downloads)",
        license=SD_LICENSE, size=5214865159,
        sha256="88ecb782561455673c4b78d05093494b9c539fc6bfc08f3a9a4a0dd7b0b10f36",
        source="stabilityai/stable-diffusion-2-1-base commit 597c526 ('re-add original weights'), Git LFS pointer",
        alternatives=("sd21_base_safetensors",)),
    # --- DiffBIR's own SD 2.1 (v2.1): v-prediction, zero terminal SNR ------------------------------------
    WeightFile(
        key="sd21_zsnr", filename="sd2.1-base-zsnr-laionaes5.ckpt", folder="checkpoints",
        urls=(f"{HF}/lxq007/DiffBIR-v2/resolve/main/sd2.1-base-zsnr-laionaes5.ckpt",),
        used_by="SD 2.1 base, v-prediction + zero-terminal-SNR, for DiffBIR v2.1",
        license=("hosted in lxq007/DiffBIR-v2 (tagged apache-2.0); the name matches ByteDance's "
                 "sd2.1-base-zsnr-laionaes5 (CreativeML Open RAIL++-M)"),
        approx_size="5.16 GB", source="lxq007/DiffBIR-v2 file list (size only, rounded)"),
    # --- IRControlNets (models/diffbir) ---------------------------------------------------------------
    WeightFile(
        key="v1_general", filename="v1_general.pth", folder="diffbir",
        urls=(f"{HF}/lxq007/DiffBIR-v2/resolve/main/v1_general.pth",),
        used_by="IRControlNet of DiffBIR v1, general images (sr, denoise)", license=DIFFBIR_LICENSE),
    WeightFile(
        key="v1_face", filename="v1_face.pth", folder="diffbir",
        urls=(f"{HF}/lxq007/DiffBIR-v2/resolve/main/v1_face.pth",),
        used_by="IRControlNet of DiffBIR v1, aligned faces", license=DIFFBIR_LICENSE),
    WeightFile(
        key="v2", filename="v2.pth", folder="diffbir",
        urls=(f"{HF}/lxq007/DiffBIR-v2/resolve/main/v2.pth",),
        used_by="IRControlNet of DiffBIR v2 (every task)", license=DIFFBIR_LICENSE,
        sha256="c023992d042a4e966a335b084fae7a4e38b3ac3d0df819398c839ff371ebaba5",
        source="camenduru/DiffBIR-v2 ('thanks to lxq007', a copy of lxq007/DiffBIR-v2), Git LFS pointer",
        source_kind="mirror", approx_size="1.45 GB"),
    WeightFile(
        key="v21", filename="DiffBIR_v2.1.pt", folder="diffbir",
        urls=(f"{HF}/lxq007/DiffBIR-v2/resolve/main/DiffBIR_v2.1.pt",),
        used_by="IRControlNet of DiffBIR v2.1 (every task)", license=DIFFBIR_LICENSE,
        sha256="49477de737be9028ac2d9352cf45633324a0090afde57a7aa358321dd6a1de53",
        source="lxq007/DiffBIR-v2 file page (commit 2bdf764), Git LFS details", approx_size="1.45 GB"),
    # --- Stage-1 cleaners (models/upscale_models, loaded by spandrel like any upscale model) -------------
    WeightFile(
        key="swinir_general", filename="general_swinir_v1.ckpt", folder="upscale_models",
        urls=(f"{HF}/lxq007/DiffBIR/resolve/main/general_swinir_v1.ckpt",),
        used_by="stage-1 SwinIR of DiffBIR v1 (sr, denoise)", license=DIFFBIR_LICENSE, size=90208287,
        sha256="577b8f84815d324e5ee17ef3c85d8bc9b7ebd05b20a6d61a5452b66e7e24dcaf",
        source="lxq007/DiffBIR commit e1e63aa, Git LFS pointer"),
    WeightFile(
        key="swinir_face", filename="face_swinir_v1.ckpt", folder="upscale_models",
        urls=(f"{HF}/lxq007/DiffBIR/resolve/main/face_swinir_v1.ckpt",),
        used_by="stage-1 SwinIR for faces, every version", license=DIFFBIR_LICENSE, size=90204233,
        sha256="62fb6605702e6ad35712299a23cc19ea7cd2fb4bbd50a8080fcefa8ad2620c71",
        source="lxq007/DiffBIR commit 0f35fd3, Git LFS pointer"),
    WeightFile(
        key="swinir_realesrgan", filename="realesrgan_s4_swinir_100k.pth", folder="upscale_models",
        urls=(f"{HF}/lxq007/DiffBIR-v2/resolve/main/realesrgan_s4_swinir_100k.pth",),
        used_by="stage-1 SwinIR of DiffBIR v2.1 (sr, denoise, unaligned-face background)",
        license=DIFFBIR_LICENSE, approx_size="90.2 MB", source="lxq007/DiffBIR-v2 file list (size only, rounded)"),
    WeightFile(
        key="bsrnet", filename="BSRNet.pth", folder="upscale_models",
        urls=(f"{GH}/cszn/KAIR/releases/download/v1.0/BSRNet.pth",),
        used_by="stage-1 BSRNet (x4) of DiffBIR v2 (sr, unaligned-face background)", license=KAIR_LICENSE,
        sha256="fa633d80ff4db5a546740ae8e3baebe925fc84d3c03e3e9002493acc5e88c3ec",
        source="two independent Hugging Face re-uploads (uwg/upscaler ESRGAN/BSRNet.pth, the DiffIR2VR space)",
        source_kind="mirror", approx_size="67 MB"),
    WeightFile(
        key="scunet_psnr", filename="scunet_color_real_psnr.pth", folder="upscale_models",
        urls=(f"{GH}/cszn/KAIR/releases/download/v1.0/scunet_color_real_psnr.pth",),
        used_by="stage-1 SCUNet of DiffBIR v2 (denoise)", license=KAIR_LICENSE, size=71982841,
        sha256="fa78899ba2caec9d235a900e91d96c689da71c42029230c2028b00f09f809c2e",
        source="deepinv/scunet commit cb7773c (a re-upload of the KAIR file), Git LFS pointer",
        source_kind="mirror"),
    # --- Face detection and parsing (models/facedetection, the folder ComfyUI face packs share) ----------
    WeightFile(
        key="retinaface_resnet50", filename="detection_Resnet50_Final.pth", folder="facedetection",
        urls=(f"{GH}/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",),
        used_by="RetinaFace (ResNet-50) face detector, unaligned faces", license=FACEXLIB_LICENSE, size=109497761,
        sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
        source="many identical Hugging Face re-uploads (e.g. Aloukik21/z-image commit a7bc6e8, fofr/comfyui)",
        source_kind="mirror"),
    WeightFile(
        key="retinaface_mobilenet", filename="detection_mobilenet0.25_Final.pth", folder="facedetection",
        urls=(f"{GH}/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",),
        used_by="RetinaFace (MobileNet 0.25) face detector, the light alternative", license=FACEXLIB_LICENSE,
        size=1789735, sha256="2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
        source="Hugging Face re-uploads (chaowenguo/pal commit ca84b18, fofr/comfyui)", source_kind="mirror"),
    WeightFile(
        key="parsenet", filename="parsing_parsenet.pth", folder="facedetection",
        urls=(f"{GH}/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",),
        used_by="ParseNet face parsing, the paste-back mask of unaligned faces", license=FACEXLIB_LICENSE,
        size=85331193, sha256="3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2",
        source="many identical Hugging Face re-uploads (e.g. Aloukik21/z-image commit 3d41a1c, fofr/comfyui)",
        source_kind="mirror"),
)}

# Folders the catalogue uses that stock ComfyUI does not define; the pack registers them (__init__.py).
PACK_FOLDERS = ("diffbir", "facedetection")


def entry(key: str) -> WeightFile:
    try:
        return CATALOGUE[key]
    except KeyError:
        raise KeyError(f"no weight file {key!r} in the DiffBIR catalogue; known: {', '.join(CATALOGUE)}") from None


def by_filename(filename: str) -> WeightFile | None:
    for w in CATALOGUE.values():
        if w.filename == filename:
            return w
    return None


def workflow_model_entry(key: str) -> dict:
    """The web UI's model metadata for a loader node (``properties.models`` in a UI-format workflow):
    the frontend offers a download for each listed file that is missing. It only downloads from
    huggingface.co / civitai.com and only files ending in .safetensors or .sft (frontend 1.32); other files
    are still listed with their URL and folder."""
    w = entry(key)
    return {"name": w.filename, "url": w.url, "directory": w.folder}


# -- presets: version x task -> files and official defaults ------------------------------------------------
VERSIONS = ("v1", "v2", "v2.1")
TASKS = ("sr", "face", "denoise", "unaligned_face")

V21_POSITIVE = ("Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo "
                "- realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore "
                "detailing, hyper sharpness, perfect without deformations.")
V21_NEGATIVE = ("painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D "
                "render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
                "signature, jpeg artifacts, deformed, lowres, over-smooth.")
V2_NEGATIVE = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"


@dataclass(frozen=True)
class Preset:
    version: str
    task: str
    checkpoint: str  # catalogue keys
    ircontrolnet: str
    cleaner: str
    background_cleaner: str | None = None  # unaligned_face: the cleaner of the whole picture
    face_files: tuple[str, ...] = ()  # unaligned_face: detector and parser
    v_prediction_zsnr: bool = False  # the checkpoint needs ModelSamplingDiscrete(v_prediction, zsnr=True)
    steps: int = 50
    cfg: float = 4.0
    positive: str = ""
    negative: str = ""
    sampler: str = ""  # the official sampler, in words

    def files(self) -> list[str]:
        keys = [self.checkpoint, self.ircontrolnet, self.cleaner]
        if self.background_cleaner:
            keys.append(self.background_cleaner)
        keys.extend(self.face_files)
        return list(dict.fromkeys(keys))


_V1 = dict(version="v1", checkpoint="sd21_base_safetensors", steps=50, cfg=1.0,
           sampler="spaced DDPM, 50 steps (v1 code)")
_V2 = dict(version="v2", checkpoint="sd21_base_safetensors", ircontrolnet="v2", steps=50, cfg=4.0, negative=V2_NEGATIVE,
           sampler="spaced DDPM, 50 steps (v2.0 code)")
_V21 = dict(version="v2.1", checkpoint="sd21_zsnr", ircontrolnet="v21", v_prediction_zsnr=True, steps=10, cfg=6.0,
            positive=V21_POSITIVE, negative=V21_NEGATIVE,
            sampler="EDM DPM++ 3M SDE, 10 steps (v2.1 CLI; its README commands use cfg 8)")
_FACES = ("retinaface_resnet50", "parsenet")

PRESETS: dict[tuple[str, str], Preset] = {(p.version, p.task): p for p in (
    Preset(task="sr", ircontrolnet="v1_general", cleaner="swinir_general", **_V1),
    Preset(task="face", ircontrolnet="v1_face", cleaner="swinir_face", **_V1),
    Preset(task="denoise", ircontrolnet="v1_general", cleaner="swinir_general", **_V1),
    Preset(task="sr", cleaner="bsrnet", **_V2),
    Preset(task="face", cleaner="swinir_face", **_V2),
    Preset(task="denoise", cleaner="scunet_psnr", **_V2),
    Preset(task="unaligned_face", cleaner="swinir_face", background_cleaner="bsrnet", face_files=_FACES, **_V2),
    Preset(task="sr", cleaner="swinir_realesrgan", **_V21),
    Preset(task="face", cleaner="swinir_face", **_V21),
    Preset(task="denoise", cleaner="swinir_realesrgan", **_V21),
    Preset(task="unaligned_face", cleaner="swinir_face", background_cleaner="swinir_realesrgan", face_files=_FACES,
           **_V21),
)}


def preset(version: str, task: str) -> Preset:
    try:
        return PRESETS[(version, task)]
    except KeyError:
        if version == "v1" and task == "unaligned_face":
            raise ValueError("DiffBIR v1 has no unaligned-face mode (the official code raises for it too); "
                             "use v2 or v2.1, or task 'face' with an aligned 512x512 face") from None
        raise ValueError(f"no DiffBIR preset for version {version!r} and task {task!r}; versions: "
                         f"{', '.join(VERSIONS)}; tasks: {', '.join(TASKS)}") from None


def stamp_workflow_models(workflow: dict) -> int:
    """Adds the web UI's model metadata (``properties.models``: name, url, directory) to every node of a
    UI-format workflow that names a catalogue file in its widget values, and to every DiffBIRPresetLoader
    (the files of its version + task). The frontend uses it to offer the missing files when someone opens
    a shared workflow. Returns the number of nodes changed; existing entries for other files are kept."""
    changed = 0
    for node in workflow.get("nodes", []):
        values = node.get("widgets_values") or []
        if isinstance(values, dict):
            values = list(values.values())
        keys = [w.key for v in values if isinstance(v, str) and (w := by_filename(v.rsplit("/", 1)[-1]))]
        if node.get("type") == "DiffBIRPresetLoader" and len(values) >= 2:
            try:
                keys += preset(str(values[0]), str(values[1])).files()
            except ValueError:
                pass
        if not keys:
            continue
        properties = node.setdefault("properties", {})
        models = [m for m in properties.get("models", []) if not by_filename(m.get("name", ""))]
        models += [workflow_model_entry(k) for k in dict.fromkeys(keys)]
        if properties.get("models") != models:
            properties["models"] = models
            changed += 1
    return changed
