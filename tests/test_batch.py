"""Batch restoration in one process (python -m batch without --ray): a folder and a zip archive with
the shipped v2 denoising workflow on random weights; the manifest makes a rerun do nothing and
records a broken input with its error while the rest of the run goes on."""

import json
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import batch_data
from batch import engine, seeds
from batch.manifest import FILE_NAME
from batch.workers import LocalPool
from devkit.model_factory import MODELS_DIR

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "example_workflows" / "DiffBIR v2 denoising (SCUNet).json"
SETTINGS = {"upscale": None, "steps": 2, "cfg": None, "min_short_side": 0}


@pytest.fixture(scope="module")
def local_pool(published_models):
    return LocalPool({"workflow": json.loads(WORKFLOW.read_text()), "settings": SETTINGS,
                      "models_dir": str(MODELS_DIR)})


def outputs(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def test_item_seeds_depend_on_run_seed_and_name_only():
    assert seeds.item_seed(231, "a.png") == seeds.item_seed(231, "a.png")
    assert len({seeds.item_seed(231, "a.png"), seeds.item_seed(231, "b.png"), seeds.item_seed(1, "a.png")}) == 3
    assert 0 <= seeds.item_seed(231, "a.png") < 2**48


def test_folder_then_zip_then_rerun(local_pool, tmp_path):
    images = batch_data.image_folder(tmp_path / "in", 5)
    first = engine.run(images, tmp_path / "out_folder", local_pool, run_seed=231)
    assert (first.restored, first.skipped, first.failed) == (5, 0, {})
    restored = outputs(tmp_path / "out_folder")
    assert sorted(restored) == ["img000.png", "img001.png", "img002.png", "img004.png", "sub/img003.png"]
    assert all(a.shape == (batch_data.SIZE, batch_data.SIZE, 3) and a.std() > 1 for a in restored.values())

    # The same images from a zip: same names, so same seeds and the very same pixels.
    archive = engine.run(batch_data.zip_of(images, tmp_path / "in.zip"), tmp_path / "out_zip", local_pool, 231)
    assert archive.restored == 5
    from_zip = outputs(tmp_path / "out_zip")
    assert all(np.array_equal(from_zip[name], restored[name]) for name in restored)

    # And from a tar archive, read as a stream.
    with tarfile.open(tmp_path / "in.tar.gz", "w:gz") as archive:
        archive.add(images, arcname=".")
    from_tar = engine.run(tmp_path / "in.tar.gz", tmp_path / "out_tar", local_pool, 231)
    assert from_tar.restored == 5
    assert {n.removeprefix("./"): a.tobytes() for n, a in outputs(tmp_path / "out_tar").items()} == \
        {n: a.tobytes() for n, a in restored.items()}

    again = engine.run(images, tmp_path / "out_folder", local_pool, run_seed=231)
    assert (again.restored, again.skipped) == (0, 5)

    # An output removed or changed is restored again; the rest stays done.
    (tmp_path / "out_folder" / "img001.png").unlink()
    (tmp_path / "out_folder" / "img002.png").write_bytes(b"overwritten")
    repaired = engine.run(images, tmp_path / "out_folder", local_pool, run_seed=231)
    assert (repaired.restored, repaired.skipped) == (2, 3)
    assert all(np.array_equal(a, restored[n]) for n, a in outputs(tmp_path / "out_folder").items())


def test_broken_input_is_recorded_and_the_run_goes_on(local_pool, tmp_path):
    images = batch_data.image_folder(tmp_path / "in", 2)
    (images / "broken.png").write_bytes(b"not an image")
    (images / "img001.webp").write_bytes((images / "img001.png").read_bytes())  # its output would be img001.png
    summary = engine.run(images, tmp_path / "out", local_pool, run_seed=231)
    assert summary.restored == 2 and sorted(summary.failed) == ["broken.png", "img001.webp"]
    assert "UnidentifiedImageError" in summary.failed["broken.png"] and "broken.png" in summary.failed["broken.png"]
    assert "img001.png" in summary.failed["img001.webp"]
    with sqlite3.connect(tmp_path / "out" / FILE_NAME) as db:
        rows = dict(db.execute("SELECT name, status FROM items").fetchall())
    assert rows == {"broken.png": "failed", "img000.png": "done", "img001.png": "done", "img001.webp": "failed"}
    assert not (tmp_path / "out" / "broken.png").exists()
    # A rerun retries only the failed items.
    again = engine.run(images, tmp_path / "out", local_pool, run_seed=231)
    assert (again.restored, again.skipped, sorted(again.failed)) == (0, 2, ["broken.png", "img001.webp"])


@pytest.mark.server
def test_command_restores_a_zip(published_models, tmp_path):
    archive = batch_data.zip_of(batch_data.image_folder(tmp_path / "in", 2), tmp_path / "scans.zip")
    command = [sys.executable, "-m", "batch", "--input", str(archive), "--output", str(tmp_path / "out"),
               "--task", "denoise", "--version", "v2", "--steps", "2", "--min-short-side", "0",
               "--models-dir", str(MODELS_DIR)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "restored 2, already done 0, failed 0" in result.stdout
    assert sorted(outputs(tmp_path / "out")) == ["img000.png", "img001.png"]


def test_archive_member_outside_the_output_folder_is_refused(local_pool, tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("../escaped.png", b"not even an image: it must not get that far")
    summary = engine.run(tmp_path / "evil.zip", tmp_path / "out", local_pool, run_seed=231)
    assert summary.restored == 0 and "outside the output folder" in summary.failed["../escaped.png"]
    assert not (tmp_path / "escaped.png").exists()
