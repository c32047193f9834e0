"""DiffBIR's faces-in-the-wild pipeline, split for ComfyUI: detect + align (crops to restore as one
batch) and paste-back (restored crops onto the restored background), following the official helper
(``diffbir/utils/face.py``, a fork of facexlib's FaceRestoreHelper) step by step:

detect: the image (uint8 levels) is scaled up so its short side is at least ``detection_size`` (640),
    bilinearly; the detector runs; boxes and landmarks are scaled back; faces whose eye distance is
    under ``eye_distance_threshold`` (5 px) are dropped.
align: a similarity transform from the 5 landmarks to the FFHQ template (LMedS, as
    cv2.estimateAffinePartial2D), then cv2.warpAffine-exact bilinear warp to face_size x face_size
    with the border filled with (135, 133, 132).
paste: per face, the inverse warp of the restored crop and of an all-ones square mask, a 2x2 erosion
    (the hard mask), then a soft mask: erosion by 2*w and a Gaussian blur of size 2*w+1 with
    w = int(sqrt(hard mask area)) // 20; optionally min() with the ParseNet face mask; blended
    ``soft * hard * face + (1 - soft) * image``, face after face.

Deliberate differences, each with a switch for the official behaviour (``official_quirks``):
- DiffBIR hands facexlib RGB arrays where it expects BGR: RetinaFace gets its channel means
  subtracted from the wrong channels, ParseNet gets BGR. Ours: the channel order the networks were
  trained with.
- DiffBIR's eye distance reads the wrong landmark entries (an index slip in its fork:
  |(left_eye_y - right_eye_y, right_eye_x - nose_x)|). Ours: the distance between the two eyes.
- DiffBIR aligns and pastes 8-bit arrays: cv2.warpAffine rounds the aligned crop to uint8; the restored
  face and background are its pipeline's uint8 outputs
  (x * 255 truncated), cv2.warpAffine rounds the warped face to uint8, ParseNet reads the uint8 face,
  and the blended result is truncated to uint8. Ours: float throughout (``eight_bit``).
Faces are ordered left to right (or by size or score) instead of detector order, so indices are stable.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import torch

from . import color_fix, face_geometry

SELECT_MODES = ("all", "largest", "center", "indices")
ORDERS = ("left to right", "largest first", "detector score")


@dataclass
class Face:
    image_index: int  # which image of the input batch
    index: int  # position among the faces detected in that image (the number on the preview)
    box: list  # x0, y0, x1, y1 in source pixels
    score: float
    landmarks: list  # 5 x (x, y) in source pixels
    affine: list  # 2x3, source pixel -> crop pixel
    source_size: tuple  # (height, width) of the source image


@dataclass
class FaceSet:
    """What the detect node hands to the paste node (the DIFFBIR_FACES wire)."""

    faces: list = field(default_factory=list)
    image_sizes: list = field(default_factory=list)  # (height, width) per source image
    face_size: int = 512
    detector: str = ""
    message: str = ""

    def __len__(self):
        return len(self.faces)

    def as_dict(self) -> dict:
        return {"face_size": self.face_size, "detector": self.detector, "image_sizes": self.image_sizes,
                "message": self.message, "faces": [vars(f) for f in self.faces]}


# -- detection ----------------------------------------------------------------------------------
def eye_distance(landmarks: torch.Tensor, official_quirks: bool = False) -> torch.Tensor:
    """Per face [N] distance between the eyes of landmarks [N,5,2]; with ``official_quirks`` the value
    DiffBIR's helper computes instead (see the module docstring)."""
    if official_quirks:
        return torch.hypot(landmarks[:, 0, 1] - landmarks[:, 1, 1], landmarks[:, 1, 0] - landmarks[:, 2, 0])
    return torch.hypot(landmarks[:, 0, 0] - landmarks[:, 1, 0], landmarks[:, 0, 1] - landmarks[:, 1, 1])


# The most pixels detection enlarges an image to (a 4K frame): the official short-side rule stays as it is
# up to 20 times as long as tall at the default 640 px (a larger image is detected at its own size).
DETECTION_MAX_PIXELS = 3840 * 2160


