"""Golden fixtures for stage 1 (degradation removal): the official DiffBIR code run on the small
random-weight stage-1 files of devkit/model_factory.py, saved to tests/golden/stage1/.

    .venv-official/bin/python -m tools.goldens.make_stage1 [file.npz ...]

What runs is the official code itself: the inference loops' ``after_load_lq`` (the PIL pre-upscale),
``SwinIRPipeline`` / ``BSRNetPipeline`` / ``SCUNetPipeline.apply_cleaner`` (main = v2.1.0 + fixes;
untiled rules identical at v2.0.0), ``make_tiled_fn`` / ``sliding_windows`` / ``gaussian_weights``,
the official networks loaded ``strict=True`` from the published-format files, and for the v1 release
(7bd5675) its ``auto_resize`` and ``pad`` from utils/image/common.py around the same SwinIR (the v1
class differs only by being a LightningModule). The only lines written here are the ones that glue
them together as the official scripts do (uint8 -> float /255, the v1 ``ceil`` pre-resize line).

Files (each well under 1 MB; big outputs are summarised by devkit/golden_io.py):
- tiling.npz: sliding windows, gaussian weights, make_tiled_fn on synthetic functions;
- networks.npz: each official network on a small input (full outputs);
- pipeline_<swinir|bsrnet|scunet|v1_release>.npz: every official stage-1 pipeline case in CASES (+ the
  PIL pre-upscaled inputs, the official output size and the cases themselves as JSON).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from devkit import golden_io, model_factory
from tools.goldens import official

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

OUT = REPO / "tests" / "golden" / "stage1"

# The inputs: crops of scikit-image's astronaut (a real photo), odd sizes on purpose.
LQ = {"a": (100, 180, 37, 53), "c": (60, 160, 61, 77)}  # (top, left, height, width)

# (id, pipeline, file, loop version, lq, upscale, tiled, tile size, tile stride)
CASES = [
    ("swinir_untiled_x4", "swinir", "realesrgan_s4_swinir_100k.pth", "v2.1", "a", 4.0, False, 512, 256),
    ("swinir_tiled_x4", "swinir", "realesrgan_s4_swinir_100k.pth", "v2.1", "a", 4.0, True, 128, 64),
    ("swinir_tiled_skipped_x2", "swinir", "realesrgan_s4_swinir_100k.pth", "v2.1", "a", 2.0, True, 128, 64),
    ("swinir_face_x1", "swinir", "face_swinir_v1.ckpt", "v2.1", "c", 1.0, False, 512, 256),
    ("bsrnet_untiled_x4", "bsrnet", "BSRNet.pth", "v2", "a", 4.0, False, 512, 256),
    ("bsrnet_tiled_x4", "bsrnet", "BSRNet.pth", "v2", "a", 4.0, True, 16, 8),
    ("bsrnet_requested_x14", "bsrnet", "BSRNet.pth", "v2", "a", 14.0, False, 512, 256),
    ("scunet_untiled_x2", "scunet", "scunet_color_real_psnr.pth", "v2", "a", 2.0, False, 512, 256),
    ("scunet_tiled_x2", "scunet", "scunet_color_real_psnr.pth", "v2", "a", 2.0, True, 56, 50),
    ("v1_release_x4", "v1_release", "general_swinir_v1.ckpt", "v1a", "a", 4.0, False, 512, 256),
    ("v1_release_x1", "v1_release", "general_swinir_v1.ckpt", "v1a", "c", 1.0, False, 512, 256),
]

WINDOW_CASES = [(148, 212, 128, 64), (37, 53, 16, 8), (74, 106, 48, 24), (512, 733, 512, 256), (64, 64, 64, 32),
                (300, 451, 256, 128), (100, 100, 64, 64)]
WEIGHT_SIZES = [(64, 64), (80, 48), (128, 128), (7, 5)]  # (width, height) as gaussian_weights takes them


def photo(key: str) -> np.ndarray:
    from skimage import data

    top, left, h, w = LQ[key]
    return np.ascontiguousarray(data.astronaut()[top:top + h, left:left + w])


def official_cleaner(name: str):
    """The official network for a published file, loaded as the official loaders do."""
    from diffbir.model import RRDBNet, SCUNet, SwinIR

    kind, _ = model_factory.STAGE1_FILES[name]
    net = {"swinir": SwinIR, "bsrnet": RRDBNet, "scunet": SCUNet}[kind](**model_factory.STAGE1_CONFIGS[kind]["small"])
    sd = torch.load(model_factory.stage1_file(name), map_location="cpu", weights_only=True)
    # diffbir.utils.common.load_model_from_url after its download step
    if "state_dict" in sd:
        sd = sd["state_dict"]
    if list(sd.keys())[0].startswith("module"):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    net.load_state_dict(sd, strict=True)
    return net.eval()


def to_tensor(lq: np.ndarray) -> torch.Tensor:
    """Pipeline.run's first step: uint8 NHWC -> float /255, clamp, NCHW."""
    return torch.tensor(lq[None], dtype=torch.float32).div(255).clamp(0, 1).permute(0, 3, 1, 2).contiguous()


