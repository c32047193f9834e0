"""End-to-end golden fixtures (tests/golden/end_to_end/): the official DiffBIR pipeline classes run
whole, from the 8-bit low-quality image to the 8-bit result, on the test models' random weights.

Run with the golden environment (tools/goldens/setup.sh), after the test models exist (they are
built with ComfyUI's modules, so with the test venv):

    .venv/bin/python -c "import torch; from devkit import model_factory as m; \
m.sd2_checkpoint('small', dtype=torch.float32); m.ircontrolnet_file('small')"
    .venv-official/bin/python -m tools.goldens.make_end_to_end [case ...]

Each case is what the official ``inference.py`` does for one image (its inference loop's
``after_load_lq``, then ``Pipeline.run`` of the pipeline class it picks), with the settings of the
matching shipped workflow (prompts, cfg and sampler of its version; fewer steps) and the random
draws of ``torch.manual_seed(SEED)`` right before ``Pipeline.run``, in fp32 (the official
``--precision fp32``). The low-quality image is an odd-sized crop so the final resize to input size x
upscale matters. Writes ``<case>_lq.png``, ``<case>_official.png`` (``<case>_official_<i>.png`` for
each sample of a batch) and ``cases.json``.

Options of a case (the official command-line flags they stand for):
- ``tiled``: ``--cleaner_tiled --cldm_tiled`` with the official tile sizes 512 / 256 (the cleaner
  then skips tiling on inputs smaller than a tile, as officially); the VAE is not tiled, because the
  official tiled VAE is approximate (shared but averaged GroupNorm statistics) while the pack's
  exact tiled VAE equals the untiled one;
- ``n_samples``: ``--n_samples N --batch_size N``: the image repeated N times in one batch;
- ``lq``: the low-quality image (LQ_IMAGES), by default the 85 x 77 crop.

Face cases (``--task face`` / ``face_background``) run the official loops of
``diffbir/inference/bfr_loop.py`` and ``unaligned_bfr_loop.py``. The faces-in-the-wild case runs the
loop's own ``load_lq`` / ``after_load_lq`` / ``save`` (detection, alignment, paste-back through its
``FaceRestoreHelper``) with two stand-ins: the helper's detector and parser are facexlib's RetinaFace
ResNet-50 and ParseNet with the test weights (their initialisers download), and the detector's score
threshold is WILD_CONFIDENCE instead of 0.8 (random weights score every anchor near 0.5). One
difference is deliberate and documented (README, parity): the official CLI seeds once per process,
so the background's noise continues the random stream after the faces' sampling; a ComfyUI graph
seeds each sampler, so here the stream is seeded again (SEED) before the background's
``Pipeline.run``. With one detected face the face run is unchanged.
"""

from __future__ import annotations

import json
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from devkit import model_factory
from diffbir_modules import prompts
from tools.goldens import official
from tools.goldens.make_stage1 import official_cleaner

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

OUT = REPO / "tests" / "golden" / "end_to_end"
SEED = 231  # the shipped workflows' noise seed (the official CLI default)
STEPS = 4
# (top, left, height, width) of skimage's astronaut: 85 x 77, so x 4 it is 340 x 308 and the official
# short-side-512 resize and pad to 64 make a 576 x 512 working size (padding on the long side)
LQ_BOX = (100, 170, 77, 85)
UNET = dict(use_checkpoint=False, image_size=32, in_channels=4, model_channels=320, attention_resolutions=[1, 2],
            num_res_blocks=1, channel_mult=[1, 2], num_head_channels=64, use_spatial_transformer=True,
            use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, legacy=False)

# case -> (shipped workflow, official --version, --task, pipeline class, stage-1 file, official sampler, upscale)
CASES = {
    "v21_swinir_sr_x4": ("DiffBIR v2.1 super-resolution (SwinIR)", "v2.1", "sr", "SwinIRPipeline",
                         "realesrgan_s4_swinir_100k.pth", "edm_dpm++_3m_sde", 4.0),
    "v2_bsrnet_sr_x4": ("DiffBIR v2 super-resolution (BSRNet)", "v2", "sr", "BSRNetPipeline", "BSRNet.pth", "spaced",
                        4.0),
    "v2_scunet_denoise_x1": ("DiffBIR v2 denoising (SCUNet)", "v2", "denoise", "SCUNetPipeline",
                             "scunet_color_real_psnr.pth", "spaced", 1.0),
    "v1_swinir_sr_x4": ("DiffBIR v1 general", "v1", "sr", "SwinIRPipeline", "general_swinir_v1.ckpt", "spaced", 4.0),
    "v21_tiled_sr_x4": ("DiffBIR v2.1 large images (tiled)", "v2.1", "sr", "SwinIRPipeline",
                        "realesrgan_s4_swinir_100k.pth", "edm_dpm++_3m_sde", 4.0),
    "v21_swinir_sr_x4_batch2": ("DiffBIR v2.1 super-resolution (SwinIR)", "v2.1", "sr", "SwinIRPipeline",
                                "realesrgan_s4_swinir_100k.pth", "edm_dpm++_3m_sde", 4.0),
}
CASES["v21_aligned_face_x1"] = ("DiffBIR aligned face (v2.1)", "v2.1", "face", "SwinIRPipeline",
                                "face_swinir_v1.ckpt", "edm_dpm++_3m_sde", 1.0)
