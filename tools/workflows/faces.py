"""The face example workflows, described once and built into UI-format JSON with builder.py:

- ``faces_in_the_wild``: DiffBIR's unaligned-face mode. The low-quality image is upscaled (bicubic, as
  the official loop does before detection), faces are detected and aligned, the crops go through the
  DiffBIR chain with the face cleaner, the whole image through the same chain with the background
  cleaner, and DiffBIR Face Paste Back joins them.
- ``aligned_face``: an already aligned 512x512 face through the DiffBIR chain with the face cleaner
  (DiffBIR's --task face: no detection at all).

Both end with DiffBIR Before / After (the input beside the result) and group their nodes by stage
(``STAGES``), like the general workflows.

``chain="diffbir"`` is the real restoration chain (preset loader, degradation removal, IRControlNet,
KSampler, unclipped decode, crop, colour fix, resize to the requested size: the nodes of the stage1 /
ircontrolnet / samplers / userready areas);
``chain="stock"`` replaces each restoration by stock nodes (VAE encode -> KSampler img2img -> decode
for the faces, a bicubic upscale for the background) so the face nodes can be exercised without them.

    python -m tools.workflows.faces [--chain diffbir|stock] [--out example_workflows]

starts a headless ComfyUI with this pack for the node definitions and writes the JSON files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffbir_modules import weights
from tools.workflows.builder import Node, build, live_object_info, note, write
from tools.workflows.general import official_finish

HERE = Path(__file__).resolve().parent

DETECTOR_FILES = {"retinaface_resnet50": "retinaface_resnet50", "retinaface_mobilenet0.25": "retinaface_mobilenet"}

UPSCALE = 2.0

WILD_NOTE = """# DiffBIR: faces in the wild

Two paths meet in **DiffBIR Face Paste Back**:

- **face path**: *DiffBIR Face Detect & Align* finds every face in the upscaled image and warps it to a
  512x512 crop (the FFHQ template). The crops are restored as **one batch** with the **face** cleaner.
- **background path**: the whole picture is restored with the **general** cleaner at the same scale.

Check the **preview**: green faces are restored, red ones skipped (set *selection*, *indices* or
*min_size* to choose). No face found: the image passes through unchanged (see the log).

RetinaFace and ParseNet weights go to `models/facedetection` (downloaded on first use when online); for
offline use pick `mtcnn` in the detector loader (see docs/faces.md). *DiffBIR Face Parser Loader* makes
the paste node paste only the face itself, as official DiffBIR does; disconnect it to paste the whole
aligned square with its soft edge.
"""

ALIGNED_NOTE = """# DiffBIR: an aligned face