def detect(detector, rgb: torch.Tensor, detection_size: int = 640, eye_distance_threshold: float = 5.0,
           official_quirks: bool = False):
    """Faces in one image rgb [3,H,W] in [0,1]: (boxes [N,5], landmarks [N,5,2]) in its pixels, in the
    detector's order. ``detector(image_255 [1,3,h,w] RGB, official_quirks)`` -> (boxes, landmarks)."""
    height, width = rgb.shape[-2:]
    image = (rgb[None].float() * 255).round().clamp(0, 255)
    scale = 1.0
    if detection_size and detection_size > 0:
        scale = max(1.0, detection_size / min(height, width))
    # the official helper enlarges whatever the shape: a 1x300 strip would be detected at 192000 x 640
    most = max(1.0, math.sqrt(DETECTION_MAX_PIXELS / (height * width)))
    if scale > most:
        logging.warning(
            "DiffBIR Face Detect & Align: a %dx%d image is detected at %dx%d, not with its short side at %d px as "
            "the official code does (%dx%d): at most a 4K frame's pixel count for an image this long and thin",
            width, height, int(width * most), int(height * most), detection_size, int(width * scale),
            int(height * scale))
        scale = most
    if scale > 1:
        size = (int(height * scale), int(width * scale))
        image = face_geometry.resize_linear(image, size).round().clamp(0, 255)
    boxes, landmarks = detector(image, official_quirks)
    boxes, landmarks = boxes.float().clone(), landmarks.float().clone()
    boxes[:, :4] /= scale
    landmarks /= scale
    if eye_distance_threshold and eye_distance_threshold > 0 and boxes.shape[0] > 0:
        keep = eye_distance(landmarks, official_quirks) >= eye_distance_threshold
        boxes, landmarks = boxes[keep], landmarks[keep]
    return boxes, landmarks


def face_order(boxes: torch.Tensor, order: str = "left to right") -> list:
    """Indices of ``boxes`` [N,5] in display order."""
    count = boxes.shape[0]
    if order == "detector score":
        return list(range(count))
    if order == "largest first":
        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
        return sorted(range(count), key=lambda i: (-areas[i], i))
    centres = (((boxes[:, 0] + boxes[:, 2]) / 2).tolist(), ((boxes[:, 1] + boxes[:, 3]) / 2).tolist())
    return sorted(range(count), key=lambda i: (round(centres[0][i], 3), round(centres[1][i], 3), i))


# More indices than any photo has faces; a longer range ("0-300000") is cut here instead of being
# expanded (and warned about) one index at a time.
MAX_INDICES = 1000


def parse_indices(text: str) -> list:
    """"0, 2, 5" -> [0, 2, 5], "1-3" -> [1, 2, 3], "-1" -> [-1] (the last face); anything else is an
    error naming the part it cannot read. At most MAX_INDICES indices (one warning when cut)."""
    indices = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        span = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
        if span:
            first, last = int(span.group(1)), int(span.group(2))
            if first > last:
                raise ValueError(f"face index range {part!r} runs backwards: write it as '{last}-{first}'")
            room = MAX_INDICES - len(indices)
            if last - first + 1 > room:
                logging.warning("DiffBIR faces: index range %r cut to its first %d indices (no photo has more faces)",
                                part, max(room, 0))
                last = first + room - 1
            indices.extend(range(first, last + 1))
        elif re.fullmatch(r"-?\d+", part):
            indices.append(int(part))
        else:
            raise ValueError(f"face indices must be numbers or ranges like '0, 2, 4-6'; cannot read {part!r}")
    return indices


def select(boxes: torch.Tensor, image_size, mode: str = "all", indices: str = "", min_size: float = 0.0) -> list:
    """Which faces (positions in ``boxes``, already in display order) to restore.

    min_size: drop faces whose box's shorter side is under this many source pixels (0: keep all).
    mode: all | largest (clipped box area, as the official helper) | center (box centre closest to
    the image centre, as the official helper) | indices (display indices, e.g. "0, 2" or "1-3";
    negative counts from the end; indices that do not exist are ignored with a warning).
    """
    count = boxes.shape[0]
    candidates = list(range(count))
    if min_size and min_size > 0:
        sides = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        candidates = [i for i in candidates if float(sides[i]) >= min_size]
    if not candidates:
        return []
    height, width = image_size
    if mode == "all":
        return candidates
    if mode == "largest":
        clipped = boxes[:, :4].clone()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
        areas = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        return [max(candidates, key=lambda i: (float(areas[i]), -i))]
    if mode == "center":
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
        distance = torch.hypot(cx, cy)
        return [min(candidates, key=lambda i: (float(distance[i]), i))]
    if mode == "indices":
        chosen, missing = [], []
        for index in parse_indices(indices):
            position = index if index >= 0 else count + index
            if not 0 <= position < count:
                missing.append(index)
                continue
            if position in candidates and position not in chosen:
                chosen.append(position)
        if missing:  # one line, however many
            shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            logging.warning("DiffBIR faces: there is no face %s (found %d: 0-%d); ignored", shown, count, count - 1)
        return chosen
    raise ValueError(f"unknown face selection {mode!r}; choose one of {', '.join(SELECT_MODES)}")


# -- alignment ----------------------------------------------------------------------------------
def alignment_matrix(landmarks, face_size: int = 512, robust: bool = True) -> torch.Tensor:
    """2x3 float64 similarity: source pixels -> face_size crop (landmarks onto the FFHQ template). Both point
    sets are taken at float32 precision, as cv2.estimateAffinePartial2D converts them: the float64 template
    moves the fit by ~1e-4 px, enough to move some crop pixels to the next 1/32 px sampling cell of the warp
    (up to 2 levels on sharp edges) and so change the restored face."""
    return face_geometry.estimate_similarity(torch.as_tensor(landmarks).float().double(),
                                             face_geometry.face_template(face_size).float().double(), robust=robust)


def align_crop(rgb: torch.Tensor, matrix, face_size: int = 512, eight_bit: bool = False) -> torch.Tensor:
    """Aligned crop [3,S,S] of rgb [3,H,W] in [0,1], border (135, 133, 132)/255 as DiffBIR fills it.
    ``eight_bit``: as cv2.warpAffine on the official helper's uint8 image: the image taken at its nearest
    uint8 levels and the crop rounded to levels (exactly cv2's: its weights are exact on the 1/32 px grid)."""
    if eight_bit:
        levels = (rgb.double() * 255).round()
        fill = torch.tensor(face_geometry.CROP_BORDER_RGB, dtype=torch.float64)
        crop = face_geometry.warp_affine(levels[None], matrix, (face_size, face_size), border_value=fill)[0]
        return (torch.floor(crop + 0.5) / 255).to(rgb.dtype)
    fill = torch.tensor(face_geometry.CROP_BORDER_RGB, dtype=rgb.dtype) / 255.0
    return face_geometry.warp_affine(rgb[None], matrix, (face_size, face_size), border_value=fill)[0]


def detect_and_align(images: torch.Tensor, detector, face_size: int = 512, detection_size: int = 640,
                     eye_distance_threshold: float = 5.0, mode: str = "all", indices: str = "",
                     min_size: float = 0.0, order: str = "left to right", official_quirks: bool = False,
                     detector_name: str = "", progress=None):
    """images [B,3,H,W] in [0,1] -> (crops [N,3,S,S], FaceSet, per image (boxes, landmarks, selected
    positions) in display order for the preview). N = 0 when no face is selected."""
    faceset = FaceSet(face_size=int(face_size), detector=detector_name,
                      image_sizes=[tuple(images.shape[-2:])] * images.shape[0])
    crops, found = [], []
    for b in range(images.shape[0]):
        boxes, landmarks = detect(detector, images[b], detection_size, eye_distance_threshold, official_quirks)
        ordering = face_order(boxes, order)
        boxes, landmarks = boxes[ordering], landmarks[ordering]
        chosen = select(boxes, images.shape[-2:], mode, indices, min_size)
        found.append((boxes, landmarks, chosen))
        for position in chosen:
            matrix = alignment_matrix(landmarks[position], face_size)
            crops.append(align_crop(images[b], matrix, face_size, eight_bit=official_quirks))
            faceset.faces.append(Face(image_index=b, index=position, box=boxes[position, :4].tolist(),
                                      score=float(boxes[position, 4]), landmarks=landmarks[position].tolist(),
                                      affine=matrix.tolist(), source_size=tuple(images.shape[-2:])))
        if progress is not None:
            progress(b + 1)
    detected = sum(f[0].shape[0] for f in found)
    faceset.message = (f"{detected} face(s) detected in {images.shape[0]} image(s), {len(faceset)} selected "
                       f"(detector {detector_name}, selection {mode})")
    stacked = torch.stack(crops) if crops else images.new_zeros(0, 3, face_size, face_size)
    return stacked, faceset, found


def placeholder_crop(face_size: int = 512) -> torch.Tensor:
    """One crop of border colour [1,3,S,S]: what the crops output carries when no face was selected, so
    the restoration chain still runs; the paste node ignores it."""
    fill = torch.tensor(face_geometry.CROP_BORDER_RGB, dtype=torch.float32) / 255.0
    return fill.view(1, 3, 1, 1).expand(1, 3, face_size, face_size).clone()


# -- preview ------------------------------------------------------------------------------------
def draw_preview(images: torch.Tensor, found: list) -> torch.Tensor:
    """images [B,3,H,W] in [0,1] with every detected face's box, index and landmarks: selected faces
    in green, the others in red. Returns [B,3,H,W]."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    out = []
    for b in range(images.shape[0]):
        pixels = (images[b].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        canvas = Image.fromarray(pixels)
        draw = ImageDraw.Draw(canvas)
        height, width = pixels.shape[:2]
        line = max(2, round(min(height, width) / 250))
        try:
            font = ImageFont.load_default(size=max(12, round(min(height, width) / 25)))
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        boxes, landmarks, chosen = found[b]
        if boxes.shape[0] == 0:
            draw.text((line * 3, line * 3), "no face found", fill=(255, 64, 64), font=font)
        for position in range(boxes.shape[0]):
            colour = (40, 220, 60) if position in chosen else (230, 50, 50)
            x0, y0, x1, y1 = boxes[position, :4].tolist()
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
            for x, y in landmarks[position].tolist():
                draw.ellipse([x - line, y - line, x + line, y + line], fill=colour)
            label = str(position)
            text_box = draw.textbbox((x0, y0), label, font=font)
            text_h = text_box[3] - text_box[1]
            top = y0 - text_h - 2 * line if y0 - text_h - 2 * line >= 0 else y0 + line
            draw.rectangle([x0, top, x0 + (text_box[2] - text_box[0]) + 2 * line, top + text_h + 2 * line], fill=colour)
            draw.text((x0 + line, top + line - (text_box[1] - y0)), label, fill=(0, 0, 0), font=font)
        out.append(torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


# -- paste-back ---------------------------------------------------------------------------------
def _colour_match(face: torch.Tensor, background: torch.Tensor, forward: torch.Tensor, method: str) -> torch.Tensor:
    """face [1,3,R,R] given the colours of the background under it (``forward``: background -> crop)."""
    size = face.shape[-1]
    under = face_geometry.warp_affine(background, forward, (size, size), border="replicate")
    if method == "wavelet":
        return color_fix.wavelet_color_fix(face, under)
    if method == "adain":
        valid = face_geometry.warp_affine(torch.ones_like(background[:, :1]), forward, (size, size)) > 0.999
        if int(valid.sum()) < 16:
            return face
        weights = valid.to(face.dtype)

        def stats(x):
            mean = (x * weights).sum(dim=(2, 3), keepdim=True) / weights.sum()
            var = (((x - mean) ** 2) * weights).sum(dim=(2, 3), keepdim=True) / weights.sum()
            return mean, (var + 1e-5).sqrt()

        face_mean, face_std = stats(face)
        under_mean, under_std = stats(under)
        return (face - face_mean) / face_std * under_std + under_mean
    if method == "none":
        return face
    raise ValueError(f"unknown colour matching {method!r}; choose none, wavelet or adain")


def paste_matrices(face: Face, restored_size: int, face_size: int, background_size):
    """(forward background -> restored crop, inverse) 2x3 float64 matrices for a face whose restored
    crop is restored_size px (the crop was face_size px) pasted on a background of background_size."""
    src_h, src_w = face.source_size
    bg_h, bg_w = background_size
    to_source = face_geometry.pixel_scale_matrix(src_w / bg_w, src_h / bg_h)
    to_restored = face_geometry.pixel_scale_matrix(restored_size / face_size, restored_size / face_size)
    forward = face_geometry.compose_affine(to_restored, face_geometry.compose_affine(
        torch.tensor(face.affine, dtype=torch.float64), to_source))
    return forward, face_geometry.invert_affine(forward)


def paste_masks(face: Face, size: int, face_size: int, background_size, parse_mask=None, feather: float = 1.0):
    """The official paste masks of one face whose restored crop is ``size`` px, on a background of
    ``background_size`` (h, w): (window (top, left, h, w) of the background they cover, inverse matrix
    (restored crop -> background), hard mask [1,1,h,w] float32, soft mask [1,1,h,w]); None when the
    face lies outside the background. ``parse_mask``: [1,1,512,512] from parse_mask_from_labels."""
    bg_h, bg_w = background_size
    _, inverse = paste_matrices(face, size, face_size, background_size)
    area_estimate = abs(float(torch.det(inverse[:, :2]))) * size * size
    margin = int(math.sqrt(area_estimate) * max(feather, 1.0) / 20) + 6
    window = face_geometry.warped_bounds(inverse, (size, size), (bg_h, bg_w), margin)
    if window is None:
        return None
    ones = torch.ones(1, 1, size, size, dtype=torch.float32)
    hard = face_geometry.warp_affine(ones, inverse, (bg_h, bg_w), window=window)
    hard = face_geometry.erode(hard, max(1, int(2 * bg_w / face.source_size[1])))
    w_edge = int(int(float(hard.double().sum()) ** 0.5) * feather) // 20
    soft = face_geometry.gaussian_blur(face_geometry.erode(hard, 2 * w_edge), 2 * w_edge + 1)
    if parse_mask is not None:
        parse = face_geometry.resize_linear(parse_mask.to(torch.float64), (size, size))
        parse = face_geometry.warp_affine(parse, inverse, (bg_h, bg_w), window=window)
        soft = torch.where(parse < soft, parse, soft.to(torch.float64))
    return window, inverse, hard, soft


def to_levels(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> the uint8 levels the official pipeline saves ((x * 255).clamp(0, 255) truncated), as
    float64."""
    return (image.double() * 255).clamp(0, 255).floor()


