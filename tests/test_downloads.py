"""The weights catalogue and the downloader: resume after a cut connection, checksum mismatch refused
(partial file removed), offline message naming each file, its URL and its folder, downloads landing in
ComfyUI's model folder. All network traffic goes to a small HTTP server on loopback."""

import hashlib
import re

import pytest

from loopback_http import LoopbackFileServer

PAYLOAD = bytes(range(256)) * 4099  # ~1 MiB, not a multiple of the downloader's chunk size
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def dl(comfy, monkeypatch):
    for name in ("DIFFBIR_NO_DOWNLOAD", "DIFFBIR_OFFLINE", "HF_HUB_OFFLINE", "DIFFBIR_WEIGHTS_URL_BASE",
                 "DIFFBIR_HF_ENDPOINT", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return comfy.pack_module("diffbir_modules.downloads")


@pytest.fixture
def weights(comfy):
    return comfy.pack_module("diffbir_modules.weights")


@pytest.fixture
def isolated_folders(comfy, tmp_path, monkeypatch):
    """Replaces ComfyUI's paths for the given model folders by empty temporary ones (for this test only)."""
    import folder_paths

    def isolate(*names):
        dirs = {}
        for name in names:
            d = tmp_path / "models" / name
            d.mkdir(parents=True, exist_ok=True)
            exts = folder_paths.folder_names_and_paths.get(name, ([], set()))[1]
            monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(d)], exts))
            dirs[name] = d
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
        return dirs

    return isolate


class Recorder:
    def __init__(self):
        self.starts, self.updates, self.closed = [], [], False

    def start(self, total, done=0):
        self.starts.append((total, done))

    def update(self, done, force=False):
        self.updates.append(done)

    def close(self):
        self.closed = True


# -- the catalogue -----------------------------------------------------------------------------------------------
def test_catalogue_entries_are_complete(weights):
    assert len(weights.CATALOGUE) == 15
    for key, w in weights.CATALOGUE.items():
        assert w.key == key and w.filename and w.folder in ("checkpoints", "diffbir", "upscale_models", "facedetection")
        assert w.urls and all(u.startswith("https://") and u.endswith("/" + w.filename) for u in w.urls)
        assert w.used_by and w.license
        if w.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", w.sha256), key
        if w.sha256 or w.size:
            assert w.source, f"{key}: a recorded checksum or size must name its source"
        assert w.verification() in ("sha256", "size", "unverified")
    for (version, task), p in weights.PRESETS.items():
        assert p.version == version and p.task == task
        assert all(k in weights.CATALOGUE for k in p.files())
    with pytest.raises(ValueError, match="no unaligned-face mode"):
        weights.preset("v1", "unaligned_face")
    assert weights.workflow_model_entry("v21") == {
        "name": "DiffBIR_v2.1.pt", "url": "https://huggingface.co/lxq007/DiffBIR-v2/resolve/main/DiffBIR_v2.1.pt",
        "directory": "diffbir"}


def test_candidate_urls_mirror_settings(dl, weights, monkeypatch):
    w = weights.entry("v21")
    assert dl.candidate_urls(w) == [w.url]
    monkeypatch.setenv("DIFFBIR_WEIGHTS_URL_BASE", "http://127.0.0.1:9/weights/")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    assert dl.candidate_urls(w) == ["http://127.0.0.1:9/weights/DiffBIR_v2.1.pt",
                                    "https://hf-mirror.example/lxq007/DiffBIR-v2/resolve/main/DiffBIR_v2.1.pt", w.url]


# -- the download ----------------------------------------------------------------------------------------------------
def test_resume_after_cut_connection(dl, tmp_path):
    dest = tmp_path / "model.bin"
    recorder = Recorder()
    with LoopbackFileServer({"model.bin": PAYLOAD}, cut_at=300_000) as server:
        result = dl.download(f"{server.url}/cut/model.bin", str(dest), sha256=PAYLOAD_SHA, size=len(PAYLOAD),
                             progress=recorder, backoff=0)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "model.bin.part").exists()
    assert result["verified"] == "sha256" and result["sha256"] == PAYLOAD_SHA
    gets = [r for r in server.requests if r[0] == "GET"]
    assert gets[0][2] is None and gets[1][2] == "bytes=300000-", server.requests
    assert recorder.starts == [(len(PAYLOAD), 0), (len(PAYLOAD), 300_000)]
    assert recorder.updates[-1] == len(PAYLOAD)