For a face that is already cropped and aligned like FFHQ (512x512, eyes level, centred), as DiffBIR's
`--task face` expects. The face cleaner (SwinIR trained on faces) removes the degradation, IRControlNet
and SD 2.1 add the detail. For faces inside a larger photo use the *faces in the wild* workflow.
"""


def _diffbir_restore(prefix: str, image, preset: str, cleaner_output: int, upscale: float, seed: int,
                     version: str = "v2.1", stage1_preset: str = "auto") -> list:
    """The DiffBIR chain on ``image`` with the preset loader's models and the official prompts, tokenisation
    and sampler of ``version`` (as the general workflows); the last node is the result."""
    if version == "v2.1":
        schedule = [Node(f"{prefix}_sigmas", "DiffBIREDMSigmas", title=f"{prefix}: official EDM schedule",
                         model=(preset, 0), steps=(preset, 6)),
                    Node(f"{prefix}_solver", "DiffBIREDMSampler", title=f"{prefix}: official EDM sampler",
                         solver="dpm++_3m_sde")]
    else:
        schedule = [Node(f"{prefix}_sigmas", "DiffBIRSpacedSigmas", title=f"{prefix}: official spaced schedule",
                         model=(preset, 0), steps=(preset, 6)),
                    Node(f"{prefix}_solver", "DiffBIRSpacedSampler", title=f"{prefix}: official spaced sampler")]
    return [
        Node(f"{prefix}_clean", "DiffBIRDegradationRemoval", title=f"{prefix}: degradation removal",
             image=image, upscale_model=(preset, cleaner_output), upscale=upscale, clamp=False,
             **({"preset": stage1_preset} if stage1_preset != "auto" else {})),
        Node(f"{prefix}_pos", "DiffBIRTextEncode", title=f"{prefix}: positive", text=(preset, 8), clip=(preset, 1)),
        Node(f"{prefix}_neg", "DiffBIRTextEncode", title=f"{prefix}: negative", text=(preset, 9), clip=(preset, 1)),
        Node(f"{prefix}_control", "DiffBIRApplyIRControlNet", positive=(f"{prefix}_pos", 0),
             negative=(f"{prefix}_neg", 0), ircontrolnet=(preset, 3), vae=(preset, 2), image=(f"{prefix}_clean", 0)),
        *schedule,
        Node(f"{prefix}_noise", "RandomNoise", noise_seed=seed),
        Node(f"{prefix}_guider", "CFGGuider", model=(preset, 0), positive=(f"{prefix}_control", 0),
             negative=(f"{prefix}_control", 1), cfg=(preset, 7)),
        Node(f"{prefix}_sample", "SamplerCustomAdvanced", noise=(f"{prefix}_noise", 0),
             guider=(f"{prefix}_guider", 0), sampler=(f"{prefix}_solver", 0), sigmas=(f"{prefix}_sigmas", 0),
             latent_image=(f"{prefix}_control", 2)),
        *official_finish(f"{prefix}_", (f"{prefix}_sample", 0), (preset, 2), (f"{prefix}_clean", 0),
                         (f"{prefix}_clean", 1), (f"{prefix}_clean", 2),
                         resize="lanczos_uint8" if version.startswith("v1") else "bicubic_antialias"),
    ]


def _stock_restore(prefix: str, image, checkpoint: str, seed: int) -> list:
    """Stand-in restoration with stock nodes: img2img at low denoise."""
    return [
        Node(f"{prefix}_encode", "VAEEncode", pixels=image, vae=(checkpoint, 2)),
        Node(f"{prefix}_pos", "CLIPTextEncode", text="a sharp photo of a face", clip=(checkpoint, 1)),
        Node(f"{prefix}_neg", "CLIPTextEncode", text="blurry", clip=(checkpoint, 1)),
        Node(f"{prefix}_sample", "KSampler", model=(checkpoint, 0), positive=(f"{prefix}_pos", 0),
             negative=(f"{prefix}_neg", 0), latent_image=(f"{prefix}_encode", 0), seed=seed, steps=2, cfg=4.0,
             sampler_name="euler", scheduler="normal", denoise=0.3),
        Node(f"{prefix}_resize", "VAEDecode", title=f"{prefix}: restored", samples=(f"{prefix}_sample", 0),
             vae=(checkpoint, 2)),
    ]


def _before_after(before, after) -> list:
    return [Node("compare", "DiffBIRBeforeAfter", title="before / after", before=before, after=after),
            Node("preview_compare", "PreviewImage", title="before / after", images=("compare", 0))]


def faces_in_the_wild(chain: str = "diffbir", image: str = "example.png", detector: str = "retinaface_resnet50",
                      checkpoint: str = "", face_size: int = 512, upscale: float = UPSCALE, parse: bool = True) -> list:
    nodes = [note("readme", WILD_NOTE, title="Read me"),
             Node("load", "LoadImage", title="low-quality image", image=image),
             Node("detector", "DiffBIRFaceDetectorLoader", detector=detector,
                  models=[weights.workflow_model_entry(DETECTOR_FILES[detector])] if detector in DETECTOR_FILES
                  else None),
             # official_quirks: the official helper's channel order and eye-distance reading (docs/faces.md)
             Node("detect", "DiffBIRFaceDetectAlign", image=("upscale", 0), detector=("detector", 0),
                  face_size=face_size, order="detector score", official_quirks=True),
             Node("preview", "PreviewImage", title="detected faces (green: restored)", images=("detect", 2))]
    if chain == "diffbir":
        nodes.append(Node("preset", "DiffBIRPresetLoader", version="v2.1", task="unaligned_face"))
        nodes += _diffbir_restore("face", ("detect", 0), "preset", 4, 1.0, seed=231)
        nodes += _diffbir_restore("background", ("load", 0), "preset", 5, upscale, seed=231)
        # the official loop upscales the 8-bit photo with PIL bicubic to input size x upscale before detection
        nodes.append(Node("upscale", "DiffBIRResizeToOutputSize", title="upscale (as the official loop before "
                          "detection)", image=("load", 0), width=("background_clean", 1),
                          height=("background_clean", 2), method="bicubic_uint8"))
    elif chain == "stock":
        nodes.append(Node("ckpt", "CheckpointLoaderSimple", ckpt_name=checkpoint))
        nodes += _stock_restore("face", ("detect", 0), "ckpt", seed=231)
        nodes.append(Node("background_resize", "ImageScaleBy", title="background: restored (stand-in)",
                          image=("load", 0), upscale_method="bicubic", scale_by=upscale))
        nodes.append(Node("upscale", "ImageScaleBy", title="upscale (stand-in)", image=("load", 0),
                          upscale_method="bicubic", scale_by=upscale))
    else:
        raise ValueError(f"unknown chain {chain!r}")
    paste_options = {}
    if parse:  # official DiffBIR pastes through the ParseNet face mask
        nodes.append(Node("parser", "DiffBIRFaceParserLoader",
                          models=[weights.workflow_model_entry("parsenet")]))
        paste_options["face_parser"] = ("parser", 0)
    nodes += [Node("paste", "DiffBIRFacePasteBack", background=("background_resize", 0),
                   restored_faces=("face_resize", 0), faces=("detect", 1), official_quirks=True, **paste_options),
              Node("save", "SaveImage", images=("paste", 0), filename_prefix="diffbir_faces"),
              *_before_after(("load", 0), ("paste", 0)),
              Node("save_mask", "MaskToImage", mask=("paste", 1)),
              Node("mask_preview", "PreviewImage", title="paste mask", images=("save_mask", 0))]
    return nodes


def aligned_face(chain: str = "diffbir", image: str = "face.png", checkpoint: str = "") -> list:
    nodes = [note("readme", ALIGNED_NOTE, title="Read me"),
             Node("load", "LoadImage", title="aligned 512x512 face", image=image)]
    if chain == "diffbir":
        nodes.append(Node("preset", "DiffBIRPresetLoader", version="v2.1", task="face"))
        nodes += _diffbir_restore("face", ("load", 0), "preset", 4, 1.0, seed=231)
    else:
        nodes.append(Node("ckpt", "CheckpointLoaderSimple", ckpt_name=checkpoint))
        nodes += _stock_restore("face", ("load", 0), "ckpt", seed=231)
    nodes += [Node("save", "SaveImage", images=("face_resize", 0), filename_prefix="diffbir_face"),
              *_before_after(("load", 0), ("face_resize", 0))]
    return nodes


V1_NOTE = """# DiffBIR v1: faces in the wild

