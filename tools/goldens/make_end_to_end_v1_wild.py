"""End-to-end golden of "DiffBIR v1 faces in the wild" (tests/golden/end_to_end/v1_faces_wild_x2_*.png and
its entry in faces_cases.json): the v1 release's ``inference_face.py`` (commit ``official.COMMITS["v1a"]``)
without ``--has_aligned``, with ``--bg_upsampler DiffBIR --sr_scale 2``, run on the test models' random
weights. A module of its own because the v1 release is another source tree (PyTorch-Lightning ``ldm`` /
``model`` / ``utils`` packages at its root) than the one make_end_to_end.py activates.

Run with the golden environment (tools/goldens/setup.sh installs PyTorch Lightning and OpenCLIP for this
tree), after the test models exist (built with the test venv):

    .venv/bin/python -c "import torch; from devkit import model_factory as m; \
m.sd2_checkpoint('small', dtype=torch.float32); m.ircontrolnet_file('small'); m.ircontrolnet_file('small', seed=2)"
    .venv-official/bin/python -m tools.goldens.make_end_to_end_v1_wild

What runs is the script's own code: ``build_diffbir_model`` (the release's ``model.cldm.ControlLDM`` from a
``configs/model/cldm.yaml``, a full checkpoint loaded strictly, ``general_swinir_v1.ckpt`` reloaded into
the background model's ``preprocess_model``), its ``utils/face_restoration_helper.FaceRestoreHelper``
(``use_parse=True``, retinaface_resnet50, ``upscale_factor`` 1) and ``inference.process`` (spaced sampler,
cfg 1, empty prompts, wavelet colour fix); the glue of ``main()`` is repeated line for line (bicubic
pre-upscale by sr_scale, ``auto_resize`` to 512, ``pad`` to 64, detection, alignment, the faces, the
background, inverse affine, paste, padding cropped, LANCZOS resize to input size x sr_scale). What is ours:

- the weights: the release's "full" checkpoints are composed in ``.cache/official/v1a-wild/`` (never
  committed) from the same random files the test installs: ``face_full_v1.ckpt`` = the small SD 2.x
  checkpoint (UNet, VAE, OpenCLIP-H text tower) + ``v1_face.pth``'s IRControlNet (``control_model.*``) +
  ``face_swinir_v1.ckpt`` (``preprocess_model.*``) + the VAE encoder as ``cond_encoder.*`` (the release
  trained with a frozen copy of it); ``general_full_v1.pth`` the same with ``v1_general.pth``'s
  IRControlNet (another seed, so a face / general mix-up shows) and ``general_swinir_v1.ckpt``, which the
  script reloads from beside it. The schedule buffers are the instantiated model's own;
- the config: the release's cldm.yaml written again with the UNet / ControlNet and SwinIR sizes of the
  small test models (``use_checkpoint`` off; VAE and text encoder keep their real sizes, as the test
  checkpoint does);
- offline / CPU: OpenCLIP's ``pretrained`` download is skipped (weights come from the checkpoint), the
  imports the inference path never uses (``transformers`` for T5 / CLIP-L encoders, ``lpips`` for
  training metrics) are stubbed, the helper's detector and parser initialisers return facexlib's
  RetinaFace ResNet-50 and ParseNet with the test weights (make_end_to_end.face_networks: the detector's
  score threshold WILD_CONFIDENCE for the random weights, torchvision's NMS, missing on CPU-only torch,
  replaced by a reference NMS);
- the random stream, as in the v2.1 wild case: the script seeds once (``pl.seed_everything``) before it
  builds the models, whose random initialisation then consumes the stream, and the background continues
  the faces' stream; a ComfyUI graph seeds each sampler. So the stream is seeded (SEED) right before the
  faces' ``process`` and again before the background's. With one detected face the face run is what the
  script does after its seed;
- memory: the script builds both models before the loop; here each is built, run and freed in turn
  (nothing random happens in between, the stream being seeded before each run), to stay within a few
  GiB (each build briefly holds OpenCLIP's ViT-H image tower, which the release deletes at once).

The image is make_end_to_end's 320 x 320 astronaut crop: x 2 = 640 x 640, so ``auto_resize``, ``pad`` and
the final LANCZOS resize leave the size alone and the helper detects at 640 without resizing (as the v2.1
wild case; the shipped workflow's note names where it would differ from the script on other sizes).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from devkit import model_factory
from diffbir_modules import host_memory
from tools.goldens import official
from tools.goldens.make_end_to_end import OUT, SEED, STEPS, UNET, WILD_CONFIDENCE, WILD_SEEDS, face_networks, lq_image

CASE = "v1_faces_wild_x2"
WORKFLOW = "DiffBIR v1 faces in the wild"
SR_SCALE = 2.0
LQ = "astronaut_320"
# The IRControlNet seeds of the two full checkpoints (devkit.model_factory.ircontrolnet_file; the test
# installs the same files as v1_face.pth and v1_general.pth).
IRCONTROLNET_SEEDS = {"face": 1, "general": 2}
WORK = official.CACHE / "v1a-wild"


def log(*args):
    """Prints with the time, the resident memory now and its peak so far (GiB)."""
    import resource

    statm = Path("/proc/self/statm")
    now = int(statm.read_text().split()[1]) * resource.getpagesize() / 2**30 if statm.exists() else float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"[{time.strftime('%H:%M:%S')} rss {now:.1f} peak {peak:.1f} GiB]", *args, flush=True)


def fix_mmap_threshold() -> None:
    """glibc raises its mmap threshold after the first large free, so each model built and dropped
    would stay in the heap: fixed at 1 MiB, large blocks are mapped and unmapped when freed. No effect
    on results; a no-op without glibc."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def release_freed_memory() -> None:
    """Drops unreachable objects and hands the free heap pages back (the pack's host_memory)."""
    gc.collect()
    host_memory.release()


