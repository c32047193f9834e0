"""Seams and colour of DiffBIR's tilings, measured on a real photo (scikit-image's data, no download).

    .venv/bin/python -m scripts.tiling_quality --out docs/figures --json docs/figures/tiling_quality.json

1. Seams of tiled sampling. The tiny random SD 2.x + IRControlNet of devkit/model_factory.py restore
   scikit-image's astronaut (resized to 256 x 384) untiled and with DiffBIR Tiled Sampling (128 px
   tiles, stride 64) under the official gaussian weights and under uniform weights (v1's averaging);
   every output is decoded with the same untiled VAE. For each output: the mean squared gradient
   (horizontal differences on the columns, vertical on the rows) across tile borders divided by the
   same away from them. 1 = a border is indistinguishable from elsewhere. Figure: the per-column
   gradient-energy profile (mean over rows) of each output, tile borders marked.
2. Colour of the tiled VAE. The coffee photo (384 x 576) encoded untiled, then decoded untiled,
   with ComfyUI's VAE.decode_tiled (256 px tiles, 64 px overlap) and with the exact tiled decode
   (256 px tiles); and encoded with ComfyUI's encode_tiled and with the exact tiled encode (both
   256 px), the latents decoded untiled. Reported per method against the untiled result: mean colour
   difference per channel (signed, 0-255 units), mean and max absolute difference.
The VAE is the SD VAE's full architecture with random weights (no real weights can be downloaded
here), so the numbers show how much each tiling departs from the untiled computation, not how a
trained VAE's colours look.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def start():
    from devkit import comfy_runtime, model_factory

    models_dir = model_factory.CACHE.parent / "test-comfy-models"
    comfy_runtime.start(Path(tempfile.mkdtemp(prefix="diffbir-quality-")) / "b", models_dir)
    return comfy_runtime, model_factory, models_dir


def install(models_dir: Path, folder: str, path: Path, name: str | None = None) -> str:
    target = models_dir / folder / (name or path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(path)
    return target.name


def photo(name: str, h: int, w: int):
    import torch
    from PIL import Image
    from skimage import data

    img = Image.fromarray(getattr(data, name)()).convert("RGB").resize((w, h), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)[None]


def gradient_energy(image) -> tuple[np.ndarray, np.ndarray]:
    """Per-column energy of horizontal differences (between column x and x+1) and per-row energy of
    vertical differences, averaged over the other axis and the channels."""
    a = image[0].double().numpy()
    dx = ((a[:, 1:] - a[:, :-1]) ** 2).mean(axis=(0, 2))
    dy = ((a[1:] - a[:-1]) ** 2).mean(axis=(1, 2))
    return dx, dy


def border_ratio(image, borders_x, borders_y) -> float:
    dx, dy = gradient_energy(image)
    bx = [b - 1 for b in borders_x]  # the difference between columns b-1 and b straddles the border
    by = [b - 1 for b in borders_y]
    at = np.concatenate([dx[bx], dy[by]])
    mask_x = np.ones_like(dx, dtype=bool)
    mask_y = np.ones_like(dy, dtype=bool)
    mask_x[bx] = False
    mask_y[by] = False
    elsewhere = np.concatenate([dx[mask_x], dy[mask_y]])
    return float(at.mean() / elsewhere.mean())


def plot_profiles(profiles: dict, borders, path: Path, title: str):
    from PIL import Image, ImageDraw

    width, height, pad = 900, 360, 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    n = len(next(iter(profiles.values())))
    top = max(float(p.max()) for p in profiles.values())
    x_of = lambda i: pad + (width - 2 * pad) * i / (n - 1)  # noqa: E731
    y_of = lambda v: height - pad - (height - 2 * pad) * v / top  # noqa: E731
    for b in borders:
        draw.line([(x_of(b - 1), pad), (x_of(b - 1), height - pad)], fill=(220, 220, 220))
    colours = [(0, 0, 0), (30, 110, 220), (220, 60, 40), (40, 160, 60)]
    for k, (name, profile) in enumerate(profiles.items()):
        points = [(x_of(i), y_of(float(v))) for i, v in enumerate(profile)]
        draw.line(points, fill=colours[k % len(colours)], width=1)
        draw.text((pad + 10, 8 + 14 * k), name, fill=colours[k % len(colours)])
    draw.text((width - pad - 330, 8), title, fill=(0, 0, 0))
    draw.text((pad, height - pad + 8), "column (px); grey: tile borders; y: mean squared horizontal gradient",
              fill=(80, 80, 80))
    img.save(path)


def seams(comfy_runtime, model_factory, models_dir, out: Path | None) -> dict:
    import torch

    td = comfy_runtime.pack_module("diffbir_modules.tiled_diffusion")
    node = comfy_runtime.node_class
    ckpt = install(models_dir, "checkpoints", model_factory.sd2_checkpoint("tiny"))
    irc = install(models_dir, "diffbir", model_factory.ircontrolnet_file("tiny", fmt="pth"), "irc-tiny.pth")
    h, w, tile, stride = 256, 384, 128, 64
    image = photo("astronaut", h, w)
    with torch.inference_mode():
        model, clip, vae = node("CheckpointLoaderSimple")().load_checkpoint(ckpt)
        control = node("DiffBIRIRControlNetLoader").execute(irc, "v2").result[0]
        encode = node("CLIPTextEncode")()
        pos, neg = encode.encode(clip, "a photo")[0], encode.encode(clip, "blurry")[0]
        pos, neg, latent = node("DiffBIRApplyIRControlNet").execute(pos, neg, control, vae, image, 1.0, 0.0, 1.0,
                                                                   "noise", "8").result
    windows = td.latent_windows(h // 8, w // 8, tile, stride)
    borders_x = sorted({e * 8 for win in windows for e in win[2:] if 0 < e * 8 < w})
    borders_y = sorted({e * 8 for win in windows for e in win[:2] if 0 < e * 8 < h})
    results, profiles = {}, {}
    for name, weighting in (("untiled", None), ("tiled, gaussian (official)", "gaussian"),
                            ("tiled, uniform (v1)", "uniform")):
        with torch.inference_mode():
            m = model if weighting is None else node("DiffBIRTiledSampling").execute(
                model, tile, stride, 0, weighting).result[0]
            t = time.perf_counter()
            sampled = node("KSampler")().sample(m, 3, 6, 4.0, "euler", "normal", pos, neg, latent, denoise=1.0)[0]
            seconds = time.perf_counter() - t
            decoded = vae.decode(sampled["samples"])
        results[name] = {"border_over_elsewhere": border_ratio(decoded, borders_x, borders_y),
                         "sampling_s": seconds}
        profiles[name] = gradient_energy(decoded)[0]
        print(name, results[name], flush=True)
    if out is not None:
        plot_profiles(profiles, borders_x, out / "tiling_seams.png",
                      f"{w}x{h} px, tiles {tile} px, stride {stride} px")
    return {"image": f"astronaut {w}x{h}", "tile": tile, "stride": stride, "borders_x": borders_x,
            "borders_y": borders_y, "results": results}


def vae_colour(comfy_runtime, model_factory, models_dir, out: Path | None) -> dict:
    import torch

    tv = comfy_runtime.pack_module("diffbir_modules.tiled_vae")
    ckpt = install(models_dir, "checkpoints", model_factory.sd2_checkpoint("tiny"))
    node = comfy_runtime.node_class
    image = photo("coffee", 384, 576)
    with torch.inference_mode():
        vae = node("CheckpointLoaderSimple")().load_checkpoint(ckpt)[2]
        latent = vae.encode(image)
        reference = vae.decode(latent)
        decodes = {
            "ComfyUI decode_tiled (256 px, overlap 64)": vae.decode_tiled(latent, tile_x=32, tile_y=32, overlap=8),
            "exact tiled decode (256 px)": tv.decode(vae, latent, 256, progress=False),
        }
        encodes = {
            "ComfyUI encode_tiled (256 px, overlap 64)": vae.encode_tiled(image, tile_x=256, tile_y=256, overlap=64),
            "exact tiled encode (256 px)": tv.encode(vae, image, 256, progress=False),
        }
        for name, lat in encodes.items():
            decodes[name + " -> untiled decode"] = vae.decode(lat)
    results = {}
    for name, img in decodes.items():
        d = (img - reference) * 255.0
        results[name] = {"mean_colour_difference_rgb": [round(float(v), 3) for v in d.mean(dim=(0, 1, 2))],
                         "mean_abs": float(d.abs().mean()), "max_abs": float(d.abs().max())}
        print(name, results[name], flush=True)
    if out is not None:
        from PIL import Image

        strip = [reference[0]] + [decodes[k][0] for k in decodes]
        row = torch.cat([s.clamp(0, 1) for s in strip[:3]], dim=1)
        Image.fromarray((row.numpy() * 255).round().astype(np.uint8)).save(out / "tiling_vae.png")
    return {"image": "coffee 576x384", "units": "0-255", "results": results}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for the figures")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["seams", "vae"])
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    comfy_runtime, model_factory, models_dir = start()
    import torch

    torch.set_num_threads(2)
    report = {}
    if args.only in (None, "seams"):
        report["seams"] = seams(comfy_runtime, model_factory, models_dir, args.out)
    if args.only in (None, "vae"):
        report["vae"] = vae_colour(comfy_runtime, model_factory, models_dir, args.out)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
