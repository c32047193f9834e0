"""Golden fixtures: how an output too big to store whole is summarised (the same function writes the
fixture under .venv-official and reads it in the tests), and how two summaries are compared."""

from __future__ import annotations

import numpy as np

FULL_LIMIT = 40_000  # values; anything larger is stored as a summary
CROP = 32
STEP = 8
PARTS = ("full", "sub", "rows", "cols", "crop_tl", "crop_c", "crop_br")


def summarise(out, prefix: str) -> dict:
    """{name: array} for an NCHW float output: the whole tensor when small; otherwise every STEP-th
    pixel, three full-resolution CROPxCROP crops (top-left, centre, bottom-right: padding and tile
    seams end up there) and float64 sums of every row and column (any deviation anywhere shows)."""
    out = np.asarray(out, dtype=np.float32)
    entries = {f"{prefix}__shape": np.array(out.shape)}
    if out.size <= FULL_LIMIT:
        entries[f"{prefix}__full"] = out
        return entries
    h, w = out.shape[-2:]
    entries[f"{prefix}__sub"] = out[..., ::STEP, ::STEP]
    entries[f"{prefix}__rows"] = out.astype(np.float64).sum(axis=-1)
    entries[f"{prefix}__cols"] = out.astype(np.float64).sum(axis=-2)
    cy, cx = (h - CROP) // 2, (w - CROP) // 2
    entries[f"{prefix}__crop_tl"] = out[..., :CROP, :CROP]
    entries[f"{prefix}__crop_c"] = out[..., cy:cy + CROP, cx:cx + CROP]
    entries[f"{prefix}__crop_br"] = out[..., h - CROP:, w - CROP:]
    return entries


def compare(golden: dict, ours, prefix: str) -> dict:
    """Max abs differences between a stored summary and ours, per part; the row/column sums are
    divided by the number of values summed, so every figure is a per-pixel error."""
    mine = summarise(ours, prefix)
    shape = tuple(golden[f"{prefix}__shape"])
    if tuple(mine[f"{prefix}__shape"]) != shape:
        raise AssertionError(f"{prefix}: shape {tuple(mine[f'{prefix}__shape'])}, official {shape}")
    result = {}
    for key, value in golden.items():
        part = key[len(prefix) + 2:]
        if not key.startswith(prefix + "__") or part not in PARTS:
            continue
        diff = np.abs(mine[key].astype(np.float64) - value.astype(np.float64))
        if part == "rows":
            diff = diff / shape[-1]
        elif part == "cols":
            diff = diff / shape[-2]
        result[part] = float(diff.max())
    return result


def load(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_safetensors(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a golden safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta
