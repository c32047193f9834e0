"""The face nodes in a real ComfyUI: detection (MTCNN with its real weights from facenet-pytorch;
RetinaFace with random weights in the published layouts), selection, alignment, paste-back."""

import math

import numpy as np
import pytest
import torch

from devkit import face_data, model_factory
from devkit.model_factory import install_model


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def mtcnn(comfy):
    with torch.inference_mode():
        return comfy.node_class("DiffBIRFaceDetectorLoader").execute("mtcnn", False).result[0]


def detect(comfy, image, detector, **options):
    with torch.inference_mode():
        return comfy.node_class("DiffBIRFaceDetectAlign").execute(image, detector, **options).result


def paste(comfy, background, restored, faces, **options):
    with torch.inference_mode():
        return comfy.node_class("DiffBIRFacePasteBack").execute(background, restored, faces, **options).result


@pytest.fixture(scope="module")
def astronaut_faces(comfy, mtcnn):
    image = face_data.astronaut()
    return image, detect(comfy, image, mtcnn)


def test_mtcnn_finds_the_astronaut(astronaut_faces):
    image, (crops, faces, preview) = astronaut_faces
    assert crops.shape == (1, 512, 512, 3) and crops.dtype == torch.float32
    assert len(faces) == 1 and faces.detector == "mtcnn"
    face = faces.faces[0]
    assert face.image_index == 0 and face.source_size == (512, 512)
    landmarks = np.array(face.landmarks)
    print("astronaut landmarks (MTCNN):", landmarks.round(2).tolist())
    assert np.abs(landmarks - np.array(face_data.ASTRONAUT_LANDMARKS)).max() < 3.0
    assert np.abs(np.array(face.box) - np.array(face_data.ASTRONAUT_BOX)).max() < 5.0
    # the crop is the face on the FFHQ template: eyes where the template has them
    matrix = torch.tensor(face.affine, dtype=torch.float64)
    mapped = landmarks @ matrix[:, :2].T.numpy() + matrix[:, 2].numpy()
    template = np.array([[192.98, 239.95], [318.90, 240.19], [256.63, 314.02], [201.26, 371.41], [313.09, 371.15]])
    residual = np.hypot(*(mapped - template).T)  # a similarity cannot fit 5 points exactly
    assert residual.mean() < 15 and residual[:2].max() < 8
    assert preview.shape == image.shape
    changed = (preview - image).abs().amax(dim=-1) > 0.1
    assert changed.any() and changed.float().mean() < 0.1  # boxes and dots drawn, nothing else
    green = (preview[..., 1] > 0.8) & (preview[..., 0] < 0.3) & (preview[..., 2] < 0.4)
    assert green.sum() > 200  # the selected face is green


def test_round_trip_reproduces_the_image(comfy, astronaut_faces):
    """detect, align, paste the unmodified crops back: the pasted region reproduces the image."""
    image, (crops, faces, _) = astronaut_faces
    out, mask = paste(comfy, image, crops, faces)
    assert out.shape == image.shape and mask.shape == (1, 512, 512)
    region = mask[0] > 0
    assert region.sum() > 5000
    value = psnr(out[0][region], image[0][region])
    soft = (mask[0] > 0) & (mask[0] < 1)
    seam = psnr(out[0][soft], image[0][soft])
    print(f"round trip on astronaut: PSNR {value:.2f} dB inside the pasted region ({int(region.sum())} px), "
          f"{seam:.2f} dB on the soft border ({int(soft.sum())} px)")
    assert value > 40
    assert torch.equal(out[0][~region], image[0][~region])


def test_no_face_passes_through(comfy, mtcnn):
    grey = torch.full((1, 96, 128, 3), 0.5)
    crops, faces, preview = detect(comfy, grey, mtcnn)
    assert len(faces) == 0 and "0 face" in faces.message
    assert crops.shape == (1, 512, 512, 3)  # one placeholder so the restoration chain still runs
    assert preview.shape == grey.shape and (preview != grey).any()  # "no face found" written on it
    background = torch.rand(1, 96, 128, 4)
    out, mask = paste(comfy, background, crops, faces)
    assert torch.equal(out, background) and mask.shape == (1, 96, 128) and not mask.any()


