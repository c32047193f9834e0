"""IRControlNet: loader (every published wrapper, bad files), the control object in the stock samplers
(KSampler, KSamplerAdvanced, SamplerCustomAdvanced; cfg 1, batches, LoRA, beside a stock ControlNet),
and the errors users get for wrong inputs. Tiny random models, real ComfyUI."""

import logging
import pickle
import shutil

import pytest
import torch

from devkit import model_factory
from devkit.model_factory import install_model


def stage1_image(b=1, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, max(1, h // 16), max(1, w // 16), generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear") * 0.8
    return (img + torch.rand(b, 3, h, w, generator=g) * 0.2).clamp(0, 1).movedim(1, -1).contiguous()


@pytest.fixture(scope="module")
def irc(comfy):
    return comfy.pack_module("diffbir_modules.ircontrolnet")


@pytest.fixture(scope="module")
def ircontrolnet_tiny():
    return install_model("diffbir", model_factory.ircontrolnet_file("tiny", fmt="pth"), "irc-tiny.pth")


def diffbir_graph(ckpt, ircontrolnet_name, sampler="KSampler", cfg=4.0, steps=2, seed=3, strength=1.0,
                  image_node=None, batch=1, start_point="noise", latent_from="apply", extra=None, version="auto"):
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "irc": {"class_type": "DiffBIRIRControlNetLoader",
                "inputs": {"ircontrolnet_name": ircontrolnet_name, "version": version}},
        "image": image_node or {"class_type": "EmptyImage",
                                "inputs": {"width": 64, "height": 64, "batch_size": batch, "color": 0x8040C0}},
        "apply": {"class_type": "DiffBIRApplyIRControlNet", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "ircontrolnet": ["irc", 0], "vae": ["ckpt", 2],
            "image": ["image", 0], "strength": strength, "start_percent": 0.0, "end_percent": 1.0,
            "start_point": start_point, "padding": "64"}},
    }
    latent = ["apply", 2]
    if latent_from == "empty64x48":
        graph["empty"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}}
        latent = ["empty", 0]
    model = ["ckpt", 0]
    if sampler == "KSampler":
        graph["sample"] = {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["apply", 0], "negative": ["apply", 1], "latent_image": latent, "seed": seed,
            "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    elif sampler == "KSamplerAdvanced":
        graph["sample"] = {"class_type": "KSamplerAdvanced", "inputs": {
            "model": model, "positive": ["apply", 0], "negative": ["apply", 1], "latent_image": latent,
            "add_noise": "enable", "noise_seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    elif sampler == "SamplerCustomAdvanced":
        graph.update({
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "guider": {"class_type": "CFGGuider", "inputs": {
                "model": model, "positive": ["apply", 0], "negative": ["apply", 1], "cfg": cfg}},
            "ksampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "sigmas": {"class_type": "BasicScheduler", "inputs": {
                "model": model, "scheduler": "normal", "steps": steps, "denoise": 1.0}},
            "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ksampler", 0], "sigmas": ["sigmas", 0],
                "latent_image": latent}},
        })
    graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    graph["crop"] = {"class_type": "DiffBIRCropToStage1", "inputs": {"image": ["decode", 0], "stage1": ["image", 0]}}
    for node_id, node in (extra or {}).items():
        graph[node_id] = node
    return graph


# -- the network -----------------------------------------------------------------------------------
def test_network_has_the_published_layout(irc):
    """Built on the meta device from the full SD 2.1 IRControlNet shapes: 324 tensors, 13 residuals,
    363,153,280 parameters (the published v2.pth), and the same names and shapes."""
    shapes = model_factory.ircontrolnet_shapes("full")
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    config = irc.config_from_state_dict(meta)
    assert config == irc.IRControlNetConfig()
    assert config.num_residuals == 13
    with torch.device("meta"):
        net = irc.IRControlNet(config)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == shapes and len(ours) == 324
    assert sum(v.numel() for v in net.state_dict().values()) == 363_153_280


@pytest.mark.parametrize("variant", ["tiny", "small"])
def test_network_size_is_read_from_the_weights(irc, variant):
    meta = {k: torch.empty(s, device="meta") for k, s in model_factory.ircontrolnet_shapes(variant).items()}
    config = irc.config_from_state_dict(meta)
    cfg = model_factory.unet_config(variant)
    assert list(config.channel_mult) == cfg["channel_mult"]
    assert list(config.num_res_blocks) == cfg["num_res_blocks"]
    assert config.context_dim == 1024 and config.model_channels == 320
    assert config.num_residuals == len([k for k in meta if k.startswith("zero_convs.") and k.endswith(".weight")]) + 1