CASES["v21_faces_wild_x2"] = ("DiffBIR faces in the wild (v2.1)", "v2.1", "face_background", "SwinIRPipeline",
                              "realesrgan_s4_swinir_100k.pth", "edm_dpm++_3m_sde", 2.0)
# v1's aligned face: the official v1 face models through main's ``--version v1 --task face`` (the v1
# release's ``inference_face.py --has_aligned --sr_scale 1`` does the same to a 512 x 512 face: its
# resize and padding rules leave that size alone)
CASES["v1_aligned_face_x1"] = ("DiffBIR v1 aligned face", "v1", "face", "SwinIRPipeline", "face_swinir_v1.ckpt",
                               "spaced", 1.0)
# (v1's faces in the wild, v1_faces_wild_x2 in faces_cases.json, exists only in the v1 release's own tree:
# make_end_to_end_v1_wild.py.)
OPTIONS = {"v21_tiled_sr_x4": {"tiled": True}, "v21_swinir_sr_x4_batch2": {"n_samples": 2},
           "v21_aligned_face_x1": {"lq": "face_512"}, "v21_faces_wild_x2": {"lq": "astronaut_320"},
           "v1_aligned_face_x1": {"lq": "face_512"}}
FACE_CLEANER = "face_swinir_v1.ckpt"
# The face models of the wild case (devkit.model_factory.face_model_file seeds; the test installs the same
# files) and the detector's score threshold for them (see the module docstring; the test sets it on the
# workflow's detect node).
WILD_SEEDS = {"retinaface_resnet50": 0, "parsenet": 0}
# The image is 320 x 320, so x 2 it is 640 x 640 and the helper detects at that size without resizing
# (at 512 px its cv2.resize to 640, one level off ours in some pixels, moved the landmarks enough to
# change the restored face's noise-like texture by tens of levels). The helper's detections on it with
# these weights, after NMS: the top one scores 0.99072 with eye distance (as the helper reads it)
# 13.2 px, the next 0.98518. A threshold between the two keeps that one face.
WILD_CONFIDENCE = 0.988


def lq_image(name: str) -> Image.Image:
    """The low-quality images of the cases, from scikit-image's astronaut (512 x 512, public domain):
    ``astronaut_85x77`` an odd-sized crop; ``face_512`` the face (a 128 x 128 crop) PIL-bicubic upscaled
    to 512 x 512, a blurry aligned-looking face; ``astronaut_320`` a 320 x 320 crop with the face."""
    from skimage import data

    image = data.astronaut()
    if name == "astronaut_85x77":
        top, left, h, w = LQ_BOX
        return Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w]))
    if name == "face_512":
        return Image.fromarray(np.ascontiguousarray(image[50:178, 160:288])).resize((512, 512), Image.BICUBIC)
    if name == "astronaut_320":
        return Image.fromarray(np.ascontiguousarray(image[0:320, 100:420]))
    raise KeyError(name)