def two_heads():
    """A 512x512 picture with two half-size astronauts side by side."""
    small = torch.nn.functional.interpolate(face_data.astronaut().permute(0, 3, 1, 2), size=(256, 256),
                                            mode="bilinear", antialias=True)
    canvas = torch.full((1, 3, 512, 512), 0.3)
    canvas[..., 128:384, 0:256] = small
    canvas[..., 128:384, 256:512] = small
    return canvas.permute(0, 2, 3, 1).contiguous()


def test_batch_with_different_face_counts(comfy, mtcnn):
    batch = torch.cat([face_data.astronaut(), two_heads()])
    crops, faces, preview = detect(comfy, batch, mtcnn, detection_size=0)
    assert [f.image_index for f in faces.faces] == [0, 1, 1]
    assert crops.shape == (3, 512, 512, 3) and preview.shape == batch.shape
    assert faces.faces[1].box[0] < faces.faces[2].box[0]  # left to right
    restored = torch.stack([torch.full((512, 512, 3), v) for v in (0.0, 1.0, 0.5)])
    out, mask = paste(comfy, batch, restored, faces)
    for b, count in ((0, 1), (1, 2)):
        assert torch.equal(out[b][mask[b] == 0], batch[b][mask[b] == 0])
        assert (mask[b] > 0.99).sum() > 1000 * count
    # each face lands in its own image and place: the right head of image 1 got the grey crop
    right = faces.faces[2]
    cx, cy = int((right.box[0] + right.box[2]) / 2), int((right.box[1] + right.box[3]) / 2)
    assert torch.allclose(out[1, cy, cx], torch.tensor(0.5), atol=1e-3)
    left = faces.faces[1]
    cx, cy = int((left.box[0] + left.box[2]) / 2), int((left.box[1] + left.box[3]) / 2)
    assert torch.allclose(out[1, cy, cx], torch.tensor(1.0), atol=1e-3)


def test_paste_onto_a_larger_background(comfy, astronaut_faces):
    """Faces found at 512 px pasted onto a 2x background land in the right place."""
    image, (crops, faces, _) = astronaut_faces
    big = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), scale_factor=2, mode="bicubic")
    big = big.clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    crops_big = torch.nn.functional.interpolate(crops.permute(0, 3, 1, 2), scale_factor=2, mode="bicubic")
    crops_big = crops_big.clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    out, mask = paste(comfy, big, crops_big, faces)
    assert out.shape == big.shape
    region = mask[0] > 0.5
    assert region.sum() > 4 * 5000
    value = psnr(out[0][region], big[0][region])
    print(f"2x background round trip: PSNR {value:.2f} dB")
    assert value > 30


def test_colour_matching_and_feather(comfy, astronaut_faces):
    """Also: restored crops of another size (256 px for 512 px crops) paste to the same place."""
    image, (crops, faces, _) = astronaut_faces
    crops = torch.nn.functional.interpolate(crops.permute(0, 3, 1, 2), size=(256, 256), mode="bilinear",
                                            antialias=True).permute(0, 2, 3, 1).contiguous()
    tinted = (crops * torch.tensor([1.0, 0.7, 0.7]) + 0.1).clamp(0, 1)  # a colour-shifted "restoration"
    plain, mask = paste(comfy, image, tinted, faces)
    region = mask[0] > 0.99
    error_plain = (plain[0][region] - image[0][region]).abs().mean()
    for method in ("wavelet", "adain"):
        matched, _ = paste(comfy, image, tinted, faces, color_match=method)
        assert 0 <= matched.min() and matched.max() <= 1
        error = (matched[0][region] - image[0][region]).abs().mean()
        assert error < 0.5 * error_plain, (method, float(error), float(error_plain))
    _, wide = paste(comfy, image, crops, faces, feather=2.0)
    _, hard = paste(comfy, image, crops, faces, feather=0.0)
    soft_band = lambda m: ((m > 0.01) & (m < 0.99)).sum()  # noqa: E731
    assert soft_band(wide[0]) > soft_band(mask[0]) > soft_band(hard[0])