def test_resume_partial_file_of_an_earlier_run(dl, tmp_path):
    dest = tmp_path / "model.bin"
    (tmp_path / "model.bin.part").write_bytes(PAYLOAD[:123_457])
    with LoopbackFileServer({"model.bin": PAYLOAD}) as server:
        result = dl.download(f"{server.url}/ok/model.bin", str(dest), sha256=PAYLOAD_SHA, backoff=0)
    assert dest.read_bytes() == PAYLOAD and result["verified"] == "sha256"
    assert [r[2] for r in server.requests] == ["bytes=123457-"]


def test_server_without_range_support_restarts(dl, tmp_path):
    dest = tmp_path / "model.bin"
    (tmp_path / "model.bin.part").write_bytes(b"stale bytes from elsewhere")
    with LoopbackFileServer({"model.bin": PAYLOAD}) as server:
        dl.download(f"{server.url}/norange/model.bin", str(dest), sha256=PAYLOAD_SHA, backoff=0)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_refused_and_partial_removed(dl, tmp_path):
    dest = tmp_path / "model.bin"
    with LoopbackFileServer({"model.bin": PAYLOAD}) as server:
        with pytest.raises(dl.ChecksumMismatchError, match="sha256 of the download is .* partial file was deleted"):
            dl.download(f"{server.url}/bad/model.bin", str(dest), sha256=PAYLOAD_SHA, backoff=0)
    assert not dest.exists() and not (tmp_path / "model.bin.part").exists()


def test_size_mismatch_refused_and_unverified_reported(dl, tmp_path):
    with LoopbackFileServer({"model.bin": PAYLOAD}) as server:
        with pytest.raises(dl.ChecksumMismatchError, match="bytes"):
            dl.download(f"{server.url}/ok/model.bin", str(tmp_path / "a.bin"), size=len(PAYLOAD) - 1, backoff=0)
        assert not (tmp_path / "a.bin.part").exists()
        result = dl.download(f"{server.url}/ok/model.bin", str(tmp_path / "b.bin"), backoff=0)
    assert result["verified"] == "unverified" and (tmp_path / "b.bin").read_bytes() == PAYLOAD


def test_unreachable_server_is_a_connect_error(dl, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dl.ConnectError, match="cannot connect"):
        dl.download(f"http://127.0.0.1:{port}/x.bin", str(tmp_path / "x.bin"), backoff=0)


# -- finding files, the offline message, downloading into ComfyUI's folders ------------------------------------------
def test_offline_message_lists_file_url_and_folder(dl, weights, isolated_folders, monkeypatch):
    dirs = isolated_folders("checkpoints", "diffbir", "upscale_models")
    monkeypatch.setenv("DIFFBIR_NO_DOWNLOAD", "1")
    keys = weights.preset("v2.1", "sr").files()
    with pytest.raises(dl.MissingWeightsError) as info:
        dl.ensure(keys)
    message = str(info.value)
    print(message)
    assert "downloads are turned off: DIFFBIR_NO_DOWNLOAD=1" in message
    assert {w.key for w in info.value.missing} == set(keys)
    for key in keys:
        w = weights.entry(key)
        assert w.filename in message and w.url in message
        assert f"folder: {dirs[w.folder]}" in message and f"'{w.folder}'" in message


def test_found_files_need_no_download(dl, weights, isolated_folders, monkeypatch):
    dirs = isolated_folders("checkpoints")
    monkeypatch.setenv("DIFFBIR_NO_DOWNLOAD", "1")
    (dirs["checkpoints"] / "v2-1_512-ema-pruned.ckpt").write_bytes(b"x")  # the .ckpt stands in for the .safetensors
    assert dl.ensure(["sd21_base_safetensors"]) == {
        "sd21_base_safetensors": str(dirs["checkpoints"] / "v2-1_512-ema-pruned.ckpt")}