def paste_faces(background: torch.Tensor, restored: torch.Tensor, faceset: FaceSet, parse_masks=None,
                color_match: str = "none", feather: float = 1.0, progress=None, eight_bit: bool = False):
    """background [B,3,H,W], restored crops [N,3,R,R] (in the order of faceset.faces), optional
    parse_masks [N,1,512,512] (face_parsing.parse_mask_from_labels) -> (image [B,3,H,W], mask [B,H,W]:
    how much of each pixel comes from the faces).

    ``eight_bit``: the official helper's arithmetic: background and crops taken as their truncated uint8
    levels (the caller quantises the crops it parses with to_levels too), the warped face rounded to
    levels (cv2.warpAffine on uint8), the blend in float64 and the result truncated to levels."""
    if eight_bit:
        dtype = background.dtype
        background = to_levels(background)
        restored = to_levels(restored)
    if len(faceset.image_sizes) != background.shape[0]:
        raise ValueError(f"the faces were detected in {len(faceset.image_sizes)} image(s) but the background has "
                         f"{background.shape[0]}: connect the background restored from the same image batch")
    if restored.shape[0] != len(faceset):
        raise ValueError(f"expected {len(faceset)} restored face(s), one per crop of the detect node in the same "
                         f"order, got {restored.shape[0]}")
    out = background.clone()
    keep = torch.ones(background.shape[0], 1, *background.shape[-2:], dtype=background.dtype)
    bg_h, bg_w = background.shape[-2:]
    size = restored.shape[-1]
    for number, face in enumerate(faceset.faces):
        src_h, src_w = face.source_size
        if abs((bg_w / src_w) / (bg_h / src_h) - 1) > 0.01:
            logging.warning("DiffBIR face paste: the background (%dx%d) has another aspect ratio than the image the "
                            "faces were found in (%dx%d); faces will be stretched", bg_w, bg_h, src_w, src_h)
        b = face.image_index
        parse = parse_masks[number:number + 1] if parse_masks is not None else None
        masks = paste_masks(face, size, faceset.face_size, (bg_h, bg_w), parse, feather)
        if masks is None:
            continue
        (top, left, win_h, win_w), inverse, hard, soft = masks
        crop = restored[number:number + 1].to(background.dtype)
        if color_match != "none":
            forward = face_geometry.invert_affine(inverse)
            crop = _colour_match(crop, background[b:b + 1], forward, color_match)
        soft = soft.to(background.dtype)
        warped = face_geometry.warp_affine(crop, inverse, (bg_h, bg_w), window=(top, left, win_h, win_w))
        if eight_bit:  # cv2 rounds the warped uint8 face; the official face times mask is float32
            warped = (hard * torch.floor(warped + 0.5).float()).double()
        else:
            warped = hard * warped
        region = (slice(b, b + 1), slice(None), slice(top, top + win_h), slice(left, left + win_w))
        out[region] = soft * warped + (1 - soft) * out[region]
        keep[region] = keep[region] * (1 - soft)
        if progress is not None:
            progress(number + 1)
    if eight_bit:
        out = (out.floor() / 255).to(dtype)
    return out, (1 - keep)[:, 0]
