"""DiffBIR Tiled Sampling: the MODEL patch in the stock samplers with the IRControlNet, tile batches,
LoRAs, stock ControlNets, masks, automatic settings, progress and the errors for bad settings.
Tiny random models (the tiny UNet never downsamples, so 8x8-latent tiles work), real ComfyUI."""

import pytest
import torch

from devkit import model_factory
from devkit.model_factory import install_model

H, W = 128, 192


def stage1_image(b=1, h=H, w=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, max(1, h // 16), max(1, w // 16), generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear") * 0.8
    return (img + torch.rand(b, 3, h, w, generator=g) * 0.2).clamp(0, 1).movedim(1, -1).contiguous()


@pytest.fixture(scope="module")
def td(comfy):
    return comfy.pack_module("diffbir_modules.tiled_diffusion")


@pytest.fixture(scope="module")
def models(comfy, sd2_tiny):
    irc_name = install_model("diffbir", model_factory.ircontrolnet_file("tiny", fmt="pth"), "irc-tiny.pth")
    with torch.inference_mode():
        model, clip, vae = comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(sd2_tiny)
        control = comfy.node_class("DiffBIRIRControlNetLoader").execute(irc_name, "v2").result[0]
        encode = comfy.node_class("CLIPTextEncode")()
        pos, neg = encode.encode(clip, "a photo")[0], encode.encode(clip, "blurry")[0]
    return {"model": model, "vae": vae, "control": control, "pos": pos, "neg": neg, "applied": {}}


def applied(comfy, models, h=H, w=W, seed=0):
    """(positive, negative, latent) from DiffBIR Apply IRControlNet (padding 8: the official tiled
    mode), cached per image size (VAE-encoding is the slow part)."""
    key = (h, w, seed)
    if key not in models["applied"]:
        with torch.inference_mode():
            models["applied"][key] = comfy.node_class("DiffBIRApplyIRControlNet").execute(
                models["pos"], models["neg"], models["control"], models["vae"], stage1_image(1, h, w, seed), 1.0, 0.0,
                1.0, "noise", "8").result
    return models["applied"][key]


def reference(comfy, models, which):
    """The untiled and the default tiled (64 / 32 px, one tile per call) 2-step results on the 128 x 192
    image, computed once for the module."""
    cache = models.setdefault("reference", {})
    if which not in cache:
        pos, neg, latent = applied(comfy, models)
        model = models["model"] if which == "untiled" else tiled(comfy, models["model"])
        cache[which] = ksampler(comfy, model, pos, neg, latent)
    return cache[which]


def tiled(comfy, model, tile=64, stride=32, batch=1, weighting="gaussian"):
    with torch.inference_mode():
        return comfy.node_class("DiffBIRTiledSampling").execute(model, tile, stride, batch, weighting).result[0]


def ksampler(comfy, model, pos, neg, latent, steps=2, cfg=4.0, seed=3):
    with torch.inference_mode():
        return comfy.node_class("KSampler")().sample(model, seed, steps, cfg, "euler", "normal", pos, neg, latent,
                                                     denoise=1.0)[0]["samples"]


class ShapeRecorder:
    """Spatial sizes of the inputs of a module (forward pre-hook)."""

    def __init__(self, module):
        self.shapes = []
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x = kwargs.get("x", args[0] if args else None)
        self.shapes.append(tuple(x.shape))

    def close(self):
        self.handle.remove()


# -- results ----------------------------------------------------------------------------------------
def test_one_window_over_everything_equals_untiled(comfy, models):
    """A tile as large as the image: one window, weights cancel; the result is the untiled one."""
    pos, neg, latent = applied(comfy, models, 128, 128)
    untiled = ksampler(comfy, models["model"], pos, neg, latent)
    one = ksampler(comfy, tiled(comfy, models["model"], 128, 64), pos, neg, latent)
    assert (one - untiled).abs().max() <= 1e-5 * untiled.abs().max()


def test_image_smaller_than_a_tile_is_sampled_whole(comfy, models):
    """Official rule: no tiling when either side is smaller than the tile (here 128 px high, tile 192)."""
    pos, neg, latent = applied(comfy, models)
    untiled = reference(comfy, models, "untiled")
    assert torch.equal(ksampler(comfy, tiled(comfy, models["model"], 192, 96), pos, neg, latent), untiled)


def test_unet_and_ircontrolnet_see_the_same_windows(comfy, models, td):
    """Every UNet and IRControlNet call is on 8 x 8 latent tiles (15 windows, cond and uncond batched),
    never the whole 16 x 24 latent; the control's condition is the matching window of the condition."""
    pos, neg, latent = applied(comfy, models)
    model = tiled(comfy, models["model"])
    control = pos[0][1]["control"]
    unet = ShapeRecorder(models["model"].model.diffusion_model)
    irc = ShapeRecorder(control.control_model)
    hints = []
    real_hint_for = type(control).hint_for

    def hint_for(self, x, batched_number, window=None):
        hint = real_hint_for(self, x, batched_number, window)
        hints.append((window, hint[0].clone()))
        return hint

    type(control).hint_for = hint_for
    try:
        out = ksampler(comfy, model, pos, neg, latent, steps=2)
    finally:
        type(control).hint_for = real_hint_for
        unet.close()
        irc.close()
    windows = td.latent_windows(16, 24, 64, 32)
    assert len(windows) == 15
    assert unet.shapes == [(2, 4, 8, 8)] * 30 and irc.shapes == [(2, 4, 8, 8)] * 30
    assert [w for w, _ in hints[:15]] == windows
    condition = control.condition
    for (y0, y1, x0, x1), hint in hints[:15]:
        assert torch.equal(hint, condition[0, :, y0:y1, x0:x1])
    assert out.shape == (1, 4, 16, 24) and torch.isfinite(out).all()


def test_tiled_result_is_close_to_untiled_but_not_equal(comfy, models):
    untiled = reference(comfy, models, "untiled")
    out = reference(comfy, models, "tiled")
    difference = (out - untiled).abs().mean() / untiled.abs().mean()
    assert 1e-4 < difference < 0.5


def test_tile_batches_give_the_same_result(comfy, models):
    """Tiles evaluated 1, 4 (last batch of 3) or automatically (one per call on a CPU): the same numbers."""
    pos, neg, latent = applied(comfy, models)
    one = reference(comfy, models, "tiled")
    four = ksampler(comfy, tiled(comfy, models["model"], batch=4), pos, neg, latent)
    auto = ksampler(comfy, tiled(comfy, models["model"], batch=0), pos, neg, latent)
    scale = one.abs().max()
    assert (four - one).abs().max() <= 1e-5 * scale and (auto - one).abs().max() <= 1e-5 * scale


def test_the_uniform_and_symmetric_weightings_differ_from_the_official(comfy, models):
    pos, neg, latent = applied(comfy, models)
    official = reference(comfy, models, "tiled")
    for weighting in ("uniform", "gaussian_symmetric"):
        other = ksampler(comfy, tiled(comfy, models["model"], weighting=weighting), pos, neg, latent)
        assert (other - official).abs().max() > 1e-6


def test_with_a_lora_before_or_after_the_tiling(comfy, models):
    """LoRA patches the weights, tiling wraps the calls: either order gives the same result, and the
    LoRA changes it."""
    lora = install_model("loras", model_factory.sd2_lora_file("tiny"), "tiny-lora.safetensors")
    pos, neg, latent = applied(comfy, models)
    load = comfy.node_class("LoraLoaderModelOnly")()
    with torch.inference_mode():
        lora_then_tiles = tiled(comfy, load.load_lora_model_only(models["model"], lora, 1.0)[0])
        tiles_then_lora = load.load_lora_model_only(tiled(comfy, models["model"]), lora, 1.0)[0]
    a = ksampler(comfy, lora_then_tiles, pos, neg, latent)
    b = ksampler(comfy, tiles_then_lora, pos, neg, latent)
    plain = reference(comfy, models, "tiled")
    assert torch.allclose(a, b, atol=1e-6) and (a - plain).abs().max() > 1e-4


def test_a_second_tiling_node_replaces_the_first(comfy, models):
    pos, neg, latent = applied(comfy, models)
    twice = tiled(comfy, tiled(comfy, models["model"], 128, 64))
    assert torch.equal(ksampler(comfy, twice, pos, neg, latent), reference(comfy, models, "tiled"))


def test_with_sampler_custom_advanced(comfy, models):
    pos, neg, latent = applied(comfy, models)
    model = tiled(comfy, models["model"])
    with torch.inference_mode():
        noise = comfy.node_class("RandomNoise").execute(3).result[0]
        guider = comfy.node_class("CFGGuider").execute(model, pos, neg, 4.0).result[0]
        sampler = comfy.node_class("KSamplerSelect").execute("euler").result[0]
        sigmas = comfy.node_class("BasicScheduler").execute(model, "normal", 2, 1.0).result[0]
        out = comfy.node_class("SamplerCustomAdvanced").execute(noise, guider, sampler, sigmas, latent).result[0]
    assert torch.allclose(out["samples"], reference(comfy, models, "tiled"), atol=1e-5)


# -- stock ControlNets and masks ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def stock_controlnet(comfy):
    name = install_model("controlnet", model_factory.stock_controlnet_file("tiny"), "tiny-stock-cn.safetensors")
    with torch.inference_mode():
        return comfy.node_class("ControlNetLoader")().load_controlnet(name)[0]


def test_stock_controlnet_hint_is_cut_not_squeezed(comfy, models, stock_controlnet):
    """A stock ControlNet chained with the IRControlNet: its hint is resized once to the whole image (as
    ComfyUI does untiled) and each tile gets its own 64 x 64 px part of it. One window over everything
    equals the untiled result."""
    pos, neg, latent = applied(comfy, models)
    hint_image = stage1_image(1, H, W, seed=7)
    with torch.inference_mode():
        pos2, neg2 = comfy.node_class("ControlNetApplyAdvanced")().apply_controlnet(
            pos, neg, stock_controlnet, hint_image, 0.7, 0.0, 1.0)
    stock = pos2[0][1]["control"]
    hints = []
    real = type(stock).get_control

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        out = real(self, x_noisy, t, cond, batched_number, transformer_options)
        hints.append(self.cond_hint[0].clone())
        return out

    type(stock).get_control = get_control
    try:
        out = ksampler(comfy, tiled(comfy, models["model"]), pos2, neg2, latent, steps=1)
    finally:
        type(stock).get_control = real
    assert len(hints) == 15 and all(h.shape == (3, 64, 64) for h in hints)
    full = hint_image.movedim(-1, 1)[0]
    assert torch.allclose(hints[1].float(), full[:, 0:64, 32:96], atol=1e-3)
    assert torch.allclose(hints[-1].float(), full[:, 64:128, 128:192], atol=1e-3)
    alone = ksampler(comfy, tiled(comfy, models["model"]), pos, neg, latent, steps=1)
    assert torch.isfinite(out).all() and (out - alone).abs().max() > 1e-4
    pos_s, neg_s, latent_s = applied(comfy, models, 128, 128)
    with torch.inference_mode():
        pos3, neg3 = comfy.node_class("ControlNetApplyAdvanced")().apply_controlnet(
            pos_s, neg_s, stock_controlnet, stage1_image(1, 128, 128, seed=7), 0.7, 0.0, 1.0)
    untiled = ksampler(comfy, models["model"], pos3, neg3, latent_s, steps=1)
    one = ksampler(comfy, tiled(comfy, models["model"], 128, 64), pos3, neg3, latent_s, steps=1)
    assert (one - untiled).abs().max() <= 1e-5 * untiled.abs().max()


def test_masked_conditioning_is_cut_per_tile(comfy, models):
    """Conditioning Set Mask: the mask is sliced with the tile (one window = untiled exactly; tiled
    runs)."""
    pos, neg, latent = applied(comfy, models, 128, 128)
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1.0
    with torch.inference_mode():
        masked = comfy.node_class("ConditioningSetMask")().append(pos, mask, "default", 1.0)[0]
    untiled = ksampler(comfy, models["model"], masked, neg, latent, steps=1)
    one = ksampler(comfy, tiled(comfy, models["model"], 128, 64), masked, neg, latent, steps=1)
    assert (one - untiled).abs().max() <= 1e-5 * untiled.abs().max()
    many = ksampler(comfy, tiled(comfy, models["model"]), masked, neg, latent, steps=1)
    assert torch.isfinite(many).all()


def test_area_conditioning_is_refused(comfy, models):
    pos, neg, latent = applied(comfy, models)
    with torch.inference_mode():
        area = comfy.node_class("ConditioningSetArea")().append(pos, 64, 64, 0, 0, 1.0)[0]
    with pytest.raises(ValueError, match="area.*Conditioning Set Mask"):
        ksampler(comfy, tiled(comfy, models["model"]), area, neg, latent, steps=1)


# -- automatic settings, progress -------------------------------------------------------------------
def test_automatic_settings_follow_the_free_memory(comfy, models, td):
    base = models["model"].model
    shape = (1, 4, 256, 256)  # a 2048 x 2048 px image
    whole = base.memory_required([2, 4, 256, 256]) * 1.5
    auto = td.DiffusionTiling()
    assert td.choose_settings(base, shape, auto, 2, whole * 2) == (0, 0, 1)
    tile, stride, batch = td.choose_settings(base, shape, auto, 2, whole / 10)
    assert tile in td.AUTO_TILES and tile < 2048 and stride == tile // 2 and batch >= 1
    tiny = base.memory_required([2, 4, 32, 32]) * 1.5
    assert td.choose_settings(base, shape, auto, 2, tiny * 1.01)[0] == 256
    explicit = td.DiffusionTiling(tile_size=512, tile_stride=128, tile_batch=2)
    assert td.choose_settings(base, shape, explicit, 2, whole * 2) == (512, 128, 2)
    assert td.choose_settings(base, shape, td.DiffusionTiling(tile_size=512, tile_batch=3), 2, tiny) == (512, 256, 1)
    # a CPU gets one tile per call automatically, however much memory is free; an explicit batch still wins
    roomy = base.memory_required([2 * 16, 4, 64, 64]) * 1.5 * 2
    assert td.choose_settings(base, shape, td.DiffusionTiling(tile_size=512), 2, roomy)[2] == 16
    assert td.choose_settings(base, shape, td.DiffusionTiling(tile_size=512), 2, roomy, on_cpu=True)[2] == 1
    assert td.choose_settings(base, shape, td.DiffusionTiling(tile_size=512, tile_batch=3), 2, roomy,
                              on_cpu=True)[2] == 3


def test_progress_runs_over_tiles_and_steps(comfy, models):
    import comfy.utils as utils

    pos, neg, latent = applied(comfy, models)
    seen = []
    previous = utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):
        seen.append((value, total))

    utils.set_progress_bar_global_hook(hook)
    try:
        ksampler(comfy, tiled(comfy, models["model"], batch=4), pos, neg, latent, steps=2)
    finally:
        utils.set_progress_bar_global_hook(previous)
    ours = [(v, t) for v, t in seen if t == 30]
    assert [v for v, _ in ours] == [4, 8, 12, 15, 19, 23, 27, 30]
    assert (2, 2) in seen  # the sampler's own step bar is still there, at the same fractions


# -- bad settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile, stride, message", [
    (32, 0, r"tile_size 32 px is smaller than the minimum 64 px.*256, 512 \(official\)"),
    (100, 0, r"tile_size 100 px is not a multiple of 64.*Use 64 or 128"),
    (520, 256, r"not a multiple of 64.*Use 512 or 576"),
    (512, 640, r"tile_stride 640 px is larger than tile_size 512 px.*8\.\.512 px.*official: half the tile, 256"),
    (512, 100, r"tile_stride 100 px must be a multiple of 8"),
])
def test_bad_tile_settings_name_the_valid_values(comfy, models, tile, stride, message):
    with pytest.raises(ValueError, match=message):
        tiled(comfy, models["model"], tile, stride)


# -- with restoration guidance ------------------------------------------------------------------------
def test_guidance_and_tiling_together(comfy, models):
    """Restoration guidance (a post-CFG x0 patch on the whole latent) with tiled sampling: it runs, and
    the result gets closer to the stage-1 image's latent as the guidance scale rises (0 < 0.01 < 0.03)."""
    pos, neg, latent = applied(comfy, models)
    image = stage1_image(1, H, W, 0)
    with torch.inference_mode():
        target = models["vae"].encode(image)
    distances = []
    for scale in (0.0, 0.01, 0.03):  # reference_steps 0: the official one pull per step (no overshoot here)
        with torch.inference_mode():
            guided = comfy.node_class("DiffBIRRestorationGuidance").execute(
                models["model"], models["vae"], image, scale, "w_mse", "latent", reference_steps=0).result[0]
        out = ksampler(comfy, tiled(comfy, guided), pos, neg, latent, steps=4)
        assert torch.isfinite(out).all()
        distances.append(float(((out - target) ** 2).mean()))
    assert distances[0] > distances[1] > distances[2], distances