TILE_SIZE, TILE_STRIDE = 512, 256  # the official defaults of --cleaner_tile_* and --cldm_tile_*


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def build_cldm(tree: str = "main", checkpoint: Path | None = None):
    """The official ControlLDM of the source tree ``tree`` ("main": v2.1 code; "v20": the v2.0.0 code,
    activated by the caller) on the small random checkpoint (or the SD checkpoint file ``checkpoint``)
    and IRControlNet."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    if tree == "main":
        from diffbir.model import ControlLDM
    else:
        from model.cldm import ControlLDM
    config = OmegaConf.to_container(OmegaConf.load(official.source(tree) / "configs/inference/cldm.yaml"))
    params = config["params"]
    params["unet_cfg"] = dict(UNET, out_channels=4)
    params["controlnet_cfg"] = dict(UNET, hint_channels=4)
    cldm = ControlLDM(**params)
    sd = load_file(str(checkpoint or model_factory.sd2_checkpoint("small", dtype=torch.float32)))
    loaded = cldm.load_pretrained_sd(sd)
    if tree == "main" and loaded[1]:  # (unused, missing); the v2.0 code raises on a missing key itself
        raise RuntimeError(f"the small checkpoint lacks {sorted(loaded[1])[:5]}")
    controlnet = torch.load(model_factory.ircontrolnet_file("small"), map_location="cpu", weights_only=True)
    cldm.load_controlnet_from_ckpt(controlnet)
    return cldm.eval()


def diffusion(version: str):
    from diffbir.utils.common import instantiate_from_config
    from omegaconf import OmegaConf

    name = "diffusion_v2.1.yaml" if version == "v2.1" else "diffusion.yaml"
    return instantiate_from_config(OmegaConf.load(official.source("main") / "configs/inference" / name))


def run_case(cldm, version: str, task: str, pipeline_name: str, cleaner_file: str, sampler: str, upscale: float,
             lq: Image.Image, tiled: bool = False, n_samples: int = 1) -> np.ndarray:
    from diffbir import pipeline as pipelines
    from diffbir.inference.bfr_loop import BFRInferenceLoop
    from diffbir.inference.bid_loop import BIDInferenceLoop
    from diffbir.inference.bsr_loop import BSRInferenceLoop

    loop = object.__new__({"sr": BSRInferenceLoop, "denoise": BIDInferenceLoop, "face": BFRInferenceLoop}[task])
    loop.args = Namespace(version=version, upscale=upscale)
    lq_array = loop.after_load_lq(lq)  # PIL bicubic x upscale, except v2 sr (BSRNet upscales itself)
    cleaner = official_cleaner(cleaner_file)
    cls = getattr(pipelines, pipeline_name)
    args = (cleaner, cldm, diffusion(version), None, "cpu")
    pipe = cls(*args, upscale) if pipeline_name == "BSRNetPipeline" else cls(*args)
    torch.manual_seed(SEED)
    return run_pipeline(pipe, lq_array, version, sampler, tiled, n_samples)


def run_pipeline(pipe, lq_array: np.ndarray, version: str, sampler: str, tiled: bool = False,
                 n_samples: int = 1) -> np.ndarray:
    """``Pipeline.run`` with the arguments the official loop passes (the CLI defaults but the case's)."""
    positive, negative, cfg, _, _ = prompts.DEFAULTS[version]
    with torch.no_grad():
        return pipe.run(np.tile(lq_array[None], (n_samples, 1, 1, 1)), STEPS, 1.0, tiled, TILE_SIZE, TILE_STRIDE,
                        False, 256, False, 256, tiled, TILE_SIZE, TILE_STRIDE,
                        positive, negative, cfg, "noise", sampler, 0, False, 0.0, 0.0, 300.0, 1.0, 1.0, 1)


def face_networks():
    """facexlib's RetinaFace ResNet-50 (score threshold WILD_CONFIDENCE) and ParseNet with the test weights."""
    import facexlib.detection.retinaface as retinaface_module
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.parsenet import ParseNet

    from tools.goldens.make_faces import reference_nms

    retinaface_module.py_cpu_nms = lambda dets, thresh: reference_nms(dets[:, :4], dets[:, 4], thresh)
    detector = RetinaFace(network_name="resnet50", device="cpu")
    detector.load_state_dict(torch.load(model_factory.face_model_file("retinaface_resnet50",
                                                                      WILD_SEEDS["retinaface_resnet50"])))
    detect = detector.detect_faces
    detector.detect_faces = lambda image, conf_threshold=0.8, nms_threshold=0.4, **kw: detect(
        image, WILD_CONFIDENCE, nms_threshold, **kw)
    parser = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    parser.load_state_dict(torch.load(model_factory.face_model_file("parsenet", WILD_SEEDS["parsenet"])))
    return detector.eval(), parser.eval()


def run_wild_case(cldm, lq: Image.Image, upscale: float) -> tuple[np.ndarray, int]:
    """The official faces-in-the-wild loop on one image; returns (result, number of faces)."""
    import tempfile

    import diffbir.utils.face as face_module
    from diffbir import pipeline as pipelines
    from diffbir.inference.unaligned_bfr_loop import UnAlignedBFRInferenceLoop

    class NoCSV:  # the loop writes its prompts to a CSV with pandas (not installed here)
        def __init__(self, *args, **kwargs):
            pass

        def to_csv(self, *args, **kwargs):
            pass

    sys.modules["pandas"].DataFrame = NoCSV
    import diffbir.inference.unaligned_bfr_loop as loop_module

    loop_module.pd = sys.modules["pandas"]
    detector, parser = face_networks()
    face_module.init_detection_model = lambda *args, **kwargs: detector
    face_module.init_parsing_model = lambda *args, **kwargs: parser
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in").mkdir()
        lq.save(Path(tmp) / "in" / "lq.png")
        loop = object.__new__(UnAlignedBFRInferenceLoop)
        loop.args = Namespace(version="v2.1", upscale=upscale, device="cpu", input=str(Path(tmp) / "in"),
                              output=str(Path(tmp) / "out"))
        loop.loop_ctx = {}
        loop.bg_cleaner = official_cleaner("realesrgan_s4_swinir_100k.pth")
        loop.face_cleaner = official_cleaner(FACE_CLEANER)
        loop.cldm, loop.diffusion, loop.cond_fn = cldm, diffusion("v2.1"), None
        loop.load_pipeline()
        loop.setup()
        torch.manual_seed(SEED)  # the CLI's set_seed, once
        faces = 0
        for image in loop.load_lq():
            lq_array = loop.after_load_lq(image)
            if loop.loop_ctx["is_face"]:
                faces += 1
            else:
                torch.manual_seed(SEED)  # ComfyUI seeds the background's sampler itself (module docstring)
            assert isinstance(loop.pipeline, pipelines.SwinIRPipeline)
            samples = run_pipeline(loop.pipeline, lq_array, "v2.1", "edm_dpm++_3m_sde")
            loop.save(list(samples), "", "")
        out = np.asarray(Image.open(Path(tmp) / "out" / "lq_0.png").convert("RGB"))
    return out[None], faces


def meta_file(task: str) -> Path:
    """The face cases have their own list (tests/test_end_to_end_faces.py), the others cases.json."""
    return OUT / ("faces_cases.json" if task in ("face", "face_background") else "cases.json")


def main():
    official.activate("main")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    top, left, h, w = LQ_BOX
    cldm = build_cldm()
    log("ControlLDM built")
    metas = {}
    for case in sys.argv[1:] or list(CASES):
        workflow, version, task, pipeline_name, cleaner_file, sampler, upscale = CASES[case]
        path = meta_file(task)
        if path not in metas:
            metas[path] = {"seed": SEED, "steps": STEPS, "official_commit": official.COMMITS["main"],
                           "precision": "fp32", "cases": {}}
            if path.exists():  # cases not named on the command line are kept
                kept = json.loads(path.read_text())
                metas[path]["cases"] = kept["cases"]
                if "lq_size" in kept:
                    metas[path]["lq_size"] = kept["lq_size"]
        meta = metas[path]
        options = dict(OPTIONS.get(case, {}))
        lq = lq_image(options.pop("lq", "astronaut_85x77"))
        extra = {}
        if task == "face_background":
            out, faces = run_wild_case(cldm, lq, upscale)
            extra = {"faces": faces, "face_stage1": FACE_CLEANER, "confidence": WILD_CONFIDENCE, **WILD_SEEDS}
        else:
            out = run_case(cldm, version, task, pipeline_name, cleaner_file, sampler, upscale, lq, **options)
        if "lq" in OPTIONS.get(case, {}):
            extra["lq_size"] = list(lq.size)
        else:  # the default crop: its size is recorded once, for the cases that use it
            meta["lq_size"] = [w, h]
        lq.save(OUT / f"{case}_lq.png")
        if len(out) == 1:
            Image.fromarray(out[0]).save(OUT / f"{case}_official.png")
        else:
            for i, sample in enumerate(out):
                Image.fromarray(sample).save(OUT / f"{case}_official_{i}.png")
        meta["cases"][case] = {"workflow": workflow, "version": version, "task": task, "pipeline": pipeline_name,
                               "stage1": cleaner_file, "sampler": sampler, "upscale": upscale,
                               "output_size": [out.shape[2], out.shape[1]], **options, **extra}
        if options.get("tiled"):
            meta["cases"][case].update(tile_size=TILE_SIZE, tile_stride=TILE_STRIDE)
        log(case, out.shape, out.dtype, int(out.min()), int(out.max()))
        path.write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
