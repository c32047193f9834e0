"""Measured figures for docs/faces.md: parity with the official helper (the golden files of
tools/goldens/make_faces.py), the astronaut round trip, and the seam figure (docs/faces_seam.png).

    .venv/bin/python -m tools.faces_report [--figure docs/faces_seam.png]

Uses the pack's modules directly (pure torch, no ComfyUI needed) and MTCNN's weights from the
installed facenet-pytorch package.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from devkit import face_data, model_factory
from diffbir_modules import face_detection, face_geometry, face_parsing, faces

REPO = Path(__file__).resolve().parents[1]

GOLDEN = REPO / "tests" / "golden" / "faces"


def golden(name):
    return dict(np.load(GOLDEN / f"{name}.npz"))


def psnr(a, b):
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def mtcnn():
    spec = importlib.util.find_spec("facenet_pytorch")
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    parts = [torch.load(os.path.join(data, f"{p}.pt"), weights_only=True) for p in ("pnet", "rnet", "onet")]
    return face_detection.build_mtcnn(*parts)


def parity():
    print("== parity with the official helper (golden files) ==")
    data = golden("similarity")
    worst = 0.0
    corners = torch.tensor([[0.0, 0.0], [511.0, 0.0], [0.0, 511.0], [511.0, 511.0]], dtype=torch.float64)
    for landmarks, expected in zip(data["landmarks"], data["matrices"]):
        ours = face_geometry.estimate_similarity(torch.from_numpy(landmarks), torch.from_numpy(data["template"]))
        moved = (face_geometry.apply_affine(face_geometry.invert_affine(ours), corners)
                 - face_geometry.apply_affine(face_geometry.invert_affine(torch.from_numpy(expected)), corners))
        worst = max(worst, float(moved.abs().max()))
    print(f"similarity vs cv2.estimateAffinePartial2D(LMEDS), {len(data['matrices'])} landmark sets incl. 2 with an "
          f"outlier: crop corners within {worst:.2e} px")
    astronaut = (face_data.astronaut()[0, ::2, ::2] * 255).round()
    for face_size in (128, 512):
        for parse in (False, True):
            data = golden(f"paste_{face_size}{'_parse' if parse else ''}")
            image = astronaut.permute(2, 0, 1) / 255
            step = int(data["crop_step"])
            crop_diff = crop_diff_own = 0.0
            own = []
            for k, landmarks in enumerate(data["landmarks"]):
                matrix = faces.alignment_matrix(landmarks, face_size)
                own.append(matrix)
                expected = data["crops_sampled"][k].astype(np.float64)
                for used, name in ((torch.from_numpy(data["affine"][k]), "official"), (matrix, "own")):
                    crop = faces.align_crop(image, used, face_size).permute(1, 2, 0).double().numpy() * 255
                    diff = float(np.abs(crop[::step, ::step] - expected).max())
                    if name == "official":
                        crop_diff = max(crop_diff, diff)
                    else:
                        crop_diff_own = max(crop_diff_own, diff)
            background = (torch.div(astronaut, 2, rounding_mode="floor") + 64).permute(2, 0, 1)[None] / 255
            faceset = faces.FaceSet(faces=[faces.Face(0, k, [0, 0, 1, 1], 1.0, lm.tolist(), a.tolist(), (256, 256))
                                           for k, (lm, a) in enumerate(zip(data["landmarks"], data["affine"]))],
                                    image_sizes=[(256, 256)], face_size=face_size)
            restored = torch.stack([torch.from_numpy(face_data.restored_pattern(k, face_size)) for k in range(3)])
            restored = restored.permute(0, 3, 1, 2).float() / 255
            masks = None
            parse_diff = float("nan")
            if parse:
                labels = torch.from_numpy(data["labels"].astype(np.int64))[None]
                mask = face_parsing.parse_mask_from_labels(labels)
                parse_diff = float(np.abs(mask[0, 0, ::4, ::4].numpy() * 255 - data["parse_mask_sampled"]).max())
                masks = mask.expand(3, -1, -1, -1)
            soft_diff = 0.0
            for k, face in enumerate(faceset.faces):
                (top, left, h, w), _, _, soft = faces.paste_masks(face, face_size, face_size, (256, 256))
                full = torch.zeros(256, 256)
                full[top:top + h, left:left + w] = soft[0, 0].float()
                soft_diff = max(soft_diff, float((full - torch.from_numpy(data["soft_masks"][k])).abs().max()))
            out, _ = faces.paste_faces(background, restored, faceset, parse_masks=masks)
            diff = out[0].permute(1, 2, 0).double().numpy() * 255 - data["pasted"].astype(np.float64)
            print(f"face_size {face_size}{' + parse mask' if parse else ''}: crops (uint8 levels) max |diff| "
                  f"{crop_diff:.3f} with the official matrix, {crop_diff_own:.3f} with ours; soft masks max |diff| "
                  f"{soft_diff:.1e}" + (f"; parse mask (x255) {parse_diff:.1e}" if parse else "") +
                  f"; pasted image ours*255 - official uint8 in [{diff.min():.2f}, {diff.max():.2f}], "
                  f"{(np.abs(diff) > 1).mean() * 100:.3f}% of values off by more than 1 level")
    for backbone in ("resnet50", "mobilenet0.25"):
        data = golden(f"retinaface_forward_{backbone}")
        layout = model_factory.retinaface_layout(backbone)
        kind = f"retinaface_{backbone}"
        sd = model_factory.face_state_dict(layout, {"resnet50": 11, "mobilenet0.25": 12}[backbone],
                                           model_factory.FACE_VAR_BASE[kind])
        net = face_detection.build_retinaface(sd)
        with torch.no_grad():
            outs = net(torch.from_numpy(data["input"]))
        rel = max(float((o - torch.from_numpy(data[n])).abs().max() / torch.from_numpy(data[n]).abs().max())
                  for o, n in zip(outs, ("loc", "conf", "landmarks")))
        det = golden("retinaface_detect")
        image = (face_data.astronaut()[0, ::4, ::4] * 255).round().permute(2, 0, 1)[None]
        with torch.no_grad():
            boxes, points = face_detection.retinaface_detect(net, image, float(det[f"{backbone}_threshold"]))
        expected = det[backbone]
        print(f"RetinaFace {backbone}: network outputs max relative diff {rel:.1e}; detect_faces on a 128 px image: "
              f"{boxes.shape[0]} vs {expected.shape[0]} boxes, max |diff| boxes "
              f"{np.abs(boxes.numpy() - expected[:, :5]).max():.1e}, landmarks "
              f"{np.abs(points.reshape(-1, 10).numpy() - expected[:, 5:]).max():.1e} px")
    data = golden("parsenet_forward")
    net = face_parsing.build_parsenet(model_factory.face_state_dict(model_factory.parsenet_layout(), 13,
                                                                    model_factory.FACE_VAR_BASE["parsenet"]))
    with torch.no_grad():
        logits, _ = net(torch.from_numpy(data["input"]))
    expected = torch.from_numpy(data["logits"])
    print(f"ParseNet: logits max relative diff {float((logits - expected).abs().max() / expected.abs().max()):.1e}")
    data = golden("helper_detect")
    sd = model_factory.face_state_dict(model_factory.retinaface_layout("mobilenet0.25"), 12,
                                       model_factory.FACE_VAR_BASE["retinaface_mobilenet0.25"])
    net = face_detection.build_retinaface(sd)
    resized = []

    def detector(image_255, quirks):
        resized.append(image_255)
        with torch.no_grad():
            return face_detection.retinaface_detect(net, image_255, float(data["threshold"]))

    boxes, points = faces.detect(detector, astronaut.permute(2, 0, 1) / 255, 640, 5.0, official_quirks=True)
    level = (resized[0][0].permute(1, 2, 0)[::5, ::5] - torch.from_numpy(data["resized_sample"]).float()).abs()
    distance = torch.cdist(points.reshape(-1, 10).double(), torch.from_numpy(data["landmarks"].reshape(-1, 10)))
    nearest = distance.min(dim=1).values
    print(f"helper detection (256 px -> 640 px, MobileNet random weights, official quirks): resize differs from "
          f"cv2 by <= {float(level.max()):.0f} level in {float((level > 0).float().mean()) * 100:.1f}% of samples; "
          f"{points.shape[0]} faces vs {data['landmarks'].shape[0]} official, {int((nearest < 0.5).sum())} matched, "
          f"matched landmark sets within {float(nearest[nearest < 0.5].max()):.3f} px (L2 over 10 coordinates)")


def mtcnn_vs_facenet():
    """Our MTCNN cascade against facenet-pytorch's own (its torchvision batched_nms, a compiled op missing
    on CPU-only torch, replaced by ours)."""
    try:
        import facenet_pytorch.models.utils.detect_face as facenet_detect
        from facenet_pytorch import MTCNN
    except ImportError as error:
        print(f"facenet-pytorch not importable ({error}); skipped")
        return

    def batched_nms(boxes, scores, groups, threshold):
        if boxes.numel() == 0:
            return torch.empty(0, dtype=torch.long)
        return face_detection.nms(boxes + (groups.to(boxes) * (boxes.max() + 1))[:, None], scores, threshold)

    facenet_detect.batched_nms = batched_nms
    reference = MTCNN(keep_all=True, device="cpu")
    pixels = (face_data.astronaut()[0] * 255).round().to(torch.uint8).numpy()
    boxes, _, points = reference.detect(pixels, landmarks=True)
    boxes, points = boxes.astype(np.float64), points.astype(np.float64)
    ours_boxes, ours_points = face_detection.mtcnn_detect(mtcnn(), torch.from_numpy(pixels).permute(2, 0, 1)[None]
                                                          .float())
    print(f"MTCNN vs facenet-pytorch's cascade on astronaut: boxes within "
          f"{np.abs(ours_boxes[:, :4].numpy() - boxes).max():.1e} px, landmarks within "
          f"{np.abs(ours_points.numpy() - points).max():.1e} px (box {np.round(boxes[0], 2).tolist()})")


def round_trip(figure: Path | None):
    print("== astronaut (MTCNN) ==")
    net = mtcnn()
    image = face_data.astronaut()
    rgb = image[0].permute(2, 0, 1)

    def detector(image_255, quirks):
        with torch.no_grad():
            return face_detection.mtcnn_detect(net, image_255)

    start = time.perf_counter()
    crops, faceset, found = faces.detect_and_align(rgb[None], detector, detector_name="mtcnn")
    elapsed = time.perf_counter() - start
    face = faceset.faces[0]
    reference = np.array(face_data.ASTRONAUT_LANDMARKS)
    print(f"{len(faceset)} face in {elapsed:.1f} s; landmarks {np.round(face.landmarks, 2).tolist()}; max |diff| to "
          f"the reference values {np.abs(np.array(face.landmarks) - reference).max():.2f} px")
    out, mask = faces.paste_faces(rgb[None], crops, faceset)
    region = mask[0] > 0
    soft = region & (mask[0] < 1)
    rgb_hw = rgb.permute(1, 2, 0)
    out_hw = out[0].permute(1, 2, 0)
    print(f"round trip: PSNR {psnr(out_hw[region], rgb_hw[region]):.2f} dB over the pasted region "
          f"({int(region.sum())} px), {psnr(out_hw[soft], rgb_hw[soft]):.2f} dB over its soft border "
          f"({int(soft.sum())} px); outside unchanged: {bool(torch.equal(out_hw[~region], rgb_hw[~region]))}")
    if figure is None:
        return
    from PIL import Image

    grey = crops.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1) * 0.6 + 0.2  # a visibly different "restoration"
    pasted, _ = faces.paste_faces(rgb[None], grey, faceset)
    preview = faces.draw_preview(rgb[None], found)
    x0, y0, x1, y1 = face.box
    cx, cy, half = int((x0 + x1) / 2), int((y0 + y1) / 2), 110
    window = (slice(max(cy - half, 0), cy + half), slice(max(cx - half, 0), cx + half))
    error = ((out[0] - rgb).abs().amax(dim=0) * 20).clamp(0, 1)  # round-trip error x20
    panels = [preview[0], pasted[0], mask.expand(3, -1, -1), error[None].expand(3, -1, -1)]
    tiles = [(p[:, window[0], window[1]].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for p in panels]
    tiles = [np.asarray(Image.fromarray(t).resize((330, 330), Image.NEAREST)) for t in tiles]
    gap = np.full((330, 6, 3), 255, np.uint8)
    row = np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2], gap, tiles[3]], axis=1)
    figure.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(figure)
    print(f"wrote {figure}: detection preview | a grey crop pasted (the soft edge) | paste mask | "
          "round-trip error x20 (unmodified crop)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "faces_seam.png")
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    parity()
    mtcnn_vs_facenet()
    round_trip(None if args.no_figure else args.figure)


if __name__ == "__main__":
    main()
