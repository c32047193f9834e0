"""What to restore: a folder (walked recursively), a zip or tar archive, or a video file, read
lazily as a stream of items so an archive of any size needs only the items in flight in memory."""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class Item:
    name: str       # unique within the input: relative path, or "<video>/<frame number>"
    seed_name: str  # what the seed is derived from: the name, or the video's name for all its frames
    output: str     # relative output path (always PNG: lossless)
    data: bytes     # the encoded input image


def kind_of(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    raise ValueError(f"input {path}: expected a folder, a .zip or .tar archive, a video "
                     f"({', '.join(sorted(VIDEO_SUFFIXES))}) or an image ({', '.join(sorted(IMAGE_SUFFIXES))})")


def _image_item(name: str, data: bytes) -> Item:
    name = "/".join(part for part in PurePosixPath(name).parts if part not in ("/", "."))  # "./a.png" -> "a.png"
    return Item(name=name, seed_name=name, output=str(PurePosixPath(name).with_suffix(".png")), data=data)


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and not PurePosixPath(name).name.startswith(".")


def _walk(folder: Path) -> Iterator[Path]:
    """Image files under ``folder`` in name order, one directory listing in memory at a time (a
    bucket-sized tree is never listed whole)."""
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir():
            yield from _walk(Path(entry.path))
        elif entry.is_file() and _is_image(entry.name):
            yield Path(entry.path)


def items(path: Path) -> Iterator[Item]:
    """The items of ``path`` in a stable order (sorted names; a tar archive's own order)."""
    path = Path(path)
    kind = kind_of(path)
    if kind == "image":
        yield _image_item(path.name, path.read_bytes())
    elif kind == "folder":
        for file in _walk(path):
            yield _image_item(file.relative_to(path).as_posix(), file.read_bytes())
    elif kind == "zip":
        with zipfile.ZipFile(path) as archive:
            for name in sorted(n for n in archive.namelist() if not n.endswith("/") and _is_image(n)):
                yield _image_item(name, archive.read(name))
    elif kind == "tar":
        with tarfile.open(path, "r:*") as archive:
            for member in archive:  # streamed: no index of a large archive is built first
                if member.isfile() and _is_image(member.name):
                    yield _image_item(member.name, archive.extractfile(member).read())
    else:
        from . import video  # PyAV only when a video is restored

        for index, data in video.frames_png(path):
            yield Item(name=f"{path.name}/{index:06d}", seed_name=path.name,
                       output=f"{video.frames_folder(path)}/{index:06d}.png", data=data)
