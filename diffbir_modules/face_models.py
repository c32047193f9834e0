"""Weight files for the face nodes: where they are looked up, where they come from, and the loaded
models (wrapped in ComfyUI ModelPatchers so ComfyUI places and offloads them).

models/facedetection/ (ComfyUI's usual folder for these files; extra_model_paths.yaml may map it):
- detection_Resnet50_Final.pth, detection_mobilenet0.25_Final.pth: RetinaFace (facexlib releases),
  downloaded there on first use when missing and the machine is online;
- parsing_parsenet.pth: ParseNet for the optional parsing mask (facexlib releases), same;
- MTCNN: pnet.pt, rnet.pt, onet.pt in models/facedetection/mtcnn/ (copied from the facenet-pytorch
  package's data folder), or found in an installed ``facenet_pytorch`` package (looked up without
  importing it). facenet-pytorch is MIT-licensed; install it with ``pip install --no-deps
  facenet-pytorch==2.6.0`` (its metadata pins an old torch).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import comfy_compat, downloads, face_detection, face_parsing, weights_io

FOLDER = "facedetection"
EXTENSIONS = {".pth", ".pt", ".safetensors"}
# Catalogue keys (diffbir_modules/weights.py: file name, URLs, checksum) of the facexlib releases.
RETINAFACE_KEYS = {"retinaface_resnet50": "retinaface_resnet50", "retinaface_mobilenet0.25": "retinaface_mobilenet"}
PARSENET_KEY = "parsenet"
MTCNN_PARTS = ("pnet", "rnet", "onet")
DETECTORS = ("retinaface_resnet50", "retinaface_mobilenet0.25", "mtcnn")


def _folder_paths():
    import folder_paths

    return folder_paths


def _find(name: str) -> str | None:
    folder_paths = _folder_paths()
    try:
        return folder_paths.get_full_path(FOLDER, name)
    except KeyError:
        return None


def fetch(key: str, allow_download: bool = True) -> str:
    """Path of the catalogue file ``key`` in models/facedetection, downloaded (checksum-verified, by
    diffbir_modules/downloads.py) when missing and allowed; otherwise MissingWeightsError names the
    file, its URL and the folder to put it in."""
    return downloads.ensure([key], allow_download=allow_download)[key]


def read_weights(path: str) -> dict:
    expected = ("a face model of facexlib's release (detection_Resnet50_Final.pth, detection_mobilenet0.25_Final.pth, "
                "parsing_parsenet.pth) or MTCNN's pnet/rnet/onet.pt")
    return weights_io.tensors_only(weights_io.read_tensors(path, expected), os.path.basename(path), expected)


def mtcnn_files() -> tuple:
    """Paths of pnet/rnet/onet.pt: models/facedetection/mtcnn/ first, then an installed facenet_pytorch."""
    found = [_find(f"mtcnn/{part}.pt") or _find(f"mtcnn_{part}.pt") for part in MTCNN_PARTS]
    if all(found):
        return tuple(found)
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is not None and spec.submodule_search_locations:
        data = os.path.join(list(spec.submodule_search_locations)[0], "data")
        paths = tuple(os.path.join(data, f"{part}.pt") for part in MTCNN_PARTS)
        if all(os.path.isfile(p) for p in paths):
            return paths
    folder_paths = _folder_paths()
    raise FileNotFoundError(
        "MTCNN weights not found: put pnet.pt, rnet.pt and onet.pt (from the facenet-pytorch package's data folder, "
        f"MIT licence) in {os.path.join(folder_paths.models_dir, FOLDER, 'mtcnn')}, or install the package into "
        "ComfyUI's Python with: pip install --no-deps facenet-pytorch==2.6.0 (--no-deps: its metadata pins an old "
        "torch)")


# Activation memory to free before a run (on top of the weights, which ComfyUI counts itself), measured
# on a CPU in float32 with random full-size weights (peak resident above the start): RetinaFace-ResNet50
# 295-326 bytes per image pixel at 512-1024 px; ParseNet 563 MiB for one 512 px face.
DETECTOR_BYTES_PER_PIXEL = 384
PARSER_BYTES = 640 * 2**20


def _load(patcher, memory_required: float) -> None:
    """Onto ComfyUI's device through its model management, whole: these plain networks take their
    device from their first weight, so a partial load would leave them split between devices."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)


def _patcher(module: torch.nn.Module):
    import comfy.model_management

    return comfy_compat.model_patcher(module, comfy.model_management.get_torch_device(),
                                      comfy.model_management.unet_offload_device())


class FaceDetectorModel:
    """A loaded detector (the DIFFBIR_FACE_DETECTOR wire). ``detect(image_255, official_quirks,
    confidence)`` -> (boxes [N,5], landmarks [N,5,2]) for one RGB image [1,3,H,W] in 0..255."""

    def __init__(self, name: str, net: torch.nn.Module, source: str):
        self.name = name
        self.source = source
        self.patcher = _patcher(net)

    @torch.no_grad()
    def detect(self, image_255: torch.Tensor, official_quirks: bool = False, confidence: float = 0.8):
        _load(self.patcher, image_255.shape[-2] * image_255.shape[-1] * DETECTOR_BYTES_PER_PIXEL)
        net = self.patcher.model
        if self.name == "mtcnn":
            boxes, landmarks = face_detection.mtcnn_detect(net, image_255)
            keep = boxes[:, 4] >= confidence
            return boxes[keep], landmarks[keep]
        # RetinaFace was trained on BGR (cv2) images; DiffBIR feeds it RGB (official_quirks).
        image = image_255 if official_quirks else image_255.flip(1)
        return face_detection.retinaface_detect(net, image, conf_threshold=confidence)


def load_detector(name: str, allow_download: bool = True) -> FaceDetectorModel:
    if name == "mtcnn":
        paths = mtcnn_files()
        net = face_detection.build_mtcnn(*[read_weights(p) for p in paths], source=os.path.dirname(paths[0]))
        return FaceDetectorModel(name, net, os.path.dirname(paths[0]))
    if name not in RETINAFACE_KEYS:
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    path = fetch(RETINAFACE_KEYS[name], allow_download=allow_download)
    net = face_detection.build_retinaface(read_weights(path), source=path)
    expected = name.split("_", 1)[1]
    if net.backbone != expected:
        raise ValueError(f"{path} holds a RetinaFace {net.backbone}, not the {expected} its name promises")
    return FaceDetectorModel(name, net, path)


class FaceParserModel:
    """A loaded ParseNet (the DIFFBIR_FACE_PARSER wire)."""

    def __init__(self, net: face_parsing.ParseNet, source: str):
        self.source = source
        self.patcher = _patcher(net)

    def masks(self, faces: torch.Tensor, official_quirks: bool = False) -> torch.Tensor:
        """Official parse masks [N,1,512,512] (float64) for restored faces NCHW RGB in [0,1]."""
        import comfy.model_management

        _load(self.patcher, PARSER_BYTES)
        labels = []
        for i in range(faces.shape[0]):
            comfy.model_management.throw_exception_if_processing_interrupted()  # one face at a time: stops promptly
            labels.append(face_parsing.parse_labels(self.patcher.model, faces[i:i + 1], official_quirks))
        labels = torch.cat(labels)
        return face_parsing.parse_mask_from_labels(labels)


def load_parser(allow_download: bool = True) -> FaceParserModel:
    path = fetch(PARSENET_KEY, allow_download=allow_download)
    return FaceParserModel(face_parsing.build_parsenet(read_weights(path), source=path), path)