# -- the loader ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", model_factory.IRCONTROLNET_FORMATS)
def test_loader_reads_every_published_wrapper(comfy, irc, fmt):
    name = install_model("diffbir", model_factory.ircontrolnet_file("tiny", fmt=fmt), f"irc-tiny-{fmt}.bin")
    with torch.inference_mode():
        control = comfy.node_class("DiffBIRIRControlNetLoader").execute(name, "auto").result[0]
    assert isinstance(control, irc.IRControlNetControl)
    expected = model_factory.ircontrolnet_state_dict("tiny")
    got = control.control_model.state_dict()
    assert set(got) == set(expected)
    tolerance = 1e-3 if fmt.startswith("fp16") else 0
    for key, value in expected.items():
        assert torch.allclose(got[key].float(), value, atol=tolerance, rtol=tolerance), key
    assert control.version == ("v1" if fmt == "v1_full" else None)  # no known hashes ship; v1 full = v1
    assert control.fingerprint == irc.fingerprint(expected)  # fp16 copies keep the fingerprint


def test_loader_version_override_and_known_hash(comfy, irc, ircontrolnet_tiny, monkeypatch):
    loader = comfy.node_class("DiffBIRIRControlNetLoader")
    with torch.inference_mode():
        assert loader.execute(ircontrolnet_tiny, "v2.1").result[0].version == "v2.1"
        fp = irc.fingerprint(model_factory.ircontrolnet_state_dict("tiny"))
        monkeypatch.setitem(irc.KNOWN_FINGERPRINTS, fp, "v2")
        assert loader.execute(ircontrolnet_tiny, "auto").result[0].version == "v2"
        # a known v2 file run as v1 would sample with the wrong schedule: refused, with what to set
        with pytest.raises(ValueError, match="this is a v2 IRControlNet .known file.*version v1 was chosen.*"
                                             "Set version to auto or v2"):
            loader.execute(ircontrolnet_tiny, "v1")


def test_loader_refuses_an_sd_checkpoint(comfy, sd2_tiny):
    name = install_model("diffbir", model_factory.sd2_checkpoint("tiny"), "sd2-by-mistake.safetensors")
    with pytest.raises(ValueError, match="sd2-by-mistake.safetensors.*Stable Diffusion checkpoint.*Load Checkpoint"):
        comfy.node_class("DiffBIRIRControlNetLoader").execute(name, "auto")


def test_loader_refuses_a_stock_controlnet(comfy):
    name = install_model("diffbir", model_factory.stock_controlnet_file("tiny"), "stock-cn.safetensors")
    with pytest.raises(ValueError, match="stock-cn.safetensors.*stock ControlNet.*Load ControlNet Model"):
        comfy.node_class("DiffBIRIRControlNetLoader").execute(name, "auto")


# Files made in tmp_path are read with the loader's function directly (the node only resolves the
# name), so no links to temporary files are left in the shared test models folder.
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_loader_names_a_truncated_file(irc, tmp_path, fmt):
    source = model_factory.ircontrolnet_file("tiny", fmt=fmt)
    truncated = tmp_path / f"truncated-{fmt}{source.suffix}"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"truncated-{fmt}.*truncated or corrupt.*download the file again"):
        irc.load_ircontrolnet(str(truncated))


def test_loader_names_an_unknown_state_dict(irc, tmp_path):
    path = tmp_path / "something.pth"
    torch.save({"first.weight": torch.randn(8, 3, 3, 3), "last.bias": torch.randn(3)}, path)
    with pytest.raises(ValueError, match="something.pth: not an IRControlNet state dict.*first.weight"):
        irc.load_ircontrolnet(str(path))


def test_loader_names_a_stage1_file(irc, tmp_path):
    path = tmp_path / "some-upscaler.pth"
    torch.save({"conv_first.weight": torch.randn(8, 3, 3, 3), "conv_last.bias": torch.randn(3)}, path)
    with pytest.raises(ValueError, match="some-upscaler.pth is a stage-1 cleaner.*DiffBIR Load Stage-1 Model.*"
                                         "Expected an IRControlNet"):
        irc.load_ircontrolnet(str(path))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (shutil.copy, (__file__, self.marker))


