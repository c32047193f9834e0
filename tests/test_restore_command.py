"""README's first command: scripts/restore.py restores images through a headless ComfyUI with an
example workflow, finding the weights in a ComfyUI models folder (here: random weights under the
published names), and names missing weights with their URL and folder."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.server
def test_restore_a_folder_end_to_end(published_models, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for name, size in (("a.png", (24, 32)), ("b.jpg", (20, 28))):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(inputs / name)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "restore.py"), "--input", str(inputs), "--output", str(out),
         "--task", "sr", "--version", "v2", "--upscale", "2", "--steps", "2", "--min-short-side", "0",
         "--models-dir", str(MODELS_DIR)], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "/2" in result.stdout  # step progress was shown
    a, b = Image.open(out / "a_diffbir.png"), Image.open(out / "b_diffbir.png")
    assert a.size == (64, 48) and b.size == (56, 40)
    assert np.asarray(a).std() > 1


def test_restore_names_missing_weights(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "restore.py"), "--input", str(tmp_path / "x.png"),
         "--output", str(tmp_path / "out"), "--version", "v2.1", "--models-dir", str(empty_models)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    for name in ("sd2.1-base-zsnr-laionaes5.ckpt", "DiffBIR_v2.1.pt", "realesrgan_s4_swinir_100k.pth"):
        assert name in message
    assert "https://huggingface.co/lxq007/DiffBIR-v2" in message and "checkpoints" in message
