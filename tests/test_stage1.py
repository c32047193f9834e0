"""Stage 1 (degradation removal) in a real ComfyUI: the official size rules, loading every published
file format, batches / RGBA / gray / tiny images, bad inputs, out-of-memory fallback, progress,
cancel and model management. Parity with the official code is in test_stage1_golden.py."""

import logging

import pytest
import torch
from safetensors.torch import save_file

from devkit import model_factory
from devkit.model_factory import install_model

FILES = list(model_factory.STAGE1_FILES)


@pytest.fixture(scope="module")
def stage1(comfy):
    return comfy.pack_module("diffbir_modules.stage1")


_cache = {}


def load(comfy, name, fresh=False):
    """A small random-weight stage-1 file through ComfyUI's own UpscaleModelLoader."""
    if fresh or name not in _cache:
        installed = install_model("upscale_models", model_factory.stage1_file(name), f"test-small-{name}")
        with torch.inference_mode():
            descriptor = comfy.node_class("UpscaleModelLoader").execute(installed).result[0]
        if fresh:
            return descriptor
        _cache[name] = descriptor
    return _cache[name]


def photo(b=1, h=20, w=28, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(b, c, 4, 5, generator=g), size=(h, w), mode="bilinear")
    return (base * 0.8 + torch.rand(b, c, h, w, generator=g) * 0.2).clamp(0, 1).movedim(1, -1).contiguous()


def run_node(comfy, image, model, **options):
    settings = dict(preset="auto", upscale=4.0, min_short_side=512, tiled=False, tile_size=512, tile_stride=256,
                    tile_weighting="gaussian", resample="pil_uint8")
    settings.update(options)
    with torch.inference_mode():
        return comfy.node_class("DiffBIRDegradationRemoval").execute(image, model, **settings).result


# -- size rules ----------------------------------------------------------------------------------
# (rules, scale of the network, h, w, upscale, tiled tile (0 = untiled), min short side) ->
# (requested, pre-resize, short side before, model input, tiled, post resize, output)
PLANS = [
    (("swinir", 1, 37, 53, 4.0, 0, 512), ((148, 212), (148, 212), (512, 733), (512, 733), False, None, (512, 733))),
    (("swinir", 1, 37, 53, 4.0, 128, 512), ((148, 212), (148, 212), None, (148, 212), True, (512, 733), (512, 733))),
    (("swinir", 1, 37, 53, 2.0, 128, 512), ((74, 106), (74, 106), (512, 733), (512, 733), False, None, (512, 733))),
    (("swinir", 1, 37, 53, 4.0, 0, 0), ((148, 212), (148, 212), None, (148, 212), False, None, (148, 212))),
    (("bsrnet", 4, 37, 53, 4.0, 0, 512), ((148, 212), None, None, (37, 53), False, (512, 733), (512, 733))),
    (("bsrnet", 4, 37, 53, 14.0, 0, 512), ((518, 742), None, None, (37, 53), False, (518, 742), (518, 742))),
    (("bsrnet", 4, 37, 53, 2.0, 16, 0), ((74, 106), None, None, (37, 53), True, (74, 106), (74, 106))),
    (("scunet", 1, 37, 53, 2.0, 0, 512), ((74, 106), (74, 106), None, (74, 106), False, (512, 733), (512, 733))),
    (("v1_release", 1, 37, 53, 4.0, 0, 512), ((148, 212), (148, 212), (512, 734), (512, 734), False, None,
                                              (512, 734))),
    (("v1_release", 1, 61, 77, 1.0, 0, 512), ((61, 77), None, (512, 647), (512, 647), False, None, (512, 647))),
    (("generic", 2, 37, 53, 4.0, 0, 512), ((148, 212), (148, 212), None, (148, 212), False, (512, 733), (512, 733))),
    (("bsrnet", 2, 37, 53, 4.0, 0, 512), ((148, 212), None, None, (37, 53), False, (512, 733), (512, 733))),
    (("swinir", 1, 600, 520, 1.0, 0, 512), ((600, 520), None, None, (600, 520), False, None, (600, 520))),
]


