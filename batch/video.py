"""Video in and out with PyAV (FFmpeg's libraries): frames decoded to lossless PNG items, the
restored frames encoded at the source's frame rate with the source's audio copied unchanged."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def frames_folder(video: Path) -> str:
    """Where the restored frames of ``video`` go, relative to the output folder."""
    return f"{Path(video).stem}.frames"


def frame_rate(video: Path) -> Fraction:
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError(f"video {video}: no frame rate in the file")
        return Fraction(rate)


def frames_png(video: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based frame number, PNG bytes) for every frame, decoded in order."""
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0), 1):
            buffer = io.BytesIO()
            frame.to_image().save(buffer, format="PNG")
            yield index, buffer.getvalue()


def _encoder(container) -> str:
    for codec in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(codec, "w")
        except Exception:  # not built into this FFmpeg
            continue
        if codec in container.supported_codecs:
            return codec
    raise RuntimeError(f"no H.264 or MPEG-4 encoder in PyAV's FFmpeg for {container.name}")


def encode(source: Path, frames_dir: Path, target: Path, quality_crf: int = 16) -> None:
    """Encodes ``frames_dir``/000001.png... into ``target`` at ``source``'s frame rate, copying its
    audio streams packet by packet (no re-encoding). Written to a temporary name, then renamed."""
    frames = sorted(Path(frames_dir).glob("*.png"))
    if not frames:
        raise ValueError(f"no restored frames in {frames_dir}")
    rate = frame_rate(source)
    partial = target.with_name(f".{target.name}.partial{target.suffix}")
    with av.open(str(source)) as original, av.open(str(partial), "w") as out:
        width, height = Image.open(frames[0]).size
        stream = out.add_stream(_encoder(out), rate=rate)
        stream.width, stream.height = width - width % 2, height - height % 2  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        if stream.codec_context.name in ("libx264", "h264"):
            stream.options = {"crf": str(quality_crf)}
        audio = {a.index: out.add_stream_from_template(a) for a in original.streams.audio}
        for path in frames:
            pixels = np.asarray(Image.open(path).convert("RGB"))[: stream.height, : stream.width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if audio:
            for packet in original.demux(*original.streams.audio):
                if packet.dts is None:  # the demuxer's flush packets
                    continue
                packet.stream = audio[packet.stream.index]
                out.mux(packet)
    os.replace(partial, target)
