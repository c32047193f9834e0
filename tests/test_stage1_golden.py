"""Stage 1 against the official DiffBIR code: golden fixtures made by tools/goldens/make_stage1.py
(the official pipelines, networks and tiling run on the small random-weight files of model_factory),
compared with what the pack computes from the same files loaded through ComfyUI's own
UpscaleModelLoader (spandrel)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from devkit import golden_io, model_factory
from devkit.model_factory import install_model

GOLDEN = Path(__file__).resolve().parent / "golden" / "stage1"
FLOAT_TOL = 1e-4  # max abs difference per pixel, fp32 CPU (reached: see docs/stage1.md)
_descriptors: dict = {}


def descriptor(comfy, name: str):
    """The small random-weight file ``name``, loaded by ComfyUI's core UpscaleModelLoader."""
    if name not in _descriptors:
        installed = install_model("upscale_models", model_factory.stage1_file(name), f"test-small-{name}")
        _descriptors[name] = comfy.node_class("UpscaleModelLoader").execute(installed).result[0]
    return _descriptors[name]


def as_comfy_image(lq: np.ndarray) -> torch.Tensor:
    """What LoadImage gives for an 8-bit file: float32 uint8 / 255, [1, H, W, 3]."""
    return torch.from_numpy(lq.astype(np.float32) / 255.0)[None]


def cases(pipeline: str):
    data = golden_io.load(GOLDEN / f"pipeline_{pipeline}.npz")
    return [(data, case) for case in json.loads(str(data["cases"]))]


ALL_CASES = [pytest.param(p, i, id=c["id"]) for p in ("swinir", "bsrnet", "scunet", "v1_release")
             for i, (_, c) in enumerate(cases(p))]


@pytest.mark.parametrize("pipeline, index", ALL_CASES)
def test_pipeline_matches_official(comfy, pipeline, index):
    stage1 = comfy.pack_module("diffbir_modules.stage1")
    data, case = cases(pipeline)[index]
    cleaner = stage1.Cleaner.from_spandrel(descriptor(comfy, case["file"]))
    settings = stage1.Settings(rules=pipeline, upscale=case["upscale"], tiled=case["tiled"], tile_size=case["tile"],
                               tile_stride=case["stride"])
    rules = stage1.RULES[pipeline]
    lq = data[f"lq_{case['lq']}"]
    plan = stage1.plan(lq.shape[0], lq.shape[1], rules, cleaner.scale, settings)
    assert list(plan.requested) == case["output_size"]
    x = as_comfy_image(lq).movedim(-1, 1)
    if f"{case['id']}__lq_up" in data:  # the PIL pre-upscale on uint8: bit-exact
        ours = stage1.pil_bicubic(x, plan.pre_resize, "pil_uint8")
        ours_u8 = ours[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
        assert np.array_equal(ours_u8, data[f"{case['id']}__lq_up"])
    with torch.no_grad():
        y = stage1.restore_one(x, cleaner, rules, settings, plan)
    errors = golden_io.compare(data, y.numpy(), case["id"])
    print(case["id"], "float max abs diff per part:", errors)
    assert max(errors.values()) <= FLOAT_TOL, errors
    # as 8-bit images (the official uint8 conversion truncates): identical levels, or 1 at a boundary
    mine = golden_io.summarise(y.numpy(), case["id"])
    to_u8 = lambda a: np.clip(a * 255.0, 0, 255).astype(np.uint8).astype(np.int16)
    levels = max(int(np.abs(to_u8(mine[k]) - to_u8(data[k])).max()) for k in mine
                 if k.rsplit("__", 1)[-1] in ("sub", "crop_tl", "crop_c", "crop_br", "full"))
    print(case["id"], "uint8 max level difference", levels)
    assert levels <= 1


@pytest.mark.parametrize("kind, name", [("swinir", "realesrgan_s4_swinir_100k.pth"), ("bsrnet", "BSRNet.pth"),
                                        ("scunet", "scunet_color_real_psnr.pth")])
def test_networks_match_official(comfy, kind, name):
    """spandrel's SwinIR (PixelUnshuffle 8, nearest+conv, mean shift), ESRGAN on the BSRNet layout and
    SCUNet compute what the official networks compute; SCUNet only with the official replicate padding
    around the call (spandrel's own copy reflect-pads)."""
    stage1 = comfy.pack_module("diffbir_modules.stage1")
    data = golden_io.load(GOLDEN / "networks.npz")
    x = torch.from_numpy(data[f"net_{kind}_input"])
    expected = data[f"net_{kind}_output"]
    desc = descriptor(comfy, name)
    cleaner = stage1.Cleaner.from_spandrel(desc)
    with torch.no_grad():
        ours = stage1.call_padded(cleaner, stage1.RULES[stage1.auto_rules(cleaner)], x).numpy()
        raw = desc.model(x).numpy()
    error = float(np.abs(ours - expected).max())
    print(kind, "max abs diff", error, "raw spandrel", float(np.abs(raw - expected).max()))
    assert error <= FLOAT_TOL
    if kind == "scunet":  # 40x72 needs padding: spandrel's reflect padding gives another result
        assert np.abs(raw - expected).max() > 1e-2


def test_windows_and_weights_match_official(comfy):
    tiling = comfy.pack_module("diffbir_modules.tiling")
    data = golden_io.load(GOLDEN / "tiling.npz")
    for i, (h, w, size, stride) in enumerate(data["window_cases"]):
        assert tiling.sliding_windows(int(h), int(w), int(size), int(stride)) == [tuple(r) for r in
                                                                                 data[f"windows_{i}"].tolist()]
    for key in (k for k in data if k.startswith("gauss_")):
        w, h = (int(v) for v in key[len("gauss_"):].split("x"))
        ours = tiling.gaussian_weights(w, h, official_midpoint=True).numpy()
        assert ours.shape == (h, w)
        assert np.abs(ours - data[key]).max() <= 1e-12 * np.abs(data[key]).max()


def test_tiled_apply_matches_make_tiled_fn(comfy):
    tiling = comfy.pack_module("diffbir_modules.tiling")
    data = golden_io.load(GOLDEN / "tiling.npz")
    x = torch.from_numpy(data["tiled_input"])
    fn1 = lambda t: torch.sin(3 * t) + t.mean()
    fn2 = lambda t: torch.nn.functional.interpolate(torch.sin(3 * t), scale_factor=2, mode="nearest") + t.mean()
    results = {
        "tiled_s1_gauss": tiling.tiled_apply(fn1, x, 32, 12),
        "tiled_s1_uniform": tiling.tiled_apply(fn1, x, 32, 12, weighting="uniform"),
        "tiled_s2_gauss": tiling.tiled_apply(fn2, x, 24, 10, scale=2),
    }
    for key, ours in results.items():
        assert ours.shape == data[key].shape
        assert np.abs(ours.numpy() - data[key]).max() <= 1e-6, key