@pytest.mark.parametrize("args, expected", PLANS, ids=[f"{a[0]}-x{a[4]}-t{a[5]}-m{a[6]}-s{a[1]}" for a, _ in PLANS])
def test_plan_follows_the_official_size_rules(stage1, args, expected):
    rules, scale, h, w, upscale, tile, minimum = args
    settings = stage1.Settings(rules=rules, upscale=upscale, min_short_side=minimum, tiled=tile > 0,
                               tile_size=tile or 512, tile_stride=max(1, tile // 2) or 256)
    plan = stage1.plan(h, w, stage1.RULES[rules], scale, settings)
    got = (plan.requested, plan.pre_resize, plan.short_before, plan.model_input, plan.tiled, plan.post_resize,
           plan.output)
    assert got == expected
    if plan.back_to is not None:
        assert scale != 1 and plan.back_to == plan.model_input


def test_presets_and_auto_pick_the_official_pipeline(comfy, stage1):
    presets = comfy.pack_module("diffbir_modules.presets")
    weights = comfy.pack_module("diffbir_modules.weights")
    assert presets.preset("v2 sr").stage1 == "bsrnet" and presets.preset("v2 denoise").stage1 == "scunet"
    assert {presets.preset(f"{v} {t}").stage1 for v in ("v1", "v2.1") for t in presets.STAGE1_TASKS} == {"swinir"}
    expected = {"general_swinir_v1.ckpt": "swinir", "face_swinir_v1.ckpt": "swinir",
                "realesrgan_s4_swinir_100k.pth": "swinir", "BSRNet.pth": "bsrnet",
                "scunet_color_real_psnr.pth": "scunet"}
    for name, rules in expected.items():
        cleaner = stage1.Cleaner.from_spandrel(load(comfy, name))
        assert stage1.auto_rules(cleaner) == rules
        assert stage1.resolve_rules("v2 sr", cleaner).name == "bsrnet"
        for row in presets.PRESETS.values():
            if weights.entry(row.cleaner).filename == name and row.stage1 != "v1_release":
                assert row.stage1 == rules, f"{name} is auto-detected as {rules}, the table says {row}"


# -- loading ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FILES)
def test_core_and_our_loader_take_every_published_file(comfy, name):
    installed = install_model("upscale_models", model_factory.stage1_file(name), f"test-small-{name}")
    with torch.inference_mode():
        core = comfy.node_class("UpscaleModelLoader").execute(installed).result[0]
        ours = comfy.node_class("DiffBIRStage1Loader").execute(installed).result[0]
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        assert torch.equal(core.model(x), ours.model(x))
    kind, _ = model_factory.STAGE1_FILES[name]
    assert core.architecture.id == {"swinir": "SwinIR", "bsrnet": "ESRGAN", "scunet": "SCUNet"}[kind]
    assert core.scale == (4 if kind == "bsrnet" else 1)


@pytest.mark.parametrize("wrapper", ["module_prefix", "state_dict_module", "params_ema", "safetensors"])
@pytest.mark.parametrize("name", ["general_swinir_v1.ckpt", "BSRNet.pth"])
def test_other_wrappings_load(comfy, tmp_path, name, wrapper):
    sd = model_factory.stage1_state_dict(name)
    path = tmp_path / f"{wrapper}-{name}"
    if wrapper == "safetensors":
        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        payload = {"module_prefix": lambda: {f"module.{k}": v for k, v in sd.items()},
                   "state_dict_module": lambda: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
                   "params_ema": lambda: {"params_ema": sd}}[wrapper]()
        torch.save(payload, path)
    installed = install_model("upscale_models", path, f"test-wrap-{path.name}")
    with torch.inference_mode():
        ours = comfy.node_class("DiffBIRStage1Loader").execute(installed).result[0]
        reference = load(comfy, name)
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        assert torch.equal(ours.model(x), reference.model(x))


class _Code:  # a pickled object is code, not weights
    def __reduce__(self):
        return (print, ("this would have run",))


@pytest.mark.parametrize("kind, message", [
    ("sd_checkpoint", "Stable Diffusion checkpoint.*Load Checkpoint"),
    ("ircontrolnet", "IRControlNet"),
    ("random_bytes", "is not a weights file .it starts with bytes"),
    ("pickled_code", "refused: a pickle that holds Python code or objects besides tensors"),
    ("unknown_tensors", "no architecture"),
    ("empty", "no state dict"),
    ("swinir_missing_a_key", r"look like a known architecture but do not fit it .*patch_embed.norm.weight.*download"),
])
def test_wrong_files_give_clear_errors(comfy, tmp_path, kind, message):
    path = tmp_path / f"{kind}.pth"
    if kind == "sd_checkpoint":  # the keys of an SD 2.x checkpoint (a few tensors are enough)
        path = path.with_suffix(".safetensors")
        save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.rand(320, 4, 3, 3),
                   "first_stage_model.encoder.conv_in.weight": torch.rand(128, 3, 3, 3),
                   "cond_stage_model.model.ln_final.weight": torch.rand(1024)}, str(path))
    elif kind == "ircontrolnet":
        torch.save(model_factory.ircontrolnet_state_dict("tiny"), path)
    elif kind == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "pickled_code":
        torch.save({"weights": _Code()}, path)
    elif kind == "swinir_missing_a_key":  # a damaged or edited file: spandrel knows it, torch cannot load it
        sd = model_factory.stage1_state_dict("realesrgan_s4_swinir_100k.pth")
        sd.pop("patch_embed.norm.weight")
        torch.save(sd, path)
    elif kind == "unknown_tensors":
        torch.save({"encoder.weight": torch.rand(4, 4), "decoder.bias": torch.rand(4)}, path)
    else:
        torch.save({}, path)
    installed = install_model("upscale_models", path, f"test-bad-{path.name}")
    with pytest.raises(ValueError, match=message) as error:
        comfy.node_class("DiffBIRStage1Loader").execute(installed)
    assert installed.split("-", 2)[-1] in str(error.value)  # names the file
    if kind in ("sd_checkpoint", "random_bytes"):  # ComfyUI's own loader refuses them too (less clearly)
        with pytest.raises(Exception):  # noqa: B017
            comfy.node_class("UpscaleModelLoader").execute(installed)


