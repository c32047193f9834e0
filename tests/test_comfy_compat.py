"""The pack on whichever ComfyUI runs the tests (0.3.75 and 0.33 in CI): what newer releases changed
(model patchers, UPSCALE_MODEL descriptors, multi-GPU control clones, schema fields, the minimum
version) works in both directions between our nodes and core ones."""

import pytest
import torch

from devkit import model_factory
from devkit.model_factory import install_model

GREY_IMAGE = {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": 0x5080B0}}


@pytest.fixture(scope="module")
def compat(comfy):
    return comfy.pack_module("diffbir_modules.comfy_compat")


@pytest.fixture(scope="module")
def bsrnet_name():
    return install_model("upscale_models", model_factory.stage1_file("BSRNet.pth"), "test-small-BSRNet.pth")


def test_our_stage1_model_runs_in_core_upscale_image(comfy, bsrnet_name):
    """DiffBIR Load Stage-1 Model -> core "Upscale Image (using Model)" (which reads the descriptor's
    patcher in newer releases) through ComfyUI's executor."""
    prompt = {
        "1": {"class_type": "DiffBIRStage1Loader", "inputs": {"model_name": bsrnet_name}},
        "2": GREY_IMAGE,
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["1", 0], "image": ["2", 0]}},
    }
    out = comfy.run_prompt(prompt, outputs=["1", "2", "3"])
    descriptor, image, upscaled = out["1"][0], out["2"][0], out["3"][0]
    assert upscaled.shape == (1, 64, 96, 3)
    with torch.inference_mode():
        direct = descriptor(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    # core tiles with 512 px tiles: one tile here, so the same single forward pass (float32, CPU)
    assert torch.allclose(upscaled, direct, atol=1e-6)


def test_core_loaded_model_runs_in_degradation_removal(comfy, bsrnet_name):
    """Core "Load Upscale Model" -> DiffBIR Degradation Removal gives exactly what our loader gives."""
    def graph(loader):
        return {
            "1": {"class_type": loader, "inputs": {"model_name": bsrnet_name}},
            "2": GREY_IMAGE,
            "3": {"class_type": "DiffBIRDegradationRemoval", "inputs": {
                "image": ["2", 0], "upscale_model": ["1", 0], "preset": "auto", "upscale": 2.0, "min_short_side": 0,
                "tiled": False, "tile_size": 512, "tile_stride": 256, "tile_weighting": "gaussian",
                "resample": "pil_uint8"}},
        }
    core = comfy.run_prompt(graph("UpscaleModelLoader"), outputs=["3"])["3"]
    ours = comfy.run_prompt(graph("DiffBIRStage1Loader"), outputs=["3"])["3"]
    assert core[0].shape == (1, 32, 48, 3) and (core[1], core[2]) == (48, 32)
    assert torch.equal(core[0], ours[0])


def test_one_patcher_per_loaded_stage1_model(comfy, bsrnet_name):
    """A descriptor keeps one patcher for every run, whoever loaded it (ComfyUI's model management
    then knows it is the same model), and the run leaves it offloaded."""
    import comfy.model_management as mm

    with torch.inference_mode():
        for loader in ("UpscaleModelLoader", "DiffBIRStage1Loader"):
            descriptor = comfy.call_node(loader, bsrnet_name)[0]
            image = torch.rand(1, 16, 24, 3)
            comfy.call_node("DiffBIRDegradationRemoval", image, descriptor, upscale=2.0, min_short_side=0)
            patcher = descriptor.patcher
            comfy.call_node("DiffBIRDegradationRemoval", image, descriptor, upscale=2.0, min_short_side=0)
            assert descriptor.patcher is patcher
            assert patcher.model is descriptor.model
            assert not any(loaded.model is patcher for loaded in mm.current_loaded_models)


def test_patchers_are_of_the_class_the_runtime_chose(comfy, compat, bsrnet_name, monkeypatch):
    """Newer main.py replaces CoreModelPatcher (dynamic VRAM) after the pack is imported: our models
    must get whatever class is current when they are loaded, as core models do."""
    import comfy.model_patcher as patchers

    class RuntimePatcher(patchers.ModelPatcher):
        pass

    monkeypatch.setattr(patchers, "CoreModelPatcher", RuntimePatcher, raising=False)
    irc_name = install_model("diffbir", model_factory.ircontrolnet_file("tiny", fmt="pth"), "irc-tiny.pth")
    with torch.inference_mode():
        descriptor = comfy.call_node("DiffBIRStage1Loader", bsrnet_name)[0]
        control = comfy.call_node("DiffBIRIRControlNetLoader", irc_name, "auto")[0]
    assert type(descriptor.patcher) is RuntimePatcher
    assert type(control.control_model_wrapped) is RuntimePatcher
    assert all(callable(getattr(m, "is_dynamic", lambda: False)) for m in control.get_models())


def test_ircontrolnet_clone_for_another_device(comfy, sd2_tiny):
    """ComfyUI's multi-GPU sampling asks every control for a deep clone per extra device (newer
    releases raise for a control that cannot): the clone has its own weights and, swapped into the
    conditioning, samples exactly as the original."""
    irc = comfy.pack_module("diffbir_modules.ircontrolnet")
    irc_name = install_model("diffbir", model_factory.ircontrolnet_file("tiny", fmt="pth"), "irc-tiny.pth")
    with torch.inference_mode():
        model, clip, vae = comfy.call_node("CheckpointLoaderSimple", sd2_tiny)[:3]
        control = comfy.call_node("DiffBIRIRControlNetLoader", irc_name, "auto")[0]
        positive = comfy.call_node("CLIPTextEncode", clip, "a photo")[0]
        negative = comfy.call_node("CLIPTextEncode", clip, "")[0]
        image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
        positive, negative, latent = comfy.call_node("DiffBIRApplyIRControlNet", positive, negative, control, vae,
                                                     image, 1.0, 0.0, 1.0, "noise", "64")[:3]
    [applied] = irc.find_ircontrolnets(positive)
    device = torch.device("cpu")
    clone = applied.deepclone_multigpu(device, autoregister=True)
    assert applied.multigpu_clones[device] is clone
    if hasattr(applied, "get_instance_for_device"):  # the releases with multi-GPU sampling
        assert applied.get_instance_for_device(device) is clone
    assert clone.control_model is not applied.control_model
    theirs, ours = clone.control_model.state_dict(), applied.control_model.state_dict()
    assert all(torch.equal(theirs[k], ours[k]) and theirs[k].data_ptr() != ours[k].data_ptr() for k in ours)
    assert clone.control_model_wrapped.model is clone.control_model
    assert torch.equal(clone.condition, applied.condition) and clone.strength == applied.strength

    def sample(pos, neg):
        with torch.inference_mode():
            return comfy.call_node("KSampler", model, 3, 2, 4.0, "euler", "normal", pos, neg, latent)[0]["samples"]

    reference = sample(positive, negative)
    swapped_pos, swapped_neg = irc.replace_ircontrolnets([positive, negative],
                                                         lambda c: clone if c is applied else c)
    assert irc.find_ircontrolnets(swapped_pos) == [clone]
    assert torch.equal(sample(swapped_pos, swapped_neg), reference)
    applied.multigpu_clones.clear()


def test_schema_fields_the_runtime_does_not_know_are_left_out(comfy, compat):
    from comfy_api.latest import io

    fields = compat.schema_fields(search_aliases=["restore"], no_such_field_anywhere=True)
    assert "no_such_field_anywhere" not in fields
    known = {f.name for f in __import__("dataclasses").fields(io.Schema)}
    assert ("search_aliases" in fields) == ("search_aliases" in known)
    schema = comfy.node_class("DiffBIRDegradationRemoval").define_schema()
    if "search_aliases" in known:  # newer releases: the node search finds it by the words users type
        assert {"restore", "upscale", "face"} <= set(schema.search_aliases)


@pytest.mark.parametrize("version,accepted", [("0.3.75", True), ("0.33.0", True), ("0.39.2", True),
                                              ("0.3.74", False), ("0.2.7", False)])
def test_minimum_comfyui_version(compat, monkeypatch, version, accepted):
    import comfyui_version

    monkeypatch.setattr(comfyui_version, "__version__", version)
    if accepted:
        compat.check_runtime()
    else:
        with pytest.raises(ImportError, match=r"needs ComfyUI 0\.3\.75 or newer; this is ComfyUI " + version):
            compat.check_runtime()