@pytest.mark.parametrize("container", ["zip", "plain-pickle"])
def test_loader_refuses_a_pickle_with_code(irc, tmp_path, container):
    marker = tmp_path / "payload-ran"
    sd = dict(model_factory.ircontrolnet_state_dict("tiny"))
    sd["payload"] = _Payload(str(marker))
    path = tmp_path / f"evil-{container}.pth"
    if container == "zip":
        torch.save(sd, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(sd, f)
    with pytest.raises(ValueError, match=f"evil-{container}.pth .*: refused.*shutil.copy.*could run code"):
        irc.load_ircontrolnet(str(path))
    assert not marker.exists(), "the payload ran"


def test_loader_reads_lightning_metadata_without_running_it(comfy, irc, tmp_path, monkeypatch):
    """Old v1 full checkpoints are PyTorch-Lightning training checkpoints: their callback objects are
    read as inert stand-ins, the tensors load."""
    import sys
    import types

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.dirpath = "logs"

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    sd = {"control_model." + k: v for k, v in model_factory.ircontrolnet_state_dict("tiny").items()}
    path = tmp_path / "full_v1_lightning.ckpt"
    torch.save({"state_dict": sd, "callbacks": {"cb": ModelCheckpoint()}, "epoch": 3}, path)
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.delitem(sys.modules, name)
    with torch.inference_mode():
        control = irc.load_ircontrolnet(str(path))
    assert control.version == "v1"


# -- the condition and the apply node ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(comfy, sd2_tiny, ircontrolnet_tiny):
    with torch.inference_mode():
        model, clip, vae = comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(sd2_tiny)[:3]
        control = comfy.node_class("DiffBIRIRControlNetLoader").execute(ircontrolnet_tiny, "auto").result[0]
    return model, clip, vae, control


@pytest.mark.parametrize("padding,size,latent", [("64", (40, 72), (8, 16)), ("8+latent8", (40, 72), (8, 16)),
                                                 ("8", (40, 72), (5, 9))])
def test_condition_is_the_padded_posterior_mode(comfy, irc, tiny_models, padding, size, latent):
    _, _, vae, control = tiny_models
    image = stage1_image(1, *size)
    apply = comfy.node_class("DiffBIRApplyIRControlNet")
    with torch.inference_mode():
        pos, neg, out = apply.execute([[torch.zeros(1, 77, 1024), {}]], [[torch.zeros(1, 77, 1024), {}]], control, vae,
                                      image, 1.0, 0.0, 1.0, "cond", padding).result
        rgb = image.movedim(-1, 1)
        multiple = 64 if padding == "64" else 8
        h, w = size
        padded = torch.nn.functional.pad(rgb, (0, (-w) % multiple, 0, (-h) % multiple))
        expected = vae.encode(padded.movedim(1, -1)).float()
        if padding == "8+latent8":
            expected = torch.nn.functional.pad(expected, (0, (-expected.shape[-1]) % 8, 0, (-expected.shape[-2]) % 8))
    assert tuple(out["samples"].shape) == (1, 4, *latent)
    # start point "cond": the LATENT is the unscaled latent (the sampler applies x 0.18215 itself)
    assert torch.allclose(out["samples"], expected, atol=1e-4)
    c = pos[0][1]["control"]
    assert c is neg[0][1]["control"], "cond and uncond must share one control (same condition, batched together)"
    assert torch.allclose(c.condition, expected * 0.18215, atol=1e-4)
    assert c.stage1_size == size and c.padding == padding
    assert pos[0][1]["control_apply_to_uncond"] is False


def test_start_point_noise_gives_an_empty_latent_of_the_condition_size(comfy, tiny_models):
    _, _, vae, control = tiny_models
    with torch.inference_mode():
        out = comfy.node_class("DiffBIRApplyIRControlNet").execute(
            [[torch.zeros(1, 77, 1024), {}]], [[torch.zeros(1, 77, 1024), {}]], control, vae, stage1_image(2, 72, 64),
            1.0, 0.0, 1.0, "noise", "64").result[2]
    assert tuple(out["samples"].shape) == (2, 4, 16, 8) and not out["samples"].any()


def test_crop_to_stage1_removes_the_padding(comfy):
    crop = comfy.node_class("DiffBIRCropToStage1")
    decoded = torch.rand(1, 128, 128, 3)
    out = crop.execute(decoded, torch.rand(1, 72, 100, 3)).result[0]
    assert torch.equal(out, decoded[:, :72, :100])
    with pytest.raises(ValueError, match="smaller than the stage-1 image"):
        crop.execute(torch.rand(1, 64, 64, 3), torch.rand(1, 72, 100, 3))


# -- in the stock samplers -----------------------------------------------------------------------------
# Node classes are called directly on models loaded once per module (loading the checkpoint is what
# costs time on a CPU); the whole graph through ComfyUI's executor runs in the server test below.
@pytest.fixture(scope="module")
def prompts(comfy, tiny_models):
    clip = tiny_models[1]
    encode = comfy.node_class("CLIPTextEncode")()
    with torch.inference_mode():
        return encode.encode(clip, "a photo")[0], encode.encode(clip, "blurry")[0]


def apply_node(comfy, models, prompts, image, strength=1.0, start_point="noise", positive=None, negative=None,
               control=None):
    with torch.inference_mode():
        return comfy.node_class("DiffBIRApplyIRControlNet").execute(
            positive or prompts[0], negative or prompts[1], control or models[3], models[2], image, strength, 0.0, 1.0,
            start_point, "64").result


def run_sampler(comfy, model, positive, negative, latent, sampler="KSampler", cfg=4.0, steps=2, seed=3):
    with torch.inference_mode():
        if sampler == "KSampler":
            return comfy.node_class("KSampler")().sample(model, seed, steps, cfg, "euler", "normal", positive, negative,
                                                         latent, denoise=1.0)[0]["samples"]
        if sampler == "KSamplerAdvanced":
            return comfy.node_class("KSamplerAdvanced")().sample(
                model, "enable", seed, steps, cfg, "euler", "normal", positive, negative, latent, 0, 10000,
                "disable")[0]["samples"]
        noise = comfy.node_class("RandomNoise").execute(seed).result[0]
        guider = comfy.node_class("CFGGuider").execute(model, positive, negative, cfg).result[0]
        sampler_object = comfy.node_class("KSamplerSelect").execute("euler").result[0]
        sigmas = comfy.node_class("BasicScheduler").execute(model, "normal", steps, 1.0).result[0]
        return comfy.node_class("SamplerCustomAdvanced").execute(noise, guider, sampler_object, sigmas,
                                                                 latent).result[0]["samples"]


@pytest.fixture(scope="module")
def reference_runs(comfy, tiny_models, prompts):
    """KSampler results on one stage-1 image: without the control and at strength 0.5 and 1."""
    model = tiny_models[0]
    image = stage1_image(1, 64, 64)
    runs = {}
    for strength in (0.0, 0.5, 1.0):  # strength 0 attaches nothing: the plain SD result
        runs[strength] = run_sampler(comfy, model, *apply_node(comfy, tiny_models, prompts, image, strength=strength))
    return image, runs


@pytest.mark.parametrize("sampler", ["KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced"])
def test_stock_samplers_run_with_the_control(comfy, tiny_models, prompts, reference_runs, sampler):
    """Same seed, euler, normal schedule: the three stock sampler nodes give the same result with the
    control, and it differs from plain SD."""
    image, runs = reference_runs
    if sampler == "KSampler":
        result = runs[1.0]
    else:
        result = run_sampler(comfy, tiny_models[0], *apply_node(comfy, tiny_models, prompts, image), sampler)
    assert result.shape == (1, 4, 8, 8) and torch.isfinite(result).all()
    assert (result - runs[0.0]).abs().max() > 1e-3, "the IRControlNet did not change the result"
    assert (result - runs[1.0]).abs().max() <= 1e-5 * runs[1.0].abs().max()


def test_strength_scales_the_control(reference_runs):
    _, runs = reference_runs
    assert (runs[0.5] - runs[0.0]).abs().max() > 1e-4 and (runs[1.0] - runs[0.5]).abs().max() > 1e-4


def test_cfg_1_and_a_batch_of_2(comfy, tiny_models, prompts):
    """cfg 1 runs the positive only; each latent of a batch is conditioned on its own image (swapping
    the images changes item 0; item 0 of the batch equals a batch of one with the same noise)."""
    model = tiny_models[0]
    a, b = stage1_image(1, 64, 64, seed=1), stage1_image(1, 64, 64, seed=2)
    pos, neg, latent = apply_node(comfy, tiny_models, prompts, torch.cat([a, b]))
    pos_ba, neg_ba, _ = apply_node(comfy, tiny_models, prompts, torch.cat([b, a]))
    latent = {"samples": latent["samples"]}
    with torch.inference_mode():
        batch = run_sampler(comfy, model, pos, neg, latent, cfg=1.0)
        swapped = run_sampler(comfy, model, pos_ba, neg_ba, latent, cfg=1.0)
        single = run_sampler(comfy, model, *apply_node(comfy, tiny_models, prompts, a), cfg=1.0)
    assert batch.shape == (2, 4, 8, 8) and torch.isfinite(batch).all()
    assert (batch[0] - swapped[0]).abs().max() > 1e-3
    # ComfyUI draws the noise of the whole batch at once, so only the first item matches a batch of 1
    scale = single.abs().max()
    assert (batch[0] - single[0]).abs().max() < 1e-5 * scale


def test_batch_pairs_each_latent_with_its_image(comfy, irc, tiny_models, prompts):
    model = tiny_models[0]
    images = torch.cat([stage1_image(1, 64, 64, seed=1), stage1_image(1, 64, 64, seed=2)])
    pos, _, _ = apply_node(comfy, tiny_models, prompts, images)
    c = pos[0][1]["control"]
    with torch.inference_mode():
        c.pre_run(model.model, lambda p: model.model.model_sampling.percent_to_sigma(p))
        x = torch.randn(4, 4, 8, 8)  # cond and uncond of a batch of 2, batched together
        hint = c.hint_for(x, batched_number=2)
        assert torch.equal(hint[0], c.condition[0]) and torch.equal(hint[1], c.condition[1])
        assert torch.equal(hint[2], c.condition[0]) and torch.equal(hint[3], c.condition[1])
        out = c.get_control(x, torch.full((4,), 3.0), {"c_crossattn": torch.zeros(4, 77, 1024)}, 2, {})
        c.cleanup()
    assert len(out["output"]) == c.config.num_residuals - 1 and len(out["middle"]) == 1
    assert out["output"][0].shape == (4, 320, 8, 8)
    with pytest.raises(ValueError, match=r"stage-1 image batch \(2\) does not match the latent batch \(3\)"):
        c.hint_for(torch.randn(6, 4, 8, 8), batched_number=2)
    # a latent batch of 1 with cfg: cond + uncond make 2 rows, which a stage-1 batch of 2 must not fill
    # (each prompt would be conditioned on another image, and one sample would stand for both)
    with pytest.raises(ValueError, match=r"stage-1 image batch \(2\) does not match the latent batch \(1\)"):
        c.hint_for(torch.randn(2, 4, 8, 8), batched_number=2)
    # start/end percent: outside the range the control (and its cost) is skipped
    late = c.copy()
    late.timestep_percent_range = (0.5, 1.0)
    ms = model.model.model_sampling
    with torch.inference_mode():
        late.pre_run(model.model, ms.percent_to_sigma)
        cond = {"c_crossattn": torch.zeros(2, 77, 1024)}
        x = torch.randn(2, 4, 8, 8)
        assert late.get_control(x, ms.percent_to_sigma(0.2) * torch.ones(2), cond, 1, {}) is None
        assert late.get_control(x, ms.percent_to_sigma(0.7) * torch.ones(2), cond, 1, {}) is not None
        late.cleanup()


def test_with_a_lora_patched_model(comfy, tiny_models, prompts, reference_runs):
    image, runs = reference_runs
    lora = install_model("loras", model_factory.sd2_lora_file("tiny"), "tiny-lora.safetensors")
    with torch.inference_mode():
        lora_model = comfy.node_class("LoraLoaderModelOnly")().load_lora_model_only(tiny_models[0], lora, 1.0)[0]
    plain = runs[1.0]
    patched = run_sampler(comfy, lora_model, *apply_node(comfy, tiny_models, prompts, image))
    assert torch.isfinite(patched).all() and (patched - plain).abs().max() > 1e-4


@pytest.fixture(scope="module")
def stock_controlnet(comfy):
    name = install_model("controlnet", model_factory.stock_controlnet_file("tiny"), "tiny-stock-cn.safetensors")
    with torch.inference_mode():
        return comfy.node_class("ControlNetLoader")().load_controlnet(name)[0]


@pytest.mark.parametrize("order", ["stock after", "stock before"])
def test_beside_a_stock_controlnet(comfy, irc, tiny_models, prompts, stock_controlnet, reference_runs, order):
    model = tiny_models[0]
    image, runs = reference_runs
    stock_apply = comfy.node_class("ControlNetApplyAdvanced")()
    pos, neg, latent = apply_node(comfy, tiny_models, prompts, image)
    alone = runs[1.0]
    with torch.inference_mode():
        if order == "stock after":
            pos2, neg2 = stock_apply.apply_controlnet(pos, neg, stock_controlnet, image, 0.7, 0.0, 1.0)
            expected_chain = ["ControlNet", "IRControlNetControl"]
        else:
            p, n = stock_apply.apply_controlnet(prompts[0], prompts[1], stock_controlnet, image, 0.7, 0.0, 1.0)
            pos2, neg2, _ = apply_node(comfy, tiny_models, prompts, image, positive=p, negative=n)
            expected_chain = ["IRControlNetControl", "ControlNet"]
    assert [type(c).__name__ for c in irc.control._chain(pos2[0][1]["control"])] == expected_chain
    both = run_sampler(comfy, model, pos2, neg2, latent)
    assert torch.isfinite(both).all() and (both - alone).abs().max() > 1e-4


# -- wrong inputs at sampling time ----------------------------------------------------------------------
def test_a_latent_of_another_size_is_an_error(comfy, tiny_models, prompts):
    pos, neg, _ = apply_node(comfy, tiny_models, prompts, stage1_image(1, 64, 64))
    wrong = {"samples": torch.zeros(1, 4, 6, 8)}
    with pytest.raises(ValueError, match=r"latent being sampled is 8x6.*condition latent is 8x8.*LATENT output"):
        run_sampler(comfy, tiny_models[0], pos, neg, wrong)


def test_a_stage1_image_of_another_size_than_the_latent_is_an_error(comfy, tiny_models, prompts):
    pos, neg, _ = apply_node(comfy, tiny_models, prompts, stage1_image(1, 64, 64))
    _, _, other = apply_node(comfy, tiny_models, prompts, stage1_image(1, 64, 128))
    with pytest.raises(ValueError, match=r"latent being sampled is 16x8.*condition latent is 8x8"):
        run_sampler(comfy, tiny_models[0], pos, neg, other)


def _bare_model(comfy, kind):
    """A real ComfyUI BaseModel of another family (empty weights: the check happens before any forward)."""
    import comfy.model_patcher
    import comfy.supported_models

    base = dict(model_factory.unet_config("tiny"))
    if kind == "SD15":
        base.update(context_dim=768, use_linear_in_transformer=False, num_head_channels=-1, num_heads=8)
        config = comfy.supported_models.SD15(base)
    else:
        base.update(context_dim=2048, adm_in_channels=2816, num_classes="sequential")
        config = comfy.supported_models.SDXL(base)
    return config.get_model({})


@pytest.mark.parametrize("kind,pattern", [("SD15", "SD 1.x-shaped model.*context_dim 768 vs 1024"),
                                          ("SDXL", "SDXL-shaped model.*context_dim 2048 vs 1024")])
def test_a_wrong_base_model_is_a_clear_error(comfy, tiny_models, kind, pattern):
    control = tiny_models[3].copy()
    model = _bare_model(comfy, kind)
    with pytest.raises(ValueError, match=f"cannot condition the model being sampled, an {pattern}.*SD 2.1"):
        control.pre_run(model, lambda p: 1.0)


def test_v21_on_an_eps_model_warns(comfy, irc, tiny_models, caplog):
    model = tiny_models[0]
    control = tiny_models[3].copy()
    control.version = "v2.1"
    with caplog.at_level(logging.WARNING, logger="DiffBIR"):
        control.pre_run(model.model, lambda p: 1.0)
    control.cleanup()
    assert "v2.1 IRControlNet is sampling an eps-prediction model" in caplog.text
    import comfy.model_sampling

    class VModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
        pass

    assert control.prediction_warning(VModelSampling()) is None
    control.version = "v2"
    assert "v-prediction" in control.prediction_warning(VModelSampling())


# -- windows (the interface for tiled sampling) -----------------------------------------------------
def test_windows_slice_the_condition(comfy, irc, tiny_models):
    model, _, vae, control = tiny_models
    with torch.inference_mode():
        pos = comfy.node_class("DiffBIRApplyIRControlNet").execute(
            [[torch.zeros(1, 77, 1024), {}]], [[torch.zeros(1, 77, 1024), {}]], control, vae, stage1_image(1, 128, 192),
            1.0, 0.0, 1.0, "noise", "64").result[0]
        c = pos[0][1]["control"]
        c.pre_run(model.model, lambda p: model.model.model_sampling.percent_to_sigma(p))
        x = torch.randn(2, 4, 8, 12)
        window = (4, 12, 6, 18)
        assert torch.equal(c.hint_for(x, 2, window), c.condition[..., 4:12, 6:18].expand(2, -1, -1, -1))
        cond = {"c_crossattn": torch.zeros(2, 77, 1024)}
        sigma = torch.full((2,), 2.0)
        direct = c.control_for_window(x, sigma, cond, 2, {}, window)
        via_options = c.get_control(x, sigma, cond, 2, {"diffbir_window": window})
        assert all(torch.equal(a, b) for a, b in zip(direct["output"], via_options["output"]))
        with pytest.raises(ValueError, match=r"latent being sampled is 12x8.*condition latent is 24x16"):
            c.get_control(x, sigma, cond, 2, {})
        with pytest.raises(ValueError, match="window .* lies outside"):
            c.control_for_window(x, sigma, cond, 2, {}, (10, 18, 0, 12))
        c.cleanup()


def test_with_condition_and_replace_helpers(comfy, irc, tiny_models):
    _, _, vae, control = tiny_models
    with torch.inference_mode():
        pos, neg, _ = comfy.node_class("DiffBIRApplyIRControlNet").execute(
            [[torch.zeros(1, 77, 1024), {}]], [[torch.zeros(1, 77, 1024), {}]], control, vae, stage1_image(1, 64, 64),
            0.8, 0.1, 0.9, "noise", "64").result
    [c] = irc.find_ircontrolnets(pos)
    new_latent = c.condition + 1
    pos2, neg2 = irc.replace_ircontrolnets([pos, neg], lambda c: c.with_condition(new_latent))
    c2 = pos2[0][1]["control"]
    assert c2 is neg2[0][1]["control"] and c2 is not c
    assert torch.equal(c2.condition, new_latent) and not torch.equal(c.condition, new_latent)
    assert (c2.strength, c2.timestep_percent_range, c2.stage1_size) == (0.8, (0.1, 0.9), (64, 64))


# -- through the headless server ------------------------------------------------------------------------
@pytest.mark.server
def test_restoration_graph_through_the_server(comfy_server, sd2_tiny, ircontrolnet_tiny):
    graph = diffbir_graph(sd2_tiny, ircontrolnet_tiny, extra={
        "image": {"class_type": "EmptyImage",
                  "inputs": {"width": 72, "height": 56, "batch_size": 1, "color": 0x8040C0}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["crop", 0], "filename_prefix": "diffbir-irc"}}})
    entry = comfy_server.run(graph)
    [path] = comfy_server.output_images(entry, "save")
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (56, 72, 3)  # sampled at 128x128 (padded to 64), cropped back


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage_with_manual_cast(comfy, irc, tiny_models, prompts, dtype):
    """Weights stored in fp16/bf16 (what ComfyUI picks on GPUs) run through comfy.ops' manual cast
    and give the fp32 residuals up to the storage rounding."""
    model = tiny_models[0]
    path = model_factory.ircontrolnet_file("tiny", fmt="pth")
    with torch.inference_mode():
        half = irc.load_ircontrolnet(str(path), dtype=dtype)
    assert {p.dtype for p in half.control_model.parameters()} == {dtype}
    pos, _, _ = apply_node(comfy, tiny_models, prompts, stage1_image(1, 64, 64))
    full = pos[0][1]["control"]
    half = half.copy().set_condition(full.condition)
    x, sigma = torch.randn(1, 4, 8, 8), torch.full((1,), 2.0)
    cond = {"c_crossattn": torch.randn(1, 77, 1024)}
    outs = []
    with torch.inference_mode():
        for c in (full, half):
            c.pre_run(model.model, model.model.model_sampling.percent_to_sigma)
            out = c.get_control(x, sigma, cond, 1, {})
            c.cleanup()
            outs.append(out["output"] + out["middle"])
    for a, b in zip(*outs):
        assert b.dtype == torch.float32  # computed in fp32 on the CPU (manual cast)
        assert (a - b).abs().max() < 0.03 * a.abs().max()


