"""The preset loader: finds a version + task's files in ComfyUI's model folders and loads them with the
graph's own loaders; offline, a workflow whose weights are missing fails naming each file, its URL and
its folder. Model folders are replaced by temporary ones for each test (stand-in files with random
weights in the published layouts), so nothing is downloaded and shared folders are left alone."""

import pytest
import torch

from devkit import model_factory


@pytest.fixture
def isolated_folders(comfy, tmp_path, monkeypatch):
    import folder_paths

    for name in ("DIFFBIR_NO_DOWNLOAD", "DIFFBIR_OFFLINE", "HF_HUB_OFFLINE", "DIFFBIR_WEIGHTS_URL_BASE"):
        monkeypatch.delenv(name, raising=False)
    dirs = {}
    for name in ("checkpoints", "diffbir", "upscale_models", "facedetection"):
        d = tmp_path / "models" / name
        d.mkdir(parents=True)
        exts = folder_paths.folder_names_and_paths[name][1]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(d)], exts))
        dirs[name] = d
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return dirs


def tiny_esrgan_x4(path, seed=3):
    """A random 4x RRDB (BSRNet's architecture, 8 filters, 1 block) that spandrel detects as ESRGAN."""
    from spandrel.architectures.ESRGAN import ESRGAN

    shapes = model_factory.shapes_of(ESRGAN(num_filters=8, num_blocks=1, scale=4))
    torch.save(model_factory.random_state_dict(shapes, seed), path)
    return path


def test_offline_workflow_fails_naming_every_missing_file(comfy, isolated_folders, monkeypatch):
    weights = comfy.pack_module("diffbir_modules.weights")
    presets = comfy.pack_module("diffbir_modules.presets")
    monkeypatch.setenv("DIFFBIR_NO_DOWNLOAD", "1")
    prompt = {"p": {"class_type": "DiffBIRPresetLoader",
                    "inputs": {"version": "v2", "task": "unaligned_face", "download_missing": True}}}
    with pytest.raises(comfy.PromptError) as info:
        comfy.run_prompt(prompt, outputs=["p"])
    message = str(info.value)
    print(message)
    # refused when the prompt is validated, before anything runs
    assert "invalid prompt" in message and "DIFFBIR_NO_DOWNLOAD=1" in message
    files = presets.preset_for("v2", "unaligned_face").files()
    assert len(files) == 6  # SD, IRControlNet, face cleaner, background cleaner, detector, parser
    for key in files:
        w = weights.entry(key)
        assert w.filename in message and w.url in message and str(isolated_folders[w.folder]) in message


def test_download_switch_on_the_node(comfy, isolated_folders):
    prompt = {"p": {"class_type": "DiffBIRPresetLoader",
                    "inputs": {"version": "v1", "task": "face", "download_missing": False}}}
    with pytest.raises(comfy.PromptError, match="download_missing = false"):
        comfy.run_prompt(prompt, outputs=["p"])


def test_preset_loads_with_the_graph_loaders(comfy, isolated_folders):
    loading = comfy.pack_module("diffbir_modules.preset_loading")
    (isolated_folders["checkpoints"] / "v2-1_512-ema-pruned.safetensors").symlink_to(
        model_factory.sd2_checkpoint("tiny"))
    tiny_esrgan_x4(isolated_folders["upscale_models"] / "BSRNet.pth")
    torch.save(model_factory.ircontrolnet_state_dict("tiny"), isolated_folders["diffbir"] / "v2.pth")
    loaded = loading.load_preset("v2", "sr", allow_download=False)
    assert type(loaded.model.model.model_config).__name__ == "SD20"
    assert loaded.clip is not None and loaded.vae is not None and loaded.ircontrolnet is not None
    assert type(loaded.cleaner).__name__ == "ImageModelDescriptor" and loaded.cleaner.scale == 4
    assert loaded.background_cleaner is loaded.cleaner
    assert loaded.preset.steps == 50 and loaded.preset.cfg == 4.0 and "weird textures" in loaded.preset.negative
    assert "BSRNet.pth" in loaded.summary() and "v2.pth" in loaded.summary()

    # each version's model is sampled with its training schedule: v2 eps; v2.1 v-prediction, zero terminal SNR
    import comfy.model_sampling

    sampling_v2 = loaded.model.get_model_object("model_sampling")
    assert not isinstance(sampling_v2, comfy.model_sampling.V_PREDICTION) and sampling_v2.diffbir_version == "v2"
    model, _, _ = loading.load_checkpoint(str(model_factory.sd2_checkpoint("tiny")), "v2.1")
    sampling = model.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    assert float(sampling.sigmas[-1]) > 1e3  # zero terminal SNR: the last sigma is (nearly) infinite


def test_preset_node_end_to_end(comfy, isolated_folders):
    (isolated_folders["checkpoints"] / "v2-1_512-ema-pruned.safetensors").symlink_to(
        model_factory.sd2_checkpoint("tiny"))
    tiny_esrgan_x4(isolated_folders["upscale_models"] / "BSRNet.pth")
    torch.save(model_factory.ircontrolnet_state_dict("tiny"), isolated_folders["diffbir"] / "v2.pth")
    prompt = {"p": {"class_type": "DiffBIRPresetLoader",
                    "inputs": {"version": "v2", "task": "sr", "download_missing": False}}}
    out = comfy.run_prompt(prompt, outputs=["p"])["p"]
    assert out[3] is not None and out[6] == 50 and out[7] == 4.0