def stub_unused_imports() -> None:
    """Modules the release imports at module level but the inference path never calls."""
    if "transformers" not in sys.modules:
        stub = types.ModuleType("transformers")
        for name in ("T5Tokenizer", "T5EncoderModel", "CLIPTokenizer", "CLIPTextModel"):
            setattr(stub, name, None)
        sys.modules["transformers"] = stub
    if "lpips" not in sys.modules:  # the release's SwinIR builds an LPIPS metric for validation
        stub = types.ModuleType("lpips")

        class LPIPS(torch.nn.Module):  # no weights (the real one fetches AlexNet's); never called here
            def __init__(self, *args, **kwargs):
                super().__init__()

        stub.LPIPS = LPIPS
        sys.modules["lpips"] = stub


@contextlib.contextmanager
def openclip_offline():
    """OpenCLIP builds ViT-H-14 without fetching the LAION weights (the checkpoint holds the text tower)."""
    import open_clip

    real = open_clip.create_model_and_transforms

    def create(arch, *args, pretrained=None, **kwargs):
        return real(arch, *args, pretrained=None, **kwargs)

    open_clip.create_model_and_transforms = create
    try:
        yield
    finally:
        open_clip.create_model_and_transforms = real


def small_config() -> Path:
    """The release's configs/model/cldm.yaml with the test models' UNet / ControlNet and SwinIR sizes."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(official.source("v1a") / "configs/model/cldm.yaml"))
    params = config["params"]
    params["unet_config"]["params"] = dict(UNET, out_channels=4)
    params["control_stage_config"]["params"] = dict(UNET, hint_channels=4)
    params["preprocess_config"]["params"] = dict(model_factory.STAGE1_CONFIGS["swinir"]["small"])
    path = WORK / "cldm_small.yaml"
    WORK.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), path)
    return path


def our_tensors(kind: str) -> dict:
    """{full-checkpoint key: tensor} from the random test files, in the release's full layout."""
    from safetensors.torch import load_file

    sd2 = load_file(str(model_factory.sd2_checkpoint("small", dtype=torch.float32)))
    out = {k: v for k, v in sd2.items() if k.startswith(("model.diffusion_model.", "first_stage_model.",
                                                         "cond_stage_model."))}
    for key, value in sd2.items():
        for part in ("encoder.", "quant_conv."):
            if key.startswith("first_stage_model." + part):
                out["cond_encoder." + key[len("first_stage_model."):]] = value
    control = torch.load(model_factory.ircontrolnet_file("small", seed=IRCONTROLNET_SEEDS[kind]),
                         map_location="cpu", weights_only=True)
    out.update({"control_model." + k: v for k, v in control.items()})
    cleaner = torch.load(model_factory.stage1_file(f"{kind}_swinir_v1.ckpt"), map_location="cpu",
                         weights_only=True)["state_dict"]
    out.update({"preprocess_model." + k.removeprefix("module."): v for k, v in cleaner.items()})
    return out


def full_checkpoint(kind: str, config: Path) -> Path:
    """``face_full_v1.ckpt`` / ``general_full_v1.pth`` (with ``general_swinir_v1.ckpt`` beside it)."""
    import shutil

    from omegaconf import OmegaConf
    from utils.common import instantiate_from_config

    name = {"face": "face_full_v1.ckpt", "general": "general_full_v1.pth"}[kind]
    path = WORK / f"weights-v{model_factory.FACTORY_VERSION}" / name
    if kind == "general":
        swinir = path.with_name("general_swinir_v1.ckpt")
        if not swinir.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_factory.stage1_file("general_swinir_v1.ckpt"), swinir)
    if path.exists():
        return path
    with openclip_offline():
        model = instantiate_from_config(OmegaConf.load(config))
    ours = our_tensors(kind)
    state = model.state_dict()
    parameters = {k for k, _ in model.named_parameters()}
    missing = sorted(parameters - set(ours))
    unknown = sorted(set(ours) - set(state))
    if missing or unknown:
        raise RuntimeError(f"{name}: parameters without a test tensor {missing[:5]}, test tensors the model "
                           f"lacks {unknown[:5]}")
    for key, value in ours.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise RuntimeError(f"{name}: {key} is {tuple(value.shape)} in the test file, "
                               f"{tuple(state[key].shape)} in the model")
    state = {k: ours.get(k, v) for k, v in state.items()}  # buffers: the model's own
    del model, ours
    path.parent.mkdir(parents=True, exist_ok=True)
    model_factory._atomic_save(lambda p: torch.save({"state_dict": state}, p), path)
    log("composed", path.name, f"{len(state)} tensors")
    return path