As the first DiffBIR release's face script (`inference_face.py`, `--bg_upsampler DiffBIR`): faces are
detected on the upscaled photo, restored as one batch by the **v1 face** IRControlNet and face SwinIR
(50 spaced DDPM steps, no prompt, cfg 1), and pasted onto the background restored by the **v1 general**
model; the result is resized to input size x upscale with LANCZOS, as v1 does. For a face that is
already aligned use the *DiffBIR v1 aligned face* workflow.

v1 has no unaligned-face preset of its own: two preset loaders load the face and the general models
(the SD checkpoint is shared). Differences from the v1 script: faces are detected on the upscaled photo,
not on its working copy (short side scaled up to 512, sides padded to multiples of 64: the same if already
so), and each sampler is seeded on its own (the script's background continues the faces' random stream).
"""

V1_ALIGNED_NOTE = """# DiffBIR v1: an aligned face

As the first DiffBIR release's face script with `--has_aligned --sr_scale 1` (`inference_face.py`): a face
already cropped and aligned like FFHQ (512x512) goes through the **v1 face** SwinIR and IRControlNet (50
spaced DDPM steps, no prompt, cfg 1) and the wavelet colour fix. For faces inside a larger photo use the
*DiffBIR v1 faces in the wild* workflow.
"""


def v1_faces(chain: str = "diffbir", image: str = "example.png", aligned: bool = False, upscale: float = 2.0) -> list:
    """The v1 release's face script: aligned faces, or faces in the wild with the DiffBIR background."""
    if chain != "diffbir":
        raise ValueError("the v1 face workflow has only the DiffBIR chain")
    nodes = [note("readme", V1_ALIGNED_NOTE if aligned else V1_NOTE, title="Read me"),
             Node("load", "LoadImage", title="aligned 512x512 face" if aligned else "low-quality image", image=image),
             Node("preset", "DiffBIRPresetLoader", title="v1 face models", version="v1 release", task="face")]
    if aligned:
        nodes += _diffbir_restore("face", ("load", 0), "preset", 4, 1.0, seed=231, version="v1",
                                  stage1_preset="v1 release face")
        nodes += [Node("save", "SaveImage", images=("face_resize", 0), filename_prefix="diffbir_v1_face"),
                  *_before_after(("load", 0), ("face_resize", 0))]
        return nodes
    nodes += [
        Node("background_preset", "DiffBIRPresetLoader", title="v1 general models (background)",
             version="v1 release", task="sr"),
        Node("detector", "DiffBIRFaceDetectorLoader", detector="retinaface_resnet50",
             models=[weights.workflow_model_entry("retinaface_resnet50")]),
        Node("upscale", "DiffBIRResizeToOutputSize", title="upscale (as the v1 script before detection)",
             image=("load", 0), width=("background_clean", 1), height=("background_clean", 2), method="bicubic_uint8"),
        Node("detect", "DiffBIRFaceDetectAlign", image=("upscale", 0), detector=("detector", 0), face_size=512,
             order="detector score", official_quirks=True),
        Node("preview", "PreviewImage", title="detected faces (green: restored)", images=("detect", 2)),
        *_diffbir_restore("face", ("detect", 0), "preset", 4, 1.0, seed=231, version="v1",
                          stage1_preset="v1 release face"),
        *_diffbir_restore("background", ("load", 0), "background_preset", 4, upscale, seed=231, version="v1",
                          stage1_preset="v1 release sr"),
        Node("parser", "DiffBIRFaceParserLoader", models=[weights.workflow_model_entry("parsenet")]),
        Node("paste", "DiffBIRFacePasteBack", background=("background_resize", 0), restored_faces=("face_resize", 0),
             faces=("detect", 1), face_parser=("parser", 0), official_quirks=True),
        Node("save", "SaveImage", images=("paste", 0), filename_prefix="diffbir_v1_faces"),
        *_before_after(("load", 0), ("paste", 0)),
    ]
    return nodes