def run_main(case, lq: np.ndarray):
    """One case through the official main/v2.1 loop + pipeline; returns (pre-upscaled uint8 lq, output)."""
    from diffbir.inference.bfr_loop import BFRInferenceLoop
    from diffbir.inference.bid_loop import BIDInferenceLoop
    from diffbir.inference.bsr_loop import BSRInferenceLoop
    from diffbir.pipeline import BSRNetPipeline, SCUNetPipeline, SwinIRPipeline

    case_id, pipeline, name, version, _, upscale, tiled, tile, stride = case
    loop_class = BSRInferenceLoop
    if "face" in name:
        loop_class = BFRInferenceLoop
    elif pipeline == "scunet":
        loop_class = BIDInferenceLoop
    loop = object.__new__(loop_class)
    loop.args = Namespace(version=version, upscale=upscale)
    lq_up = loop.after_load_lq(Image.fromarray(lq))
    cleaner = official_cleaner(name)
    if pipeline == "bsrnet":
        pipe = BSRNetPipeline(cleaner, None, None, None, "cpu", upscale)
    else:
        pipe = (SwinIRPipeline if pipeline == "swinir" else SCUNetPipeline)(cleaner, None, None, None, "cpu")
    x = to_tensor(lq_up)
    pipe.set_output_size(x.size())
    with torch.no_grad():
        out = pipe.apply_cleaner(x, tiled, tile, stride)
    return lq_up, out, pipe.output_size


def run_v1_release(case, lq: np.ndarray):
    """inference.py of the v1 release (7bd5675): ceil pre-resize, auto_resize to 512, uint8 zero-pad to
    64, the SwinIR preprocess model, crop back to the resized size."""
    root = official.source("v1a")
    spec = importlib.util.spec_from_file_location("v1a_image_common", root / "utils" / "image" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    _, _, name, _, _, sr_scale, _, _, _ = case
    pil = Image.fromarray(lq)
    if sr_scale != 1:
        pil = pil.resize(tuple(math.ceil(x * sr_scale) for x in pil.size), Image.BICUBIC)
    lq_resized = common.auto_resize(pil, 512)
    x = common.pad(np.array(lq_resized), scale=64)
    control = torch.tensor(np.stack([x]) / 255.0, dtype=torch.float32).clamp_(0, 1)
    control = control.permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        out = official_cleaner(name)(control)
    out = out[:, :, :lq_resized.height, :lq_resized.width]
    return np.array(pil), out, (pil.height, pil.width)


def make_tiling() -> dict:
    from diffbir.utils.common import gaussian_weights, make_tiled_fn, sliding_windows

    entries = {}
    for i, (h, w, size, stride) in enumerate(WINDOW_CASES):
        entries[f"windows_{i}"] = np.array(sliding_windows(h, w, size, stride), dtype=np.int64)
    entries["window_cases"] = np.array(WINDOW_CASES, dtype=np.int64)
    for w, h in WEIGHT_SIZES:
        entries[f"gauss_{w}x{h}"] = np.asarray(gaussian_weights(w, h), dtype=np.float64)
    x = torch.rand(1, 3, 50, 70, generator=torch.Generator().manual_seed(5))
    entries["tiled_input"] = x.numpy()

    def fn1(t):  # depends on the tile as a whole: blending differences show
        return torch.sin(3 * t) + t.mean()

    def fn2(t):
        return torch.nn.functional.interpolate(torch.sin(3 * t), scale_factor=2, mode="nearest") + t.mean()

    with torch.no_grad():
        entries["tiled_s1_gauss"] = make_tiled_fn(fn1, 32, 12, progress=False)(x).numpy()
        entries["tiled_s1_uniform"] = make_tiled_fn(fn1, 32, 12, weight="uniform", progress=False)(x).numpy()
        entries["tiled_s2_gauss"] = make_tiled_fn(fn2, 24, 10, scale_type="up", scale=2, progress=False)(x).numpy()
    return entries


def make_networks() -> dict:
    entries = {}
    for key, name, (h, w) in (("swinir", "realesrgan_s4_swinir_100k.pth", (64, 128)),
                              ("bsrnet", "BSRNet.pth", (24, 40)),
                              ("scunet", "scunet_color_real_psnr.pth", (40, 72))):
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        with torch.no_grad():
            y = official_cleaner(name)(x)
        entries[f"net_{key}_input"] = x.numpy()
        entries[f"net_{key}_output"] = y.numpy()
    return entries


def make_pipelines(pipeline: str) -> dict:
    entries = {f"lq_{k}": photo(k) for k in LQ}
    meta = []
    for case in CASES:
        if case[1] != pipeline:
            continue
        lq = photo(case[4])
        if case[1] == "v1_release":
            lq_up, out, output_size = run_v1_release(case, lq)
        else:
            lq_up, out, output_size = run_main(case, lq)
        if np.asarray(lq_up).shape != lq.shape:
            entries[f"{case[0]}__lq_up"] = np.asarray(lq_up, dtype=np.uint8)
        entries.update(golden_io.summarise(out.numpy(), case[0]))
        meta.append(dict(zip(("id", "pipeline", "file", "version", "lq", "upscale", "tiled", "tile", "stride"), case),
                         output_size=list(output_size), range=[float(out.min()), float(out.max())]))
        print(f"{case[0]}: lq {lq.shape[:2]} -> pre {np.asarray(lq_up).shape[:2]} -> {tuple(out.shape[2:])}, "
              f"requested {tuple(output_size)}, range [{out.min():.3f}, {out.max():.3f}]")
    entries["cases"] = np.array(json.dumps(meta))
    return entries


def main():
    official.activate("main")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    jobs = [("tiling.npz", make_tiling), ("networks.npz", make_networks)]
    jobs += [(f"pipeline_{p}.npz", lambda p=p: make_pipelines(p)) for p in ("swinir", "bsrnet", "scunet", "v1_release")]
    only = sys.argv[1:]  # optional: file names to regenerate
    for file, make in jobs:
        if only and file not in only:
            continue
        entries = make()
        np.savez_compressed(OUT / file, **entries)
        print(f"wrote {OUT / file} ({(OUT / file).stat().st_size / 1024:.0f} KiB, {len(entries)} arrays)")


if __name__ == "__main__":
    main()