@pytest.fixture(scope="module")
def group(comfy, mtcnn):
    """t1.jpg at half size (640x443: six faces of ~50 px), detected once with MTCNN."""
    photo = face_data.group_photo()
    if photo is None:
        pytest.skip("t1.jpg needs PyPI (pip download insightface==2.1 --no-deps), which cannot be reached")
    half = torch.nn.functional.interpolate(photo.permute(0, 3, 1, 2), scale_factor=0.5, mode="bilinear",
                                           antialias=True).permute(0, 2, 3, 1).contiguous()
    faces_module = comfy.pack_module("diffbir_modules.faces")
    with torch.inference_mode():
        boxes, landmarks = faces_module.detect(lambda img, q: mtcnn.detect(img, q, 0.8), half[0].permute(2, 0, 1),
                                               detection_size=0)
    return half, boxes, landmarks


def test_group_photo_count_and_selection(comfy, group):
    photo, boxes, landmarks = group
    faces_module = comfy.pack_module("diffbir_modules.faces")
    height, width = photo.shape[1:3]
    boxes = boxes[faces_module.face_order(boxes)]
    centres = (boxes[:, 0] + boxes[:, 2]) / 2
    sides = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    print(f"t1.jpg (640x443): {boxes.shape[0]} faces, scores {boxes[:, 4].tolist()}, box sides {sides.tolist()}")
    assert boxes.shape[0] == 6  # the six people, nothing else
    assert torch.all(centres[1:] >= centres[:-1])  # numbered left to right
    assert faces_module.select(boxes, (height, width), "all") == list(range(6))
    threshold = float(sides.median())
    big = faces_module.select(boxes, (height, width), "all", min_size=threshold)
    assert big == [i for i in range(6) if sides[i] >= threshold] and 0 < len(big) < 6
    largest = faces_module.select(boxes, (height, width), "largest")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert largest == [int(areas.argmax())]
    centre = faces_module.select(boxes, (height, width), "center")
    distances = torch.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - width / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2)
    assert centre == [int(distances.argmin())]
    assert faces_module.select(boxes, (height, width), "indices", "0, 2, 99") == [0, 2]
    assert faces_module.select(boxes, (height, width), "indices", "1-3") == [1, 2, 3]
    assert faces_module.select(boxes, (height, width), "indices", "-1") == [5]
    assert faces_module.select(boxes, (height, width), "indices", "0, 2", min_size=10_000) == []
    with pytest.raises(ValueError, match="cannot read 'x'"):
        faces_module.select(boxes, (height, width), "indices", "0, x")
    # the numbering does not depend on the detector's order or on a small shift of the picture
    shifted = boxes.clone()
    shifted[:, :4] += 7
    shuffled = shifted[torch.randperm(6, generator=torch.Generator().manual_seed(0))]
    assert torch.equal(shuffled[faces_module.face_order(shuffled)], shifted)
    ordered_areas = areas[faces_module.face_order(boxes, "largest first")]
    assert torch.all(ordered_areas[1:] <= ordered_areas[:-1])


def test_group_photo_node_selection(comfy, group, mtcnn):
    photo, _, _ = group
    crops, faces, preview = detect(comfy, photo, mtcnn, selection="indices", indices="0, 2", detection_size=0)
    assert [f.index for f in faces.faces] == [0, 2] and crops.shape == (2, 512, 512, 3)
    assert faces.faces[0].box[0] < faces.faces[1].box[0]
    # four red boxes (skipped) and two green ones on the preview
    red = (preview[0, ..., 0] > 0.85) & (preview[0, ..., 1] < 0.25) & (preview[0, ..., 2] < 0.25)
    green = (preview[0, ..., 1] > 0.8) & (preview[0, ..., 0] < 0.25) & (preview[0, ..., 2] < 0.3)
    assert red.sum() > green.sum() > 200