# -- running ---------------------------------------------------------------------------------------
def test_graph_through_the_executor(comfy):
    installed = install_model("upscale_models", model_factory.stage1_file("BSRNet.pth"), "test-small-BSRNet.pth")
    graph = {
        "load": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": installed}},
        "image": {"class_type": "EmptyImage", "inputs": {"width": 28, "height": 20, "batch_size": 2,
                                                         "color": 0x336699}},
        "clean": {"class_type": "DiffBIRDegradationRemoval", "inputs": {
            "image": ["image", 0], "upscale_model": ["load", 0], "preset": "v2 sr", "upscale": 4.0,
            "min_short_side": 512, "tiled": True, "tile_size": 16, "tile_stride": 8, "tile_weighting": "gaussian",
            "resample": "pil_uint8"}},
    }
    image, width, height = comfy.run_prompt(graph, outputs=["clean"])["clean"]
    assert image.shape == (2, 512, 716, 3) and image.dtype == torch.float32
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    assert (width, height) == (112, 80)


@pytest.mark.parametrize("name", FILES[2:])
def test_node_output_is_the_clamped_stage1_result(comfy, stage1, name):
    model = load(comfy, name)
    image = photo()
    out, width, height = run_node(comfy, image, model, upscale=2.0)
    cleaner = stage1.Cleaner.from_spandrel(model)
    settings = stage1.Settings(upscale=2.0)
    rules = stage1.resolve_rules("auto", cleaner)
    plan = stage1.plan(20, 28, rules, cleaner.scale, settings)
    with torch.no_grad():
        reference = stage1.restore_one(image.movedim(-1, 1), cleaner, rules, settings, plan)
    assert torch.equal(out, reference.clamp(0, 1).movedim(1, -1))
    assert (width, height) == (56, 40)