def v1_aligned_face(chain: str = "diffbir") -> list:
    """The v1 release's face script with ``--has_aligned``."""
    return v1_faces(chain, image="face.png", aligned=True, upscale=1.0)


WORKFLOWS = {
    "DiffBIR faces in the wild (v2.1)": faces_in_the_wild,
    "DiffBIR aligned face (v2.1)": aligned_face,
    "DiffBIR v1 faces in the wild": v1_faces,
    "DiffBIR v1 aligned face": v1_aligned_face,
}

# group title: node keys (both chains), one column each, in the order the workflow runs (the background
# first: its degradation removal gives the size the faces are found at); a workflow's groups are numbered
STAGES = {
    "input and models": ["readme", "load", "preset", "background_preset", "ckpt", "detector", "parser"],
    "background: restore": ["background_clean", "background_pos", "background_neg", "background_control",
                            "background_sigmas", "background_solver", "background_noise", "background_guider",
                            "background_sample"],
    "background: decode and colour fix": ["background_decode", "background_crop", "background_colour",
                                          "background_resize"],
    "find faces": ["upscale", "detect", "preview"],
    "faces: restore": ["face_clean", "face_encode", "face_pos", "face_neg", "face_control", "face_sigmas",
                       "face_solver", "face_noise", "face_guider", "face_sample"],
    "faces: decode and colour fix": ["face_decode", "face_crop", "face_colour", "face_resize"],
    "result": ["paste", "save", "compare", "preview_compare", "save_mask", "mask_preview"],
}


def _stages(nodes: list[Node]) -> dict[str, list[str]]:
    keys = {node.key for node in nodes}
    stages = {title: [k for k in members if k in keys] for title, members in STAGES.items()}
    present = [(title, members) for title, members in stages.items() if members]
    return {f"{number}. {title}": members for number, (title, members) in enumerate(present, 1)}


def workflows(info: dict, chain: str = "diffbir") -> dict:
    """{title: UI-format workflow} for the given node definitions."""
    out = {}
    for title, describe in WORKFLOWS.items():
        nodes = describe(chain)
        workflow = build(nodes, info, stages=_stages(nodes))
        weights.stamp_workflow_models(workflow)  # the preset loader's files, for the web UI
        # the web UI offers a node's files only when its widgets name them: list the face models (their
        # loaders name a detector, not a file) with the workflow's own, as the unaligned_face preset does
        listed = workflow.setdefault("models", [])
        listed += [m for node in workflow["nodes"] for m in node.get("properties", {}).get("models", [])
                   if m not in listed]
        out[title] = workflow
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", default="diffbir", choices=["diffbir", "stock"])
    parser.add_argument("--out", default=str(HERE.parents[1] / "example_workflows"))
    args = parser.parse_args(argv)
    write(workflows(live_object_info(), args.chain), args.out)


if __name__ == "__main__":
    main()
