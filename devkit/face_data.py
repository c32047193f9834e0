"""Photos for the face tests, from PyPI packages (nothing is committed to this repository):

- ``astronaut()``: scikit-image's ``data.astronaut()`` (NASA, public domain), one face.
- ``group_photo()``: ``t1.jpg`` (1280x886, six people at a table) from the insightface 2.1 wheel on
  PyPI, fetched once with ``pip download --no-deps`` and cached in .cache/test-data/. insightface's
  code is MIT-licensed but the photo is a still from a TV series whose licence insightface does not
  state, so it is not redistributed here; tests that need it are skipped when PyPI cannot be reached.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from devkit import model_factory

DATA = model_factory.CACHE.parent / "test-data"
INSIGHTFACE = "insightface==2.1"
T1_MEMBER = "insightface/data/images/t1.jpg"
T1_SHA256 = "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"

# MTCNN (facenet-pytorch 2.6.0) on astronaut, from the project's dependency notes: box and landmarks
ASTRONAUT_BOX = (181, 62, 268, 172)
ASTRONAUT_LANDMARKS = ((205, 102), (247, 104), (225, 129), (202, 139), (245, 142))


def astronaut() -> torch.Tensor:
    """IMAGE [1,512,512,3] float32 in [0,1]."""
    import skimage.data

    return torch.from_numpy(np.ascontiguousarray(skimage.data.astronaut())).float().div(255)[None]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def group_photo_path() -> Path | None:
    """Path of t1.jpg, fetched from PyPI on first use; None when that is impossible (offline)."""
    target = DATA / "t1.jpg"
    if target.exists() and _sha256(target) == T1_SHA256:
        return target
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", INSIGHTFACE, "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError):
            return None
        wheels = list(Path(tmp).glob("insightface-*.whl"))
        if not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(T1_MEMBER)
    if hashlib.sha256(data).hexdigest() != T1_SHA256:
        return None
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def group_photo() -> torch.Tensor | None:
    """IMAGE [1,886,1280,3] of t1.jpg, or None when it cannot be fetched."""
    from PIL import Image

    path = group_photo_path()
    if path is None:
        return None
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).float().div(255)[None]


def restored_pattern(index: int, size: int) -> np.ndarray:
    """A deterministic uint8 'restored face' [size, size, 3] for the paste-back goldens and their tests
    (integer arithmetic only, so both environments build the same bytes)."""
    y, x = np.mgrid[0:size, 0:size]
    r = (x * 3 + y * 2 + 40 * index) % 256
    g = (x * 2 - y + 255 + 70 * index) % 256
    b = ((x // 8 + y // 8) % 2) * 120 + 60 + 10 * index
    return np.stack([r, g, b], -1).astype(np.uint8)