def test_batch_rgba_and_gray(comfy, stage1):
    model = load(comfy, "BSRNet.pth")
    rgb = photo(b=2, seed=3)
    alpha = torch.linspace(0, 1, 20 * 28).reshape(1, 20, 28, 1).expand(2, -1, -1, -1)
    out = run_node(comfy, torch.cat([rgb, alpha], dim=-1), model, upscale=2.0, min_short_side=0)[0]
    assert out.shape == (2, 40, 56, 4)
    for i in range(2):  # each image of the batch is its own run; alpha never reaches the network
        single = run_node(comfy, rgb[i : i + 1], model, upscale=2.0, min_short_side=0)[0]
        assert torch.equal(out[i : i + 1, ..., :3], single)
    images = comfy.pack_module("diffbir_modules.images")
    expected_alpha = images.resize(alpha[:1].movedim(-1, 1), (40, 56)).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(out[:1, ..., 3:], expected_alpha, atol=1e-6)
    gray = photo(c=1, seed=4)
    out_gray = run_node(comfy, gray, model, upscale=2.0, min_short_side=0)[0]
    assert torch.equal(out_gray, run_node(comfy, gray.expand(-1, -1, -1, 3), model, upscale=2.0, min_short_side=0)[0])


@pytest.mark.parametrize("name", FILES[2:])
@pytest.mark.parametrize("h, w", [(1, 1), (1, 7), (13, 5)])
def test_tiny_and_odd_images(comfy, name, h, w):
    model = load(comfy, name)
    out, width, height = run_node(comfy, photo(h=h, w=w), model, upscale=1.0, min_short_side=0)
    assert out.shape == (1, h, w, 3) and (width, height) == (w, h)
    assert bool(torch.isfinite(out).all())
    if (h, w) == (1, 1):  # and with the official short-side rule
        assert run_node(comfy, photo(h=1, w=1), model, upscale=1.0)[0].shape == (1, 512, 512, 3)


@pytest.mark.parametrize("image, message", [
    (torch.zeros(1, 0, 16, 3), "empty"),
    (torch.zeros(0, 16, 16, 3), "empty"),
    (torch.full((2, 16, 16, 3), 0.5).index_put_((torch.tensor([1]),), torch.tensor(float("nan"))), r"\[1\].*NaN"),
    (torch.zeros(1, 16, 16, 2), "channels"),
])
def test_bad_images_are_clear_errors(comfy, image, message):
    with pytest.raises(ValueError, match=message):
        run_node(comfy, image, load(comfy, "BSRNet.pth"))


def test_empty_result_is_an_error(comfy):
    with pytest.raises(ValueError, match="empty"):
        run_node(comfy, photo(h=1, w=1), load(comfy, "BSRNet.pth"), upscale=0.5, min_short_side=0)


def test_swinir_tiles_must_be_multiples_of_64(comfy):
    with pytest.raises(ValueError, match="multiple of 64"):
        run_node(comfy, photo(h=40, w=40), load(comfy, "realesrgan_s4_swinir_100k.pth"), upscale=4.0, tiled=True,
                 tile_size=100, tile_stride=50)


def test_other_spandrel_models_work(comfy, stage1):
    """Any spandrel image model can be the cleaner: a x2 upscaler uses its own scale (BSRNet rules)
    under auto, and is resized back under 1x rules."""
    from spandrel import ModelLoader
    from spandrel.architectures.Compact import Compact

    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    sd = model_factory.random_state_dict(model_factory.shapes_of(net), seed=9)
    model = ModelLoader().load_from_state_dict(sd).eval()
    assert model.scale == 2
    out, width, height = run_node(comfy, photo(), model, upscale=4.0, min_short_side=0)
    assert out.shape == (1, 80, 112, 3) and (width, height) == (112, 80)
    out = run_node(comfy, photo(), model, preset="v2.1 sr", upscale=4.0, min_short_side=0)[0]
    assert out.shape == (1, 80, 112, 3)


# -- memory, progress, cancel ------------------------------------------------------------------------
def _oom_above(module, limit_pixels, calls):
    original = module.forward

    def forward(x):
        calls.append(tuple(x.shape[-2:]))
        if x.shape[-2] * x.shape[-1] > limit_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(x)

    module.forward = forward