@pytest.fixture(scope="module")
def retinaface_files():
    names = {}
    for kind, filename, prefix in (("retinaface_resnet50", "detection_Resnet50_Final.pth", True),
                                   ("retinaface_mobilenet0.25", "detection_mobilenet0.25_Final.pth", False)):
        source = model_factory.face_model_file(kind, seed=3, module_prefix=prefix)
        names[kind] = install_model("facedetection", source, filename)
    return names


@pytest.mark.parametrize("kind", ["retinaface_resnet50", "retinaface_mobilenet0.25"])
def test_retinaface_nodes_run_with_random_weights(comfy, retinaface_files, kind):
    """The published file layouts load (random weights, DataParallel prefix for ResNet-50) and the whole
    node runs. Detection quality with real RetinaFace weights cannot be checked here (no download)."""
    with torch.inference_mode():
        detector = comfy.node_class("DiffBIRFaceDetectorLoader").execute(kind, False).result[0]
    assert detector.name == kind
    image = face_data.astronaut()[:, ::4, ::4].contiguous()
    for quirks in (False, True) if "mobilenet" in kind else (False,):
        crops, faces, preview = detect(comfy, image, detector, selection="largest", confidence=0.5,
                                       detection_size=0, face_size=64, official_quirks=quirks)
        assert crops.shape[1:] == (64, 64, 3) and crops.shape[0] == max(1, len(faces)) and len(faces) <= 1
        assert preview.shape == image.shape


