"""Inputs for the batch tests: tiny random images (folder and zip) and a short video with audio."""

from __future__ import annotations

import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32  # px: the smallest the denoising workflow runs comfortably (a 4x4 latent)


def image_folder(folder: Path, count: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        path = folder / ("sub" if i % 4 == 3 else "") / f"img{i:03d}.{'jpg' if i % 5 == 4 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(path)
    return folder


def zip_of(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return target


def video_with_audio(target: Path, frames: int = 12, fps: int = 12, sample_rate: int = 16000) -> Path:
    """An H.264 video of moving gradients with a 440 Hz AAC tone as long as the video."""
    import av  # the scale extra: only the video tests need it
    with av.open(str(target), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=sample_rate)
        audio.layout = "mono"
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        for i in range(frames):
            rgb = np.stack([(x * 8 + i * 10) % 256, (y * 8) % 256, np.full_like(x, 128)], -1).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        total = sample_rate * frames // fps
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / sample_rate)).astype(np.float32)
        for start in range(0, total, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return target


def probe(video: Path) -> dict:
    import av

    with av.open(str(video)) as container:
        rate = Fraction(container.streams.video[0].average_rate)  # read while the file is open
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(video)) as container:
        audio = [(s.codec_context.name, s.sample_rate) for s in container.streams.audio]
        audio_packets = [bytes(p) for p in container.demux(audio=0) if p.size] if audio else []
    return {"rate": rate, "frames": frames, "audio": audio, "audio_packets": audio_packets}