def test_out_of_memory_halves_tiles_then_fails_clearly(comfy, caplog):
    model = load(comfy, "realesrgan_s4_swinir_100k.pth", fresh=True)
    calls = []
    _oom_above(model.model, 64 * 64, calls)
    image = photo()  # 20x28 -> 80x112 pre-upscaled: fits only in 64 px tiles
    with caplog.at_level(logging.WARNING):
        out = run_node(comfy, image, model, upscale=4.0)[0]
    assert "retrying with 64 px tiles" in caplog.text
    reference = load(comfy, "realesrgan_s4_swinir_100k.pth")
    expected = run_node(comfy, image, reference, upscale=4.0, tiled=True, tile_size=64, tile_stride=32)[0]
    assert torch.equal(out, expected)
    assert calls[0] == (512, 768)  # untiled first, then 512/256/128 px tiles are skipped (image smaller)

    calls.clear()
    _oom_above(model.model, 0, calls)
    with pytest.raises(torch.OutOfMemoryError, match="even in tiles of 64 px"):
        run_node(comfy, image, model, upscale=4.0)


def test_out_of_memory_as_the_runtime_tells_it(comfy, stage1):
    """Newer ComfyUI releases also count an accelerator error saying "out of memory" as one (and clear
    the pending CUDA error): stage 1 asks the runtime, so it retries in tiles there too."""
    from comfy import model_management as mm

    accelerator_oom = getattr(torch, "AcceleratorError", RuntimeError)("CUDA error: out of memory")
    assert stage1.is_oom(accelerator_oom) == hasattr(mm, "is_oom")
    assert stage1.is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert stage1.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"))
    assert not stage1.is_oom(RuntimeError("shapes cannot be multiplied"))
    assert not stage1.is_oom(ValueError("out of memory"))


def test_memory_asked_for_is_the_activations_only(comfy, stage1, model_loads):
    """``load_models_gpu`` adds the model's own size to ``memory_required``: stage 1 asks for its
    activations only, as core's upscale node does since it loads through model management."""
    model = load(comfy, "realesrgan_s4_swinir_100k.pth")
    cleaner = stage1.Cleaner.from_spandrel(model)
    run_node(comfy, photo(), model, upscale=4.0)
    height, width = stage1.plan(20, 28, stage1.resolve_rules("auto", cleaner), cleaner.scale,
                                stage1.Settings(upscale=4.0)).model_input  # untiled
    activations = height * width * 3 * 4 * max(cleaner.scale, 1) * 384  # ComfyUI's upscale-node heuristic
    assert model_loads == [(model.patcher, activations, True)]


def test_tiles_chosen_when_the_image_does_not_fit(comfy, stage1, monkeypatch, caplog):
    """Untiled settings become tiled ones before running when the model input would not fit in the
    free memory ComfyUI reports (a CPU has no out-of-memory error to recover from); the tile is
    halved until one fits. Free memory is made small here; the result is the explicit tiled run."""
    from comfy import model_management as mm

    model = load(comfy, "realesrgan_s4_swinir_100k.pth")
    cleaner = stage1.Cleaner.from_spandrel(model)
    activations = stage1.memory_estimate(cleaner, 64 * 64)
    settings = stage1.Settings(upscale=4.0)
    the_plan = stage1.plan(20, 28, stage1.resolve_rules("auto", cleaner), cleaner.scale, settings)

    def estimate(pixels):
        return stage1.memory_estimate(cleaner, pixels)

    assert stage1.fit_to_memory(settings, the_plan, cleaner, 1e15, estimate) == settings
    fitted = stage1.fit_to_memory(settings, the_plan, cleaner, activations, estimate)
    assert (fitted.tiled, fitted.tile_size, fitted.tile_stride) == (True, 64, 32)
    assert stage1.fit_to_memory(settings, the_plan, cleaner, 4 * activations, estimate).tile_size == 128

    image = photo()
    monkeypatch.setattr(mm, "get_free_memory", lambda *args, **kwargs: activations)
    with caplog.at_level(logging.WARNING):
        out = run_node(comfy, image, model, upscale=4.0)[0]
    monkeypatch.undo()
    assert "running it in 64 px tiles (stride 32)" in caplog.text
    expected = run_node(comfy, image, model, upscale=4.0, tiled=True, tile_size=64, tile_stride=32)[0]
    assert torch.equal(out, expected)