def test_weight_errors_say_what_to_do(comfy, tmp_path, monkeypatch):
    import folder_paths

    face_models = comfy.pack_module("diffbir_modules.face_models")
    weights = comfy.pack_module("diffbir_modules.weights")
    empty = tmp_path / "facedetection"
    empty.mkdir()
    exts = folder_paths.folder_names_and_paths["facedetection"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "facedetection", ([str(empty)], exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    with pytest.raises(FileNotFoundError) as info:  # downloads.MissingWeightsError
        face_models.load_parser(allow_download=False)
    parsenet = weights.entry(face_models.PARSENET_KEY)
    for part in (parsenet.filename, parsenet.urls[0], str(empty), "download_missing = false"):
        assert part in str(info.value)
    detection = comfy.pack_module("diffbir_modules.face_detection")
    with pytest.raises(ValueError, match="parsing_parsenet.pth is a ParseNet face parser.*Face Parser Loader"):
        detection.build_retinaface({"out_mask_conv.conv2d.weight": torch.zeros(1)}, source="parsing_parsenet.pth")
    with pytest.raises(ValueError, match="not a RetinaFace file"):
        detection.build_retinaface({"unknown.weight": torch.zeros(1)}, source="unknown.pth")
    broken = model_factory.face_state_dict(model_factory.retinaface_layout("mobilenet0.25"), 0)
    broken.pop("ssh1.conv3X3.0.weight")
    with pytest.raises(ValueError, match="1 missing keys"):
        detection.build_retinaface(broken, source="broken.pth")


def test_paste_with_face_parser(comfy, astronaut_faces, monkeypatch, model_loads):
    """ParseNet (random weights in the published layout) limits the paste mask. The official network
    input is 512 px (~10 s on 2 CPU cores); here it runs at 128 px to keep the test short (the mask
    maths at 512 is checked against the official code in test_faces_parity.py)."""
    monkeypatch.setattr(comfy.pack_module("diffbir_modules.face_parsing"), "PARSE_SIZE", 128)
    install_model("facedetection", model_factory.face_model_file("parsenet", seed=4), "parsing_parsenet.pth")
    image, (crops, faces, _) = astronaut_faces
    with torch.inference_mode():
        parser = comfy.node_class("DiffBIRFaceParserLoader").execute(False).result[0]
    _, plain_mask = paste(comfy, image, crops, faces)
    out, mask = paste(comfy, image, crops, faces, face_parser=parser)
    assert out.shape == image.shape and mask.shape == plain_mask.shape
    assert torch.all(mask <= plain_mask + 1e-6)  # the parse mask only ever narrows the soft mask
    face_models = comfy.pack_module("diffbir_modules.face_models")
    assert model_loads == [(parser.patcher, face_models.PARSER_BYTES, True)]


def test_detector_loads_whole_with_room_for_the_image(comfy, mtcnn, monkeypatch, model_loads):
    """The detector goes onto ComfyUI's device whole (a plain network: a partial load would split it
    between devices) after freeing room for its activations at the image's size."""
    face_models = comfy.pack_module("diffbir_modules.face_models")
    image = face_data.astronaut()
    inputs, original = [], mtcnn.detect
    monkeypatch.setattr(mtcnn, "detect", lambda image_255, *args, **kwargs: (
        inputs.append(image_255.shape[-2:]), original(image_255, *args, **kwargs))[1])
    detect(comfy, image, mtcnn)
    (height, width), = inputs  # the image as the detector gets it (resized for detection)
    assert model_loads == [(mtcnn.patcher, height * width * face_models.DETECTOR_BYTES_PER_PIXEL, True)]


def test_paste_official_quirks_works_on_8_bits(comfy, astronaut_faces):
    """official_quirks pastes as the official helper (uint8 face and background, result truncated to
    uint8 levels: bit-exact against it in test_faces_parity.py); the default stays float."""
    image, (crops, faces, _) = astronaut_faces
    shifted = (crops * 0.9 + 0.0513).clamp(0, 1)  # a "restoration" off the 8-bit grid
    plain, plain_mask = paste(comfy, image, shifted, faces)
    official, official_mask = paste(comfy, image, shifted, faces, official_quirks=True)
    # exact levels: Save Image's 255 * x (float32), truncated, gives back each level
    levels = official.double() * 255
    assert (levels - levels.round()).abs().max() < 1e-4
    saved = np.clip(255.0 * official.numpy(), 0, 255).astype(np.uint8)
    assert np.array_equal(saved, levels.round().numpy().astype(np.uint8))
    assert (plain.double() * 255 - (plain.double() * 255).round()).abs().max() > 0.1  # the default: float
    assert torch.allclose(official_mask, plain_mask, atol=1e-6)  # same masks (kept in float64 there)
    # the same image up to the 8-bit steps: the face truncated (< 1 level), its warp rounded (0.5) and the
    # result truncated (< 1) stay under 2.5 levels (measured max 2.42 here; the background is 8-bit already)
    assert (official - plain).abs().max() * 255 < 2.5


def test_detection_enlarges_a_long_thin_image_only_to_a_4k_frame(comfy, caplog):
    """The official rule (short side up to detection_size) holds for ordinary shapes; a strip a few pixels
    tall stops at a 4K frame's pixel count instead of 61 megapixels (a 2x300 strip: 640 x 96000 officially)."""
    import logging

    faces_module = comfy.pack_module("diffbir_modules.faces")
    seen = []

    def detector(image_255, official_quirks):
        seen.append(tuple(image_255.shape[-2:]))
        return torch.zeros(0, 5), torch.zeros(0, 5, 2)

    faces_module.detect(detector, torch.rand(3, 100, 300))
    assert seen == [(640, 1920)]
    seen.clear()
    with caplog.at_level(logging.WARNING):
        faces_module.detect(detector, torch.rand(3, 2, 300))
    (height, width), = seen
    assert 2 < height and height * width <= faces_module.DETECTION_MAX_PIXELS and abs(width / height - 150) < 1
    assert "at most a 4K frame's pixel count" in caplog.text


def test_eye_distance_and_its_official_slip(comfy):
    faces_module = comfy.pack_module("diffbir_modules.faces")
    # (x, y): eyes 40 px apart, the nose 20 px left of the right eye
    landmarks = torch.tensor([[[100.0, 100.0], [140.0, 103.0], [120.0, 130.0], [105.0, 150.0], [135.0, 150.0]]])
    assert torch.allclose(faces_module.eye_distance(landmarks), torch.tensor([math.hypot(40, 3)]))
    # DiffBIR's fork reads (left_eye_y - right_eye_y, right_eye_x - nose_x)
    assert torch.allclose(faces_module.eye_distance(landmarks, official_quirks=True), torch.tensor([math.hypot(3, 20)]))
