"""The pack's one weights reader (diffbir_modules/weights_io.py): a file is named for what it really
is before anything loads it (failed downloads, web pages, Git LFS pointers, random bytes, truncated
files), code-carrying pickles never run, and every published wrapper reads. The same through each
loader node's function."""

import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from devkit import model_factory

TENSORS = {"conv.weight": torch.arange(12.0).reshape(3, 4), "conv.bias": torch.ones(3)}


@pytest.fixture(scope="module")
def wio(comfy):
    return comfy.pack_module("diffbir_modules.weights_io")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (shutil.copy, (__file__, self.marker))


def bad_file(tmp_path, kind: str):
    """A file of ``kind`` named like a weights file; returns (path, what the message must say)."""
    path = tmp_path / f"{kind}.pth"
    if kind == "empty":
        path.write_bytes(b"")
        return path, r"\(0 bytes\): the file is empty .* download the file again"
    if kind == "html":
        path.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>login</body></html>")
        return path, r"is an HTML web page, not a weights file: the download failed"
    if kind == "lfs_pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1452000000\n")
        return path, r"is a Git LFS pointer"
    if kind == "text":
        path.write_text("these are not weights\n" * 10)
        return path, r"is a text file, neither safetensors nor a PyTorch file"
    if kind == "random_bytes":
        path.write_bytes(bytes(range(7, 255)) * 8)
        return path, r"is not a weights file \(it starts with bytes 07 08 09"
    if kind == "truncated_zip":
        torch.save(TENSORS, path)
        path.write_bytes(path.read_bytes()[:300])
        return path, r"a torch zip file that cannot be read .* truncated or corrupt .* download the file again"
    if kind == "truncated_safetensors":
        path = path.with_suffix(".safetensors")
        save_file(TENSORS, str(path))
        path.write_bytes(path.read_bytes()[:-20])
        return path, r"a safetensors file that cannot be read .* truncated or corrupt"
    raise ValueError(kind)


BAD = ["empty", "html", "lfs_pointer", "text", "random_bytes", "truncated_zip", "truncated_safetensors"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_files_are_named_for_what_they_are(wio, tmp_path, kind):
    path, message = bad_file(tmp_path, kind)
    with pytest.raises(wio.WeightsFileError, match=message) as error:
        wio.read_tensors(str(path), "a test file")
    assert str(path) in str(error.value) and "Expected a test file." in str(error.value)


@pytest.mark.parametrize("container", ["zip", "legacy pickle"])
def test_a_pickle_with_code_never_runs(wio, tmp_path, container):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.ckpt"
    content = {"state_dict": dict(TENSORS), "hook": _Payload(str(marker))}
    if container == "zip":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    assert wio.sniff(str(path)) == ("torch zip" if container == "zip" else "pickle")
    with pytest.raises(wio.WeightsFileError, match=r"refused: a pickle that holds Python code .*could run code"):
        wio.read_tensors(str(path), "a test file")
    assert not marker.exists(), "the payload ran"


def test_a_plain_pickle_of_tensors_is_named_as_such(wio, tmp_path):
    """pickle.dump (protocol 4 and up) is not a format torch's safe reader reads, though nothing in it
    is code: named as that, with what to do, neither as code nor as a damaged download."""
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps(dict(TENSORS), protocol=4))
    with pytest.raises(wio.WeightsFileError, match=r"a pickle that PyTorch's safe \(weights-only\) reader cannot read "
                                                   r".*not written by torch.save.*Save it again with torch.save"):
        wio.read_tensors(str(path), "a test file")


def test_a_damaged_pickle_is_called_corrupt_not_code(wio, tmp_path):
    """Bits flipped inside a torch zip's data.pkl (its directory intact: damage on disk or in transit):
    torch's weights-only reader refuses it without naming any foreign object, which is corruption, so
    the advice is to download again, not that the file carries code. A flip that leaves a valid pickle
    loads (the zip's checksums are not checked by torch)."""
    import random
    import zipfile

    source = tmp_path / "source.pth"
    torch.save({f"layer{i}.weight": torch.randn(8, 8) for i in range(20)}, source)
    data = source.read_bytes()
    with zipfile.ZipFile(source) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)  # local header: 30 bytes + name
    rng = random.Random(0)
    outcomes = []
    for _ in range(40):
        damaged = bytearray(data)
        damaged[start + rng.randrange(member.compress_size)] ^= 1 << rng.randrange(8)
        path = tmp_path / "damaged.pth"
        path.write_bytes(bytes(damaged))
        try:
            wio.read_tensors(str(path), "a test file")
            outcomes.append("loaded")
        except wio.WeightsFileError as error:
            assert "could run code" not in str(error), str(error)
            assert "corrupt" in str(error) and "download the file again" in str(error), str(error)
            outcomes.append("corrupt")
    assert outcomes.count("corrupt") >= 20  # before the fix 22 of these 40 were called code-carrying


@pytest.mark.parametrize("wrapper", ["flat", "state_dict", "params_ema", "module.", "single key",
                                     "safetensors named .pth"])
def test_published_wrappers_read(wio, tmp_path, wrapper):
    path = tmp_path / "weights.pth"
    if wrapper == "safetensors named .pth":
        save_file(TENSORS, str(path))
    elif wrapper == "module.":
        torch.save({f"module.{k}": v for k, v in TENSORS.items()}, path)
    elif wrapper == "single key":
        torch.save({"generator": TENSORS}, path)
    elif wrapper == "flat":
        torch.save(TENSORS, path)
    else:
        torch.save({wrapper: TENSORS, "epoch": 3, "global_step": 10}, path)
    sd = wio.tensors_only(wio.read_tensors(str(path), "x"), path.name, "x")
    assert sd.keys() == TENSORS.keys() and all(torch.equal(sd[k], TENSORS[k]) for k in TENSORS)


def test_a_state_dict_without_tensors_is_named(wio, tmp_path):
    path = tmp_path / "config.pth"
    torch.save({"lr": 0.1, "steps": [1, 2]}, path)
    with pytest.raises(wio.WeightsFileError, match="config.pth: holds no state dict of tensors"):
        wio.tensors_only(wio.read_tensors(str(path), "x"), path.name, "x")


# Every loader that reads a file goes through the reader: the same words whichever node it is.
@pytest.mark.parametrize("loader", ["stage1", "ircontrolnet", "faces"])
@pytest.mark.parametrize("kind", ["html", "empty", "random_bytes"])
def test_every_loader_names_a_failed_download(comfy, tmp_path, loader, kind):
    path, message = bad_file(tmp_path, kind)
    if loader == "stage1":
        load = comfy.pack_module("diffbir_modules.stage1").load_cleaner
    elif loader == "ircontrolnet":
        load = comfy.pack_module("diffbir_modules.ircontrolnet").load_ircontrolnet
    else:
        load = comfy.pack_module("diffbir_modules.face_models").read_weights
    with pytest.raises(ValueError, match=message):
        load(str(path))


def test_face_weights_read_through_the_reader(comfy):
    face_models = comfy.pack_module("diffbir_modules.face_models")
    face_detection = comfy.pack_module("diffbir_modules.face_detection")
    path = model_factory.face_model_file("retinaface_resnet50", module_prefix=True)
    net = face_detection.build_retinaface(face_models.read_weights(str(path)), source=str(path))
    assert net.backbone == "resnet50"