def test_progress_per_tile_and_cancel_between_tiles(comfy, stage1, monkeypatch):
    from comfy import model_management as mm
    from comfy import utils as comfy_utils

    model = load(comfy, "BSRNet.pth")
    updates = []
    previous = comfy_utils.PROGRESS_BAR_HOOK
    comfy_utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    per_image = len(comfy.pack_module("diffbir_modules.tiling").sliding_windows(20, 28, 16, 8))
    total = 2 * per_image
    try:
        # Newer ComfyUI throttles what reaches the hook (time and percent since the last update);
        # the first and the final update always arrive.
        run_node(comfy, photo(b=2), model, upscale=1.0, min_short_side=0, tiled=True, tile_size=16, tile_stride=8)
        assert updates[0] == (1, total) and updates[-1] == (total, total)
        assert [v for v, _ in updates] == sorted(set(v for v, _ in updates))
        # With the throttle off (older releases have none), one update per tile.
        monkeypatch.setattr(comfy_utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0, raising=False)
        monkeypatch.setattr(comfy_utils, "PROGRESS_THROTTLE_MIN_PERCENT", 0.0, raising=False)
        updates.clear()
        run_node(comfy, photo(b=2), model, upscale=1.0, min_short_side=0, tiled=True, tile_size=16, tile_stride=8)
        assert updates == [(i + 1, total) for i in range(total)]

        def cancel_after_first(value, total, preview, node_id=None):
            updates.append((value, total))
            mm.interrupt_current_processing(True)

        updates.clear()
        comfy_utils.set_progress_bar_global_hook(cancel_after_first)
        with pytest.raises(mm.InterruptProcessingException):
            run_node(comfy, photo(b=2), model, upscale=1.0, min_short_side=0, tiled=True, tile_size=16, tile_stride=8)
        assert len(updates) == 1
    finally:
        comfy_utils.set_progress_bar_global_hook(previous)
        mm.interrupt_current_processing(False)


@pytest.mark.parametrize("name", ["general_swinir_v1.ckpt", "BSRNet.pth", "scunet_color_real_psnr.pth"])
def test_untiled_progress_per_block_and_cancel_between_blocks(comfy, stage1, monkeypatch, name):
    """Untiled, the bar moves while the network runs: a step as each block of ``progress_pieces``
    finishes (SwinIR's residual groups, BSRNet's RRDBs, SCUNet's blocks of each level) and one at each
    image's end; Cancel stops the run after the block that was running."""
    from comfy import model_management as mm
    from comfy import utils as comfy_utils

    model = load(comfy, name)
    pieces = stage1.progress_pieces(model.model)
    assert len(pieces) >= 4, [type(p).__name__ for p in pieces]
    total = 2 * (len(pieces) + 1)
    updates = []
    previous = comfy_utils.PROGRESS_BAR_HOOK
    monkeypatch.setattr(comfy_utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0, raising=False)
    monkeypatch.setattr(comfy_utils, "PROGRESS_THROTTLE_MIN_PERCENT", 0.0, raising=False)
    comfy_utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        run_node(comfy, photo(b=2), model, upscale=1.0, min_short_side=0)
        # every block reported once per image, in order, and the bar ends full
        assert updates == [(i + 1, total) for i in range(total)]

        def cancel_after_first(value, total, preview, node_id=None):
            updates.append((value, total))
            mm.interrupt_current_processing(True)

        updates.clear()
        comfy_utils.set_progress_bar_global_hook(cancel_after_first)
        with pytest.raises(mm.InterruptProcessingException):
            run_node(comfy, photo(b=2), model, upscale=1.0, min_short_side=0)
        assert updates == [(1, total)]  # stopped after the first block of the first image
    finally:
        comfy_utils.set_progress_bar_global_hook(previous)
        mm.interrupt_current_processing(False)


def test_model_goes_through_model_management_and_is_offloaded(comfy):
    from comfy import model_management as mm

    model = load(comfy, "BSRNet.pth")
    seen = []
    original = mm.load_models_gpu

    def spy(models, *args, **kwargs):
        seen.extend(m.model for m in models)
        return original(models, *args, **kwargs)

    mm.load_models_gpu = spy
    try:
        run_node(comfy, photo(), model, upscale=1.0, min_short_side=0)
    finally:
        mm.load_models_gpu = original
    assert seen and all(m is model.model for m in seen)
    assert not any(loaded.model is not None and loaded.model.model is model.model
                   for loaded in mm.current_loaded_models)