def run(lq_path: Path, config: Path, face_ckpt: Path, general_ckpt: Path) -> tuple[np.ndarray, int]:
    """``inference_face.main()`` for one image, ``--bg_upsampler DiffBIR``, models built one at a time."""
    import inference_face
    import utils.face_restoration_helper as helper_module
    from utils.face_restoration_helper import FaceRestoreHelper
    from utils.image import auto_resize, pad

    detector, parser = face_networks()
    helper_module.init_detection_model = lambda *args, **kwargs: detector
    helper_module.init_parsing_model = lambda *args, **kwargs: parser
    device = inference_face.check_device("cpu")

    def process(model, images):
        torch.manual_seed(SEED)  # see the module docstring: ComfyUI seeds each sampler
        return inference_face.process(model, images, steps=STEPS, strength=1, color_fix_type="wavelet",
                                      disable_preprocess_model=False, cond_fn=None, tiled=False, tile_size=None,
                                      tile_stride=None)

    face_helper = FaceRestoreHelper(device=device, upscale_factor=1, face_size=512, use_parse=True,
                                    det_model="retinaface_resnet50")
    lq = Image.open(lq_path).convert("RGB")
    if SR_SCALE != 1:
        lq = lq.resize(tuple(math.ceil(x * SR_SCALE) for x in lq.size), Image.BICUBIC)
    lq_resized = auto_resize(lq, 512)
    x = pad(np.array(lq_resized), scale=64)

    face_helper.clean_all()
    face_helper.read_image(x)
    face_helper.get_face_landmarks_5(only_center_face=False, resize=640, eye_dist_threshold=5)
    face_helper.align_warp_face()
    faces = len(face_helper.cropped_faces)
    log("faces", faces, "landmarks", [np.round(lm, 2).tolist() for lm in face_helper.all_landmarks_5])

    with openclip_offline():
        model = inference_face.build_diffbir_model(str(config), str(face_ckpt)).to(device)
    release_freed_memory()
    log("face model built")
    preds, _ = process(model, face_helper.cropped_faces)
    for restored_face in preds:
        face_helper.add_restored_face(np.array(restored_face))
    del model
    release_freed_memory()
    log("faces restored")

    with openclip_offline():
        bg_upsampler = inference_face.build_diffbir_model(str(config), str(general_ckpt)).to(device)
    release_freed_memory()
    log("background model built")
    bg_img, _ = process(bg_upsampler, [x])
    bg_img = bg_img[0]
    del bg_upsampler
    release_freed_memory()
    log("background restored")

    face_helper.get_inverse_affine(None)
    restored_img = face_helper.paste_faces_to_input_image(upsample_img=bg_img)
    restored_img = restored_img[:lq_resized.height, :lq_resized.width, :]
    out = Image.fromarray(restored_img).resize(lq.size, Image.LANCZOS).convert("RGB")
    return np.asarray(out), faces


def main():
    fix_mmap_threshold()
    root = official.activate("v1a")
    stub_unused_imports()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    log("v1 release tree", root)
    config = small_config()
    face_ckpt = full_checkpoint("face", config)
    release_freed_memory()
    general_ckpt = full_checkpoint("general", config)
    release_freed_memory()
    lq = lq_image(LQ)
    lq_path = OUT / f"{CASE}_lq.png"
    lq.save(lq_path)
    out, faces = run(lq_path, config, face_ckpt, general_ckpt)
    Image.fromarray(out).save(OUT / f"{CASE}_official.png")
    path = OUT / "faces_cases.json"
    meta = json.loads(path.read_text())
    meta["cases"][CASE] = {
        "workflow": WORKFLOW, "version": "v1 release", "task": "face_background",
        "official_commit": official.COMMITS["v1a"], "entry_point": "inference_face.py --bg_upsampler DiffBIR",
        "stage1": "general_swinir_v1.ckpt", "sampler": "spaced", "upscale": SR_SCALE,
        "output_size": [out.shape[1], out.shape[0]], "faces": faces, "face_stage1": "face_swinir_v1.ckpt",
        "confidence": WILD_CONFIDENCE, **WILD_SEEDS, "ircontrolnet_seeds": IRCONTROLNET_SEEDS,
        "lq_size": list(lq.size)}
    path.write_text(json.dumps(meta, indent=1) + "\n")
    log(CASE, out.shape, out.dtype, int(out.min()), int(out.max()), "faces", faces)


if __name__ == "__main__":
    main()
