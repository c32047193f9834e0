"""Side-by-side comparison of a sweep (e.g. guidance scales): parsing the values and drawing a grid of
IMAGE frames with a label strip above each cell (Pillow's built-in font)."""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import images

MAX_AUTO_COLUMNS = 8


def parse_scales(text: str) -> list[float]:
    """'0, 0.05 0.1;0.2' -> [0.0, 0.05, 0.1, 0.2]; every value finite and >= 0."""
    parts = [p for p in re.split(r"[,\s;]+", str(text).strip()) if p]
    if not parts:
        raise ValueError("no scales given: write numbers separated by commas, e.g. '0, 0.05, 0.1, 0.2, 0.5'")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number; write scales like '0, 0.05, 0.1, 0.2, 0.5'") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"guidance scales must be finite and >= 0, got {part}")
        values.append(value)
    return values


def scale_label(value: float) -> str:
    return f"scale {value:g}"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def make_grid(frames: list[torch.Tensor], labels: list[str], columns: int = 0, gap: int = 4) -> torch.Tensor:
    """frames: [H,W,C] tensors in [0,1] -> one IMAGE [1,H',W',3] with each frame in a cell and its
    label (if any) in a strip above it. Frames of other sizes are resized to the first one's size."""
    if not frames:
        raise ValueError("the grid needs at least one image")
    if labels and len(labels) not in (1, len(frames)):
        raise ValueError(f"{len(labels)} labels for {len(frames)} images: give one label per image")
    height, width = frames[0].shape[0], frames[0].shape[1]
    cells = []
    for frame in frames:
        rgb, _ = images.split_alpha(frame.unsqueeze(0))
        cells.append(images.resize(rgb, (height, width)).clamp(0, 1)[0])
    count = len(cells)
    columns = columns or min(count, MAX_AUTO_COLUMNS)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    font_size = max(10, min(32, width // 12))
    strip = font_size + 8 if labels else 0
    canvas = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * (height + strip) + (rows - 1) * gap),
                       (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for i, cell in enumerate(cells):
        row, col = divmod(i, columns)
        x, y = col * (width + gap), row * (height + strip + gap)
        pixels = (cell.movedim(0, -1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        canvas.paste(Image.fromarray(pixels), (x, y + strip))
        if labels:
            text = labels[i] if len(labels) == len(cells) else labels[0]
            draw.text((x + 4, y + 4), str(text), fill=(240, 240, 240), font=font)
    out = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)
    return out.unsqueeze(0)