def test_equal_cfg_halves_share_the_first_self_attention(comfy, irc, monkeypatch):
    """cond and uncond with one noisy latent, timestep and condition: the first self-attention runs once
    for both halves (diffbir_modules/attention.py) and the residuals have the same bits as without."""
    from comfy.ldm.modules import attention

    shared = comfy.pack_module("diffbir_modules.attention")
    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)
    verdicts = []
    equal_halves = shared._equal_halves
    monkeypatch.setattr(shared, "_equal_halves", lambda *t: verdicts.append(equal_halves(*t)) or verdicts[-1])
    sd = model_factory.ircontrolnet_state_dict("tiny")
    net = irc.IRControlNet(irc.config_from_state_dict(sd))
    net.load_state_dict(sd, strict=False)
    g = torch.Generator().manual_seed(2)
    x, hint = torch.randn(1, 4, 16, 16, generator=g).repeat(2, 1, 1, 1), torch.randn(1, 4, 16, 16, generator=g)
    t, context = torch.tensor([300.0, 300.0]), torch.randn(2, 77, 1024, generator=g)
    with torch.inference_mode():
        out = net(x, hint.repeat(2, 1, 1, 1), t, context)
        assert verdicts.count(True) == 1
        monkeypatch.setattr(irc.network, "fast_attention_options", lambda: {})
        plain = net(x, hint.repeat(2, 1, 1, 1), t, context)
    for a, b in zip(out["output"] + out["middle"], plain["output"] + plain["middle"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("global_choice", ["attention_split", "attention_sub_quad", "attention_pytorch"])
def test_attention_is_sdpa_whatever_the_global_cpu_choice(comfy, irc, monkeypatch, global_choice):
    """The IRControlNet's own attention runs torch's scaled_dot_product_attention when ComfyUI's global
    choice materialises the score matrix (its CPU defaults), and equals that choice's result."""
    from comfy.ldm.modules import attention

    monkeypatch.setattr(attention, "optimized_attention", getattr(attention, global_choice))
    sd = model_factory.ircontrolnet_state_dict("tiny")
    net = irc.IRControlNet(irc.config_from_state_dict(sd))
    net.load_state_dict(sd, strict=False)
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    t, context = torch.tensor([500.0, 20.0]), torch.randn(2, 77, 1024, generator=g)
    calls = []
    sdpa = attention.attention_pytorch
    monkeypatch.setattr(attention, "attention_pytorch", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.inference_mode():
        fast = net(x, hint, t, context)
        monkeypatch.setattr(irc.network, "fast_attention_options", lambda: {})
        calls_before = len(calls)
        default = net(x, hint, t, context)
    overridden = global_choice != "attention_pytorch"
    assert (calls_before > 0) == overridden and len(calls) == calls_before
    # float32 summation order only: measured 1.1e-6 of the largest residual (full-size network, 512 px)
    for a, b in zip(fast["output"] + fast["middle"], default["output"] + default["middle"]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_each_model_call_on_a_cpu_starts_by_handing_freed_memory_back(comfy, tiny_models, prompts, monkeypatch):
    """On a CPU every control computation (one per model call) of a large enough latent first returns what the
    previous call freed to the system, so the resident peak does not creep up from step to step
    (docs/performance.md, 1024 px: 1.41 / 1.49 / 1.48 GiB above the weights over steps 1-3 without it).
    Recorded against the control calls themselves: one release right before each, none below the bound."""
    pos, neg, latent = apply_node(comfy, tiny_models, prompts, stage1_image())
    control_module = comfy.pack_module("diffbir_modules.ircontrolnet.control")
    assert control_module.HAND_BACK_LATENT == 2 * 90 * 90  # a cfg batch of 720 px images and larger, as shipped
    monkeypatch.setattr(control_module, "HAND_BACK_LATENT", 2 * 8 * 8)  # this 64 px image's cfg batch
    host_memory = comfy.pack_module("diffbir_modules.host_memory")
    events = []
    monkeypatch.setattr(host_memory, "release", lambda: events.append("release") or True)
    control = pos[0][1]["control"]
    compute = type(control).control_for_window
    monkeypatch.setattr(type(control), "control_for_window",
                        lambda self, *args, **kwargs: events.append("control") or compute(self, *args, **kwargs))
    run_sampler(comfy, tiny_models[0], pos, neg, latent, steps=3)
    assert events.count("control") == 3  # cond and uncond batched: one model call per euler step
    assert events == ["release", "control"] * 3
    monkeypatch.setattr(control_module, "HAND_BACK_LATENT", 2 * 8 * 8 + 1)  # one latent pixel short of it
    events.clear()
    run_sampler(comfy, tiny_models[0], pos, neg, latent, steps=2)
    assert events == ["control"] * 2