def test_ensure_downloads_into_the_comfyui_model_folder(dl, weights, isolated_folders, monkeypatch, capsys):
    import folder_paths

    dirs = isolated_folders("diffbir")
    test_file = weights.WeightFile(key="test_file", filename="test-irc.pth", folder="diffbir",
                                   urls=("https://huggingface.co/nobody/none/resolve/main/test-irc.pth",),
                                   used_by="tests", license="test", size=len(PAYLOAD), sha256=PAYLOAD_SHA,
                                   source="this test")
    with LoopbackFileServer({"test-irc.pth": PAYLOAD}, cut_at=500_000) as server:
        monkeypatch.setenv("DIFFBIR_WEIGHTS_URL_BASE", f"{server.url}/cut")
        paths = dl.ensure([test_file], backoff=0)
    assert paths == {"test_file": str(dirs["diffbir"] / "test-irc.pth")}
    assert (dirs["diffbir"] / "test-irc.pth").read_bytes() == PAYLOAD
    assert "test-irc.pth" in folder_paths.get_filename_list("diffbir")
    assert "DiffBIR: downloading test-irc.pth" in capsys.readouterr().err  # the command-line progress line


def test_failed_download_reports_each_error(dl, weights, isolated_folders):
    dirs = isolated_folders("upscale_models")
    with LoopbackFileServer({"cleaner.pth": PAYLOAD}) as server:
        bad = weights.WeightFile(key="bad", filename="cleaner.pth", folder="upscale_models",
                                 urls=(f"{server.url}/bad/cleaner.pth", f"{server.url}/missing/cleaner.pth"),
                                 used_by="tests", license="test", sha256=PAYLOAD_SHA, source="this test")
        with pytest.raises(dl.MissingWeightsError) as info:
            dl.ensure([bad], backoff=0)
    message = str(info.value)
    print(message)
    assert "the download failed" in message and "cleaner.pth" in message
    assert "sha256 of the download is" in message and "HTTP 404" in message
    assert not any(dirs["upscale_models"].iterdir()), "a failed download left files behind"


def test_progress_reaches_comfyui_bar_and_cancel_keeps_the_partial_file(dl, tmp_path, monkeypatch):
    import comfy.model_management
    import comfy.utils

    bar_calls = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        bar_calls.append((value, total)))

    class CancelAfterFirstChunk(dl.TextAndBarProgress):
        def update(self, done, force=False):
            super().update(done, force)
            if 0 < done < len(PAYLOAD):
                comfy.model_management.interrupt_current_processing(True)

    dest = tmp_path / "model.bin"
    with LoopbackFileServer({"model.bin": PAYLOAD}) as server:
        try:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                dl.download(f"{server.url}/ok/model.bin", str(dest), sha256=PAYLOAD_SHA,
                            progress=CancelAfterFirstChunk("model.bin"), backoff=0)
        finally:
            comfy.model_management.interrupt_current_processing(False)
        kept = (tmp_path / "model.bin.part").stat().st_size
        assert 0 < kept < len(PAYLOAD) and not dest.exists()
        progress = dl.TextAndBarProgress("model.bin")
        dl.download(f"{server.url}/ok/model.bin", str(dest), sha256=PAYLOAD_SHA, progress=progress, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1][2] == f"bytes={kept}-"
    assert bar_calls and bar_calls[-1] == (100, 100)


def test_stamp_workflow_models(weights):
    workflow = {"nodes": [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["v2-1_512-ema-pruned.safetensors"],
         "properties": {"models": [{"name": "other.safetensors", "url": "https://x/other.safetensors",
                                    "directory": "checkpoints"}]}},
        {"id": 2, "type": "UpscaleModelLoader", "widgets_values": ["realesrgan_s4_swinir_100k.pth"]},
        {"id": 3, "type": "DiffBIRPresetLoader", "widgets_values": ["v2", "face", True]},
        {"id": 4, "type": "KSampler", "widgets_values": [1, "fixed", 20, 8.0, "euler", "normal", 1.0]},
    ]}
    assert weights.stamp_workflow_models(workflow) == 3
    models = {n["id"]: n.get("properties", {}).get("models") for n in workflow["nodes"]}
    assert models[1][0]["name"] == "other.safetensors" and models[1][1] == {
        "name": "v2-1_512-ema-pruned.safetensors", "directory": "checkpoints",
        "url": "https://huggingface.co/Manojb/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors"}
    assert models[2] == [weights.workflow_model_entry("swinir_realesrgan")]
    assert [m["name"] for m in models[3]] == ["v2-1_512-ema-pruned.safetensors", "v2.pth", "face_swinir_v1.ckpt"]
    assert models[4] is None
    assert weights.stamp_workflow_models(workflow) == 0  # idempotent
