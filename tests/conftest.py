"""Test bed: a real ComfyUI runtime in this process (started once, before collection) and, for
tests that ask for it, a real headless ``main.py`` server on a free loopback port. Both load this
pack from a scratch base directory whose ``models/`` is a shared folder of random-weight test models.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from devkit import comfy_runtime, model_factory
from devkit.model_factory import MODELS_DIR, install_model
from scripts import comfy_headless

SCRATCH = Path(tempfile.mkdtemp(prefix="diffbir-tests-"))


def pytest_configure(config):
    config.addinivalue_line("markers", "server: uses the headless ComfyUI server")
    config.addinivalue_line("markers", "slow: takes more than a minute on 2 CPU cores")
    config.addinivalue_line("markers", "once: slow and not runtime-specific (a variant of a case that runs on every "
                            "runtime, or the pack's own arithmetic or tooling): CI runs it on the default runtime "
                            "only (-m 'not once' on the others)")
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    comfy_runtime.start(SCRATCH / "in-process", MODELS_DIR)


def pytest_unconfigure(config):
    shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def comfy():
    """The in-process ComfyUI runtime (see comfy_runtime.py)."""
    return comfy_runtime


@pytest.fixture(scope="session")
def sd2_tiny() -> str:
    """Checkpoint name of a small random SD 2.x model in models/checkpoints."""
    return install_model("checkpoints", model_factory.sd2_checkpoint("tiny"))


def zsnr_ckpt() -> Path:
    """The tiny SD 2.x weights as a Lightning-style .ckpt, as DiffBIR's zsnr checkpoint is published."""
    path = model_factory.CACHE / f"sd2-tiny-as-ckpt-v{model_factory.FACTORY_VERSION}.ckpt"
    if not path.exists():
        from safetensors.torch import load_file

        sd = load_file(model_factory.sd2_checkpoint("tiny"))
        model_factory._atomic_save(lambda p: torch.save({"state_dict": sd, "global_step": 1}, p), path)
    return path


@pytest.fixture
def model_loads(monkeypatch) -> list:
    """(patcher, memory_required, force_full_load) of every ``load_models_gpu`` call during the test;
    each call still runs."""
    from comfy import model_management as mm

    loads, original = [], mm.load_models_gpu

    def load_models_gpu(models, memory_required=0, **options):
        loads.extend((m, memory_required, options.get("force_full_load", False)) for m in models)
        return original(models, memory_required=memory_required, **options)

    monkeypatch.setattr(mm, "load_models_gpu", load_models_gpu)
    return loads


@pytest.fixture(scope="session")
def published_models(sd2_tiny):
    """Random-weight stand-ins for every file the example workflows name."""
    install_model("checkpoints", model_factory.sd2_checkpoint("tiny"), "v2-1_512-ema-pruned.safetensors")
    install_model("checkpoints", zsnr_ckpt(), "sd2.1-base-zsnr-laionaes5.ckpt")
    for name in ("v1_general.pth", "v1_face.pth", "v2.pth", "DiffBIR_v2.1.pt"):
        install_model("diffbir", model_factory.ircontrolnet_file("tiny", fmt="pth"), name)
    for name in model_factory.STAGE1_FILES:
        install_model("upscale_models", model_factory.stage1_file(name, "small"), name)
    install_model("facedetection", model_factory.face_model_file("retinaface_resnet50"), "detection_Resnet50_Final.pth")
    install_model("facedetection", model_factory.face_model_file("parsenet"), "parsing_parsenet.pth")
    install_model("loras", model_factory.sd2_lora_file("tiny"), "your_sd21_lora.safetensors")


_server_holder: dict = {}


@pytest.fixture(scope="session")
def comfy_server():
    """A headless ComfyUI server with this pack, shared by the session; its log is attached to the
    report of every failing test that used it."""
    base = comfy_headless.make_base_directory(SCRATCH / "server", MODELS_DIR)
    server = comfy_headless.ComfyServer(base)
    server.start()
    _server_holder["server"] = server
    yield server
    server.stop()
    _server_holder.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "comfy_server" in getattr(item, "fixturenames", ()) and _server_holder:
        report.sections.append(("ComfyUI server log (tail)", _server_holder["server"].log(12000)))


def pytest_report_header(config):
    return [f"ComfyUI: {comfy_headless.comfyui_root()}", f"test models: {MODELS_DIR}",
            f"torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}"]


@pytest.fixture(scope="module")
def stage2_small(comfy):
    """The small random SD 2.x checkpoint loaded through ComfyUI and the small IRControlNet installed:
    the models of the golden runs made with the official code (tools/goldens)."""
    ckpt = install_model("checkpoints", model_factory.sd2_checkpoint("small"))
    irc_name = install_model("diffbir", model_factory.ircontrolnet_file("small", 1, "safetensors"))
    model, clip, vae = comfy.call_node("CheckpointLoaderSimple", ckpt)
    return {"model": model, "clip": clip, "vae": vae, "irc_name": irc_name}
