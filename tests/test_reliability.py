"""Reliability battery: bad inputs a user can give, through one real headless ComfyUI server (started
once for this module, with its own models folder holding broken files beside random-weight good ones).

Every case either works (an image of the expected size is saved) or stops with a message that names
the node or the file and says what to do. After every case the server must still answer, and a
failed case must leave no output file. Pickle payloads write a marker file if they ever run; the
marker must never appear. docs/reliability.md has the table of categories and counts.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from devkit import model_factory
from scripts import comfy_headless

pytestmark = pytest.mark.server
PROBE_NODES = Path(__file__).resolve().parent / "probe_nodes"

CKPT, IRC, CLEANER, SD15 = "tiny.safetensors", "irc.pth", "scunet.pth", "sd15.safetensors"
RESNET50, MOBILENET = "detection_Resnet50_Final.pth", "detection_mobilenet0.25_Final.pth"
PARSENET = "parsing_parsenet.pth"


# -- broken files ------------------------------------------------------------------------------------
class Payload:
    """Unpickling this opens (creates) the marker file: proof that a file ran code."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def broken_bytes(kind: str, good: bytes) -> bytes:
    if kind == "empty":
        return b""
    if kind == "html":
        return b"<!DOCTYPE html>\n<html><head><title>Sign in - Hugging Face</title></head><body>...</body></html>\n"
    if kind == "lfs":
        return b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 1713864893\n"
    if kind == "text":
        return b"404: Not Found\n"
    if kind == "random":
        return b"\x13" + np.random.default_rng(3).bytes(4095)  # 0x13: not a pickle, zip or safetensors start
    if kind == "truncated":
        return good[: len(good) // 2]
    raise ValueError(kind)


# What each kind's message says it is (the file's name and "download" are checked for every kind).
BROKEN = {"empty": "is empty", "html": "HTML web page", "lfs": "Git LFS pointer", "text": "a text file",
          "random": "not a weights file", "truncated": "truncated or corrupt"}


def pickle_payload(fmt: str, marker: Path) -> bytes:
    Payload.marker = str(marker)
    content = {"state_dict": {"weight": torch.zeros(2)}, "callbacks": Payload()}
    buffer = io.BytesIO()
    if fmt == "zip":
        torch.save(content, buffer)
    else:  # the legacy (pre-1.6) format: a bare pickle stream
        torch.save(content, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


# -- graphs (API format) -----------------------------------------------------------------------------
def empty_image(width=64, height=64, batch=1, color=0x808080):
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                    "color": color}}


def poisoned(node_id: str, value: str, latent=False):
    kind = "DiffBIRTestPoisonLatent" if latent else "DiffBIRTestPoisonImage"
    return {"class_type": kind, "inputs": {"samples" if latent else "image": [node_id, 0], "value": value}}


def save(node_id: str, output=0):
    return {"class_type": "SaveImage", "inputs": {"images": [node_id, output], "filename_prefix": "battery"}}


def stage1_graph(image=None, model=CLEANER, **options):
    settings = {"preset": "auto", "upscale": 1.0, "min_short_side": 0, "tiled": False, "tile_size": 512,
                "tile_stride": 256, "tile_weighting": "gaussian", "resample": "pil_uint8", **options}
    return {"img": image or empty_image(32, 32), "ld": {"class_type": "DiffBIRStage1Loader",
                                                       "inputs": {"model_name": model}},
            "s1": {"class_type": "DiffBIRDegradationRemoval",
                   "inputs": {"image": ["img", 0], "upscale_model": ["ld", 0], **settings}},
            "save": save("s1")}


def stage2_graph(image=None, irc=IRC, start=0.0, end=1.0, poison=None, version="auto", model_ckpt=None):
    graph = {
        "img": image or empty_image(64, 64),
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "irc": {"class_type": "DiffBIRIRControlNetLoader", "inputs": {"ircontrolnet_name": irc, "version": version}},
        "apply": {"class_type": "DiffBIRApplyIRControlNet", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "ircontrolnet": ["irc", 0], "vae": ["ckpt", 2],
            "image": ["img", 0], "strength": 1.0, "start_percent": start, "end_percent": end,
            "start_point": "noise", "padding": "64", "vae_tile_size": 0}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["apply", 0], "negative": ["apply", 1], "latent_image": ["apply", 2],
            "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "save": save("dec")}
    if poison:
        graph["bad"] = poisoned("img", poison)
        graph["apply"]["inputs"]["image"] = ["bad", 0]
    if model_ckpt:  # sample another checkpoint's model (the text encoder and VAE stay SD 2.1's)
        graph["model"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model_ckpt}}
        graph["ks"]["inputs"]["model"] = ["model", 0]
    return graph


def text_graph(text: str, weighted: bool = False):
    """The prompt through DiffBIR Text Encode (official tokenisation, or ComfyUI's weighted syntax) and
    one sampling step; the negative prompt is constant so only the case's prompt is encoded."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "pos": {"class_type": "DiffBIRTextEncode", "inputs": {"clip": ["ckpt", 1], "text": text, "truncate": True,
                                                              "prompt_weights": weighted}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0],
            "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "save": save("dec")}


def vae_graph(image=None, poison=None, latent_poison=None):
    graph = {"img": image or empty_image(64, 64),
             "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
             "enc": {"class_type": "DiffBIRVAEEncodeTiled", "inputs": {"vae": ["ckpt", 2], "pixels": ["img", 0],
                                                                       "tile_size": 0}},
             "dec": {"class_type": "DiffBIRVAEDecodeTiled", "inputs": {"vae": ["ckpt", 2], "samples": ["enc", 0],
                                                                       "tile_size": 0}},
             "save": save("dec")}
    if poison:
        graph["bad"] = poisoned("img", poison)
        graph["enc"]["inputs"]["pixels"] = ["bad", 0]
    if latent_poison:
        graph["bad"] = poisoned("enc", latent_poison, latent=True)
        graph["dec"]["inputs"]["samples"] = ["bad", 0]
    return graph


def faces_graph(image=None, detector="retinaface_mobilenet0.25", parser=False, indices="0", poison=None,
                background_poison=None):
    graph = {"img": image or empty_image(64, 64),
             "det": {"class_type": "DiffBIRFaceDetectorLoader",
                     "inputs": {"detector": detector, "download_if_missing": False}},
             "align": {"class_type": "DiffBIRFaceDetectAlign", "inputs": {
                 "image": ["img", 0], "detector": ["det", 0], "face_size": 128, "selection": "indices",
                 "indices": indices, "min_size": 0, "order": "left to right", "confidence": 0.8,
                 "detection_size": 0, "eye_distance_threshold": 5.0, "official_quirks": False}},
             "save": save("align", 2)}
    if poison:
        graph["bad"] = poisoned("img", poison)
        graph["align"]["inputs"]["image"] = ["bad", 0]
    if parser or background_poison:
        graph["paste"] = {"class_type": "DiffBIRFacePasteBack", "inputs": {
            "background": ["img", 0], "restored_faces": ["align", 0], "faces": ["align", 1],
            "color_match": "none", "feather": 1.0, "official_quirks": False}}
        if parser:
            graph["parser"] = {"class_type": "DiffBIRFaceParserLoader", "inputs": {"download_if_missing": False}}
            graph["paste"]["inputs"]["face_parser"] = ["parser", 0]
        if background_poison:
            graph["bad"] = poisoned("img", background_poison)
            graph["paste"]["inputs"]["background"] = ["bad", 0]
        graph["save"] = save("paste")
    return graph


def colour_fix_graph(image_poison=None, reference_poison=None, image_batch=1, reference_batch=1):
    graph = {"a": empty_image(32, 32, image_batch), "b": empty_image(32, 32, reference_batch, 0x406080),
             "fix": {"class_type": "DiffBIRColorFix", "inputs": {"image": ["a", 0], "reference": ["b", 0],
                                                                  "method": "wavelet"}},
             "save": save("fix")}
    if image_poison:
        graph["pa"] = poisoned("a", image_poison)
        graph["fix"]["inputs"]["image"] = ["pa", 0]
    if reference_poison:
        graph["pb"] = poisoned("b", reference_poison)
        graph["fix"]["inputs"]["reference"] = ["pb", 0]
    return graph


def output_graph(node: str, poison: str, method: str = "bicubic_antialias"):
    """A poisoned image into Crop to Stage-1 Size or Resize to Output Size (the last nodes before Save)."""
    graph = {"a": empty_image(32, 32), "pa": poisoned("a", poison), "save": save("out")}
    if node == "crop":
        graph["out"] = {"class_type": "DiffBIRCropToStage1", "inputs": {"image": ["pa", 0], "stage1": ["a", 0]}}
    else:
        graph["out"] = {"class_type": "DiffBIRResizeToOutputSize",
                        "inputs": {"image": ["pa", 0], "width": 48, "height": 48, "method": method}}
    return graph


def guidance_graph(poison=None, start=0.0, end=1.0):
    graph = {"img": empty_image(64, 64),
             "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
             "rg": {"class_type": "DiffBIRRestorationGuidance", "inputs": {
                 "model": ["ckpt", 0], "vae": ["ckpt", 2], "image": ["img", 0], "scale": 0.1, "loss": "w_mse",
                 "space": "latent", "start_percent": start, "end_percent": end, "repeat": 1,
                 "latent_target": "mode", "reference_steps": 50, "rgb_memory": "checkpoint"}},
             "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
             "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "ks": {"class_type": "KSampler", "inputs": {
                 "model": ["rg", 0], "positive": ["pos", 0], "negative": ["pos", 0], "latent_image": ["lat", 0],
                 "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
             "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
             "save": save("dec")}
    if poison:
        graph["bad"] = poisoned("img", poison)
        graph["rg"]["inputs"]["image"] = ["bad", 0]
    return graph


def load_image(name: str):
    return {"class_type": "LoadImage", "inputs": {"image": name}}


# -- cases -------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    category: str
    graph: Callable[[], dict]
    size: tuple | None = None  # (width, height) of the saved image when the case must work
    errors: tuple = ()  # regexes the error text must match when it must fail
    setup: Callable[[Path], None] | None = None  # (models folder) -> None, before the run
    files: dict = field(default_factory=dict)  # extra files: "folder/name" -> bytes, made at server start
    batch: int = 1  # images saved when it works


CASES: list[Case] = []
DOWNLOAD = r"(?i)download"

# broken files in every loader
for kind, said in BROKEN.items():
    for ext in (".pth", ".safetensors"):
        name = f"broken_{kind}{ext}"
        CASES.append(Case(f"irc-{kind}{ext}", "broken file", lambda n=name: stage2_graph(irc=n),
                          errors=(re.escape(name), said, DOWNLOAD), files={f"diffbir/{name}": (kind, "irc" + ext)}))
    for ext in (".pth", ".ckpt"):
        name = f"broken_{kind}{ext}"
        CASES.append(Case(f"stage1-{kind}{ext}", "broken file", lambda n=name: stage1_graph(model=n),
                          errors=(re.escape(name), said, DOWNLOAD),
                          files={f"upscale_models/{name}": (kind, "cleaner")}))
    CASES.append(Case(f"detector-{kind}", "broken file", lambda: faces_graph(detector="retinaface_resnet50"),
                      errors=(RESNET50, said, DOWNLOAD), setup=lambda m, k=kind: swap(m, RESNET50, k, "resnet50")))
    CASES.append(Case(f"parser-{kind}", "broken file", lambda: faces_graph(parser=True),
                      errors=(PARSENET, said, DOWNLOAD), setup=lambda m, k=kind: swap(m, PARSENET, k, "parsenet")))

# a real weights file of another model in each loader
CASES += [
    Case("irc-given-stage1", "wrong architecture", lambda: stage2_graph(irc="swinir_as_irc.pth"),
         errors=("swinir_as_irc.pth", r"(?i)stage-1|not an? IRControlNet|Degradation Removal"),
         files={"diffbir/swinir_as_irc.pth": ("copy", "cleaner")}),
    Case("irc-given-sd", "wrong architecture", lambda: stage2_graph(irc="sd_as_irc.safetensors"),
         errors=("sd_as_irc.safetensors", r"(?i)Stable Diffusion|Load Checkpoint"),
         files={"diffbir/sd_as_irc.safetensors": ("copy", "ckpt")}),
    Case("stage1-given-irc", "wrong architecture", lambda: stage1_graph(model="irc_as_stage1.pth"),
         errors=("irc_as_stage1.pth", "IRControlNet loader"),
         files={"upscale_models/irc_as_stage1.pth": ("copy", "irc.pth")}),
    Case("stage1-given-sd", "wrong architecture", lambda: stage1_graph(model="sd_as_stage1.safetensors"),
         errors=("sd_as_stage1.safetensors", "Load Checkpoint"),
         files={"upscale_models/sd_as_stage1.safetensors": ("copy", "ckpt")}),
    Case("stage1-given-lora", "wrong architecture", lambda: stage1_graph(model="lora_as_stage1.safetensors"),
         errors=("lora_as_stage1.safetensors", r"Expected a stage-1 cleaner"),
         files={"upscale_models/lora_as_stage1.safetensors": ("copy", "lora")}),
    Case("detector-given-parsenet", "wrong architecture", lambda: faces_graph(detector="retinaface_resnet50"),
         errors=(RESNET50, r"(?i)retinaface|detector"), setup=lambda m: swap(m, RESNET50, "copy", "parsenet")),
    Case("detector-resnet50-holds-mobilenet", "wrong architecture",
         lambda: faces_graph(detector="retinaface_resnet50"),
         errors=(RESNET50, "holds a RetinaFace mobilenet0.25, not the resnet50"),
         setup=lambda m: swap(m, RESNET50, "copy", "mobilenet")),
    Case("parser-given-retinaface", "wrong architecture", lambda: faces_graph(parser=True),
         errors=(PARSENET, r"(?i)parsenet|parser"), setup=lambda m: swap(m, PARSENET, "copy", "resnet50")),
]

# a file of the wrong kind or version for what the loader or the run needs: what it is, where it goes
EXPECT_IRC = r"Expected an IRControlNet"
EXPECT_STAGE1 = r"Expected a stage-1 cleaner"
CASES += [
    Case("irc-v1-file-as-v2.1", "wrong version", lambda: stage2_graph(irc="irc_v1.ckpt", version="v2.1"),
         errors=("irc_v1.ckpt", r"this is a v1 IRControlNet", "version v2.1 was chosen", "Set version to auto or v1"),
         files={"diffbir/irc_v1.ckpt": ("copy", "irc.v1")}),
    Case("sd15-model-with-irc", "wrong version", lambda: stage2_graph(model_ckpt=SD15),
         errors=("KSampler", r"an SD 1\.x-shaped model", "context_dim 768 vs 1024", "DiffBIR needs SD 2.1")),
    Case("irc-given-controlnet", "wrong architecture", lambda: stage2_graph(irc="stock_cn.safetensors"),
         errors=("stock_cn.safetensors", "stock ControlNet", "Load ControlNet Model"),
         files={"diffbir/stock_cn.safetensors": ("copy", "controlnet")}),
    Case("irc-given-face-detector", "wrong architecture", lambda: stage2_graph(irc="detector_as_irc.pth"),
         errors=("detector_as_irc.pth", "a RetinaFace face detector", "models/facedetection", EXPECT_IRC),
         files={"diffbir/detector_as_irc.pth": ("copy", "resnet50")}),
    Case("stage1-given-face-detector", "wrong architecture", lambda: stage1_graph(model="detector_as_stage1.pth"),
         errors=("detector_as_stage1.pth", "a RetinaFace face detector", "models/facedetection", EXPECT_STAGE1),
         files={"upscale_models/detector_as_stage1.pth": ("copy", "resnet50")}),
    Case("stage1-given-parser", "wrong architecture", lambda: stage1_graph(model="parser_as_stage1.pth"),
         errors=("parser_as_stage1.pth", "a ParseNet face parser", "Face Parser Loader", EXPECT_STAGE1),
         files={"upscale_models/parser_as_stage1.pth": ("copy", "parsenet")}),
    Case("stage1-given-controlnet", "wrong architecture", lambda: stage1_graph(model="cn_as_stage1.safetensors"),
         errors=("cn_as_stage1.safetensors", "stock ControlNet", "Load ControlNet Model", EXPECT_STAGE1),
         files={"upscale_models/cn_as_stage1.safetensors": ("copy", "controlnet")}),
    Case("detector-given-stage1", "wrong architecture", lambda: faces_graph(detector="retinaface_resnet50"),
         errors=(RESNET50, "a stage-1 cleaner", "DiffBIR Load Stage-1 Model", "Expected a RetinaFace"),
         setup=lambda m: swap(m, RESNET50, "copy", "cleaner")),
    Case("parser-given-irc", "wrong architecture", lambda: faces_graph(parser=True),
         errors=(PARSENET, "an IRControlNet", "IRControlNet loader", "Expected a ParseNet"),
         setup=lambda m: swap(m, PARSENET, "copy", "irc.pth")),
]

# pickles that would run code
PICKLE_SAID = (r"refused", r"(?i)pickle", r"(?i)weights-only|safetensors")
CASES += [
    Case(f"irc-pickle-{fmt}", "pickle payload", lambda n=f"payload_{fmt}.{ext}": stage2_graph(irc=n),
         errors=(f"payload_{fmt}.{ext}", *PICKLE_SAID), files={f"diffbir/payload_{fmt}.{ext}": ("pickle", fmt)})
    for fmt, ext in (("zip", "pth"), ("legacy", "ckpt"))
] + [
    Case(f"stage1-pickle-{fmt}", "pickle payload", lambda n=f"payload_{fmt}.{ext}": stage1_graph(model=n),
         errors=(f"payload_{fmt}.{ext}", *PICKLE_SAID), files={f"upscale_models/payload_{fmt}.{ext}": ("pickle", fmt)})
    for fmt, ext in (("zip", "pth"), ("legacy", "ckpt"))
] + [
    Case(f"detector-pickle-{fmt}", "pickle payload", lambda: faces_graph(detector="retinaface_resnet50"),
         errors=(RESNET50, *PICKLE_SAID), setup=lambda m, f=fmt: swap(m, RESNET50, "pickle", f))
    for fmt in ("zip", "legacy")
] + [
    Case("parser-pickle-zip", "pickle payload", lambda: faces_graph(parser=True),
         errors=(PARSENET, *PICKLE_SAID), setup=lambda m: swap(m, PARSENET, "pickle", "zip")),
]

# image sizes
VAE_SMALL = (r"DiffBIR VAE Encode \(exact tiles\): the input 'pixels' is \d+x\d+ pixels", "Upscale or pad")
CASES += [
    Case("stage1-1x1", "image size", lambda: stage1_graph(empty_image(1, 1)), size=(1, 1)),
    Case("stage1-1x64", "image size", lambda: stage1_graph(empty_image(1, 64)), size=(1, 64)),
    Case("stage1-64x1", "image size", lambda: stage1_graph(empty_image(64, 1)), size=(64, 1)),
    Case("stage1-3x5", "image size", lambda: stage1_graph(empty_image(3, 5)), size=(3, 5)),
    Case("stage1-batch-2", "image size", lambda: stage1_graph(empty_image(16, 24, 2)), size=(16, 24),
         batch=2),
    Case("vae-1x1", "image size", lambda: vae_graph(empty_image(1, 1)), errors=VAE_SMALL),
    Case("vae-7x64", "image size", lambda: vae_graph(empty_image(7, 64)), errors=VAE_SMALL),
    Case("vae-8x8", "image size", lambda: vae_graph(empty_image(8, 8)), size=(8, 8)),
    Case("vae-8x200-thin", "image size", lambda: vae_graph(empty_image(8, 200)), size=(8, 200)),
    Case("apply-irc-1x1", "image size", lambda: stage2_graph(empty_image(1, 1)), size=(64, 64)),
    # a 16384 px decode: its full-resolution map alone is 128 GiB (+3 GiB of image), refused before the VAE
    # runs (a machine with more than that free, swap included, would decode it instead)
    Case("vae-decode-16384-too-large", "image size",
         lambda: with_inputs(vae_decode_graph(16384), "dec", tile_size=0),
         errors=(r"DiffBIR exact tiled VAE decode: a 16384x16384 px image needs at least 131\.0 GiB of CPU memory",
                 r"VAE Decode \(Tiled\)")),
]

# what LoadImage gives us from unusual PNGs (alpha, grayscale, 16-bit, palette, 1-bit)
PNG_MODES = {"rgba": "RGBA", "gray-alpha": "LA", "gray": "L", "gray-16bit": "I;16", "palette": "P", "1bit": "1"}
CASES += [Case(f"png-{label}", "image format", lambda f=f"{label}.png": stage1_graph(load_image(f)), size=(24, 16))
          for label in PNG_MODES]

# NaN / inf where images and latents enter our nodes
NONFINITE = r"holds \d+ NaN and \d+ infinite values"
# stage 1 checks each image of a batch itself (diffbir_modules/stage1/running.py) and says which
STAGE1_NONFINITE = ("DiffBIRDegradationRemoval", r"image\(s\) \[0\] of the batch contain NaN or infinite",
                    "Fix the node that produced them")
CASES += [
    Case(f"apply-irc-{v}", "NaN / inf", lambda v=v: stage2_graph(poison=v),
         errors=(r"DiffBIR Apply IRControlNet: the input 'image'", NONFINITE, "Check the node")) for v in ("nan", "inf")
] + [
    Case("colour-fix-image-nan", "NaN / inf", lambda: colour_fix_graph(image_poison="nan"),
         errors=("DiffBIR Colour Fix: the input 'image'", NONFINITE, "Check the node")),
    Case("colour-fix-reference-inf", "NaN / inf", lambda: colour_fix_graph(reference_poison="inf"),
         errors=("DiffBIR Colour Fix: the input 'reference'", NONFINITE, "Check the node")),
    Case("colour-fix-reference-neg-inf", "NaN / inf", lambda: colour_fix_graph(reference_poison="-inf"),
         errors=("DiffBIR Colour Fix: the input 'reference'", NONFINITE, "Check the node")),
    Case("face-detect-nan", "NaN / inf", lambda: faces_graph(poison="nan"),
         errors=("DiffBIR Face Detect & Align: the input 'image'", NONFINITE, "Check the node")),
    Case("paste-back-background-nan", "NaN / inf", lambda: faces_graph(background_poison="nan"),
         errors=("DiffBIR Face Paste Back: the input 'background'", NONFINITE, "Check the node")),
    Case("stage1-nan", "NaN / inf", lambda: stage1_graph(poisoned("src", "nan")) | {"src": empty_image(32, 32)},
         errors=STAGE1_NONFINITE),
    Case("stage1-inf", "NaN / inf", lambda: stage1_graph(poisoned("src", "inf")) | {"src": empty_image(32, 32)},
         errors=STAGE1_NONFINITE),
    Case("vae-encode-nan", "NaN / inf", lambda: vae_graph(poison="nan"),
         errors=(r"DiffBIR VAE Encode \(exact tiles\): the input 'pixels'", NONFINITE, "Check the node")),
    Case("vae-decode-nan", "NaN / inf", lambda: vae_graph(latent_poison="nan"),
         errors=(r"DiffBIR VAE Decode \(exact tiles\): the input 'samples'", NONFINITE, "Check the node")),
    Case("vae-decode-inf", "NaN / inf", lambda: vae_graph(latent_poison="inf"),
         errors=(r"DiffBIR VAE Decode \(exact tiles\): the input 'samples'", NONFINITE, "Check the node")),
    Case("crop-to-stage1-nan", "NaN / inf", lambda: output_graph("crop", "nan"),
         errors=("DiffBIR Crop to Stage-1 Size: the input 'image'", NONFINITE, "Check the node")),
] + [  # the 8-bit methods would have saved NaN as black pixels
    Case(f"resize-to-output-{method}-{v}", "NaN / inf", lambda method=method, v=v: output_graph("resize", v, method),
         errors=("DiffBIR Resize to Output Size: the input 'image'", NONFINITE, "Check the node"))
    for method, v in (("bicubic_antialias", "inf"), ("lanczos_uint8", "nan"), ("bicubic_uint8", "nan"))
] + [
    Case("guidance-nan", "NaN / inf", lambda: guidance_graph(poison="nan"),
         errors=("DiffBIRRestorationGuidance", r"has 1 NaN or infinite values", "fix the node that produced it")),
]

# settings that contradict each other or are out of range: refused before the run
ORDER = (r"start_percent \(.+\) is after end_percent \(.+\)", r"Set start_percent <= end_percent")
CASES += [
    Case("apply-irc-start-after-end", "parameters", lambda: stage2_graph(start=0.8, end=0.2),
         errors=("DiffBIR Apply IRControlNet", *ORDER)),
    Case("apply-irc-start-1-end-0", "parameters", lambda: stage2_graph(start=1.0, end=0.0),
         errors=("DiffBIR Apply IRControlNet", *ORDER)),
    Case("apply-irc-linked-start-after-end", "parameters", lambda: stage2_graph(start=["start", 0], end=0.1) | {
        "start": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.9}}},  # seen only when it runs
         errors=("DiffBIR Apply IRControlNet", *ORDER)),
    Case("apply-irc-start-negative", "parameters", lambda: stage2_graph(start=-0.1),
         errors=("DiffBIRApplyIRControlNet", r"start_percent must be between 0.0 and 1.0")),
    Case("apply-irc-end-above-1", "parameters", lambda: stage2_graph(end=1.5),
         errors=("DiffBIRApplyIRControlNet", r"end_percent must be between 0.0 and 1.0")),
    Case("guidance-start-after-end", "parameters", lambda: guidance_graph(start=0.9, end=0.1),
         errors=("DiffBIR Restoration Guidance", *ORDER)),
    Case("face-indices-backwards", "parameters", lambda: faces_graph(indices="5-2"),
         errors=("DiffBIR Face Detect & Align", "runs backwards", "write it as '2-5'")),
    Case("face-indices-unreadable", "parameters", lambda: faces_graph(indices="first"),
         errors=("DiffBIR Face Detect & Align", "cannot read 'first'", "ranges like")),
    Case("face-indices-0-300000", "parameters", lambda: faces_graph(indices="0-300000"), size=(64, 64)),
    Case("colour-fix-batch-2-vs-3", "parameters", lambda: colour_fix_graph(image_batch=2, reference_batch=3),
         errors=("DiffBIRColorFix", "batch of 2", "give both the same batch size")),
    Case("colour-fix-batch-3-vs-1", "parameters", lambda: colour_fix_graph(image_batch=3), size=(32, 32),
         batch=3),
    Case("stage1-tile-16", "parameters", lambda: stage1_graph(empty_image(24, 24), tiled=True, tile_size=16,
                                                                  tile_stride=8), size=(24, 24)),
]

# prompts (DiffBIR Text Encode, both the official and ComfyUI's weighted path)
# (the CLIP-H text encoder is slow on a CPU: a few prompts, each mixing several kinds of text)
PROMPTS = {"lone-surrogate": ("a cat \ud800 on a mat", False), "lone-surrogate-weighted": ("(a cat:1.2) \udfff", True),
           "scripts-and-emoji": ("一只猫 قطة 🐈‍⬛ on a mat", False),
           "invisible-and-nul": ("a\u200bcat\u200d\ufeff cafe\u0301 z\u0335a\x00", False),
           "very-long": ("a cat on a mat, " * 400, False),
           "weight-syntax": ("((a cat:1.5)) [on] {a|mat} \\( embedding:none", True)}
CASES += [Case(f"prompt-{label}", "prompts", lambda t=text, w=weighted: text_graph(t, w), size=(64, 64))
          for label, (text, weighted) in PROMPTS.items()]

# models that are not there
CASES += [
    Case("irc-missing", "missing model", lambda: stage2_graph(irc="not_downloaded.pth"),
         errors=("DiffBIRIRControlNetLoader", "not_downloaded.pth")),
    Case("stage1-missing", "missing model", lambda: stage1_graph(model="not_downloaded.ckpt"),
         errors=("DiffBIRStage1Loader", "not_downloaded.ckpt")),
    Case("detector-missing", "missing model", lambda: faces_graph(detector="retinaface_resnet50"),
         errors=(RESNET50, "models/facedetection", r"https://github\.com/xinntao/facexlib")),
    Case("parser-missing", "missing model", lambda: faces_graph(parser=True),
         errors=(PARSENET, "models/facedetection", r"https://github\.com/xinntao/facexlib")),
    Case("preset-missing", "missing model", lambda: {
        "preset": {"class_type": "DiffBIRPresetLoader", "inputs": {"version": "v2", "task": "sr",
                                                                   "download_missing": False}},
        "img": empty_image(32, 32),
        "s1": {"class_type": "DiffBIRDegradationRemoval", "inputs": {
            "image": ["img", 0], "upscale_model": ["preset", 4], "preset": "auto", "upscale": 1.0,
            "min_short_side": 0, "tiled": False, "tile_size": 512, "tile_stride": 256,
            "tile_weighting": "gaussian", "resample": "pil_uint8"}},
        "save": save("s1")}, errors=("v2.pth", r"https://huggingface\.co/lxq007/DiffBIR", DOWNLOAD)),
]


# -- interrupts: one case per long loop ---------------------------------------------------------------
def empty_prompt_graph() -> dict:
    """One empty prompt for both conditionings (the same node as guidance_graph's, so its output is
    computed once and stays in ComfyUI's cache from case to case)."""
    graph = text_graph("")
    graph["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}}
    del graph["neg"]
    graph["ks"]["inputs"]["negative"] = ["pos", 0]
    return graph


def sampler_graph(sampler: str, steps: int) -> dict:
    """SamplerCustom with one of DiffBIR's samplers and its sigmas (a 64x64 latent)."""
    graph = empty_prompt_graph()
    del graph["ks"]
    if sampler == "spaced":
        graph["sigmas"] = {"class_type": "DiffBIRSpacedSigmas", "inputs": {"model": ["ckpt", 0], "steps": steps}}
        graph["sampler"] = {"class_type": "DiffBIRSpacedSampler", "inputs": {"noise_stream": "official"}}
    else:
        graph["sigmas"] = {"class_type": "DiffBIREDMSigmas", "inputs": {"model": ["ckpt", 0], "steps": steps,
                                                                        "first_sigma": "auto"}}
        graph["sampler"] = {"class_type": "DiffBIREDMSampler", "inputs": {
            "solver": "dpm++_3m_sde", "noise_stream": "official", "timestep_lookup": "nearest_1000", "eta": 1.0,
            "s_noise": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 300.0, "order": 1}}
    graph["ks"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["ckpt", 0], "add_noise": True, "noise_seed": 1, "cfg": 1.0, "positive": ["pos", 0],
        "negative": ["pos", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "latent_image": ["lat", 0]}}
    return graph


def tiled_sampling_graph(size: int, steps: int) -> dict:
    graph = empty_prompt_graph()
    graph["lat"]["inputs"].update(width=size, height=size)
    graph["tiles"] = {"class_type": "DiffBIRTiledSampling", "inputs": {
        "model": ["ckpt", 0], "tile_size": 64, "tile_stride": 8, "tile_batch": 1, "weighting": "gaussian"}}
    graph["ks"]["inputs"].update(model=["tiles", 0], steps=steps)
    return graph


def vae_decode_graph(size: int) -> dict:
    return {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
            "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "dec": {"class_type": "DiffBIRVAEDecodeTiled", "inputs": {"vae": ["ckpt", 2], "samples": ["lat", 0],
                                                                      "tile_size": 64}},
            "save": save("dec")}


def with_inputs(graph: dict, node: str, **inputs) -> dict:
    graph[node]["inputs"].update(inputs)
    return graph


def many_faces_graph(parser=False) -> dict:
    """Hundreds of faces to parse and paste back: the random-weight detector with confidence 0 finds
    a face at nearly every anchor of a noisy 128x128 image (RGBA PNG scaled up)."""
    graph = faces_graph(load_image("rgba.png"), parser=parser, background_poison=None)
    graph["up"] = {"class_type": "ImageScale", "inputs": {"image": ["img", 0], "upscale_method": "nearest-exact",
                                                          "width": 128, "height": 128, "crop": "disabled"}}
    with_inputs(graph, "align", image=["up", 0], confidence=0.0, selection="all")
    if not parser:
        graph["paste"] = {"class_type": "DiffBIRFacePasteBack", "inputs": {
            "background": ["up", 0], "restored_faces": ["align", 0], "faces": ["align", 1], "color_match": "none",
            "feather": 1.0, "official_quirks": False}}
        graph["save"] = save("paste")
    return with_inputs(graph, "paste", background=["up", 0])


def guidance_interrupt_graph() -> dict:
    """Guidance in RGB space, tiled, on a 512x512 image for 200 steps: most of each step is the
    guidance's own decode-with-gradient tile loop."""
    graph = guidance_graph()
    with_inputs(graph, "img", width=512, height=512)
    with_inputs(graph, "lat", width=512, height=512)
    with_inputs(graph, "ks", steps=200)
    return with_inputs(graph, "rg", space="rgb", rgb_memory="tiled")


@dataclass
class InterruptCase:
    id: str
    graph: Callable[[], dict]
    node: str  # the node whose loop is running when /interrupt arrives
    setup: Callable[[Path], None] | None = None
    # Seconds from /interrupt to the prompt reported stopped: one iteration of the loop plus the 0.5 s
    # /history poll. Measured 0.5-6.0 s for every loop but face parsing on 2 heavily loaded CPU cores (stage-1
    # tiles the slowest); uninterrupted, each of these nodes runs for minutes, so 10 s tells a prompt stop
    # from a run to the end.
    latency: float = 10.0


# Each graph keeps its node busy far longer than the interrupt takes (the loop has hundreds of
# iterations of a few to a few hundred milliseconds); the interrupt is sent INTERRUPT_DELAY after the
# node starts, so it lands inside the loop.
INTERRUPT_CASES = [
    InterruptCase("stage1-tiles", lambda: stage1_graph(empty_image(1024, 1024), tiled=True, tile_size=64,
                                                       tile_stride=32), "s1"),
    InterruptCase("stage1-batch", lambda: stage1_graph(empty_image(64, 64, 400)), "s1"),
    InterruptCase("vae-encode-exact-tiles", lambda: with_inputs(vae_graph(empty_image(1024, 1024)), "enc",
                                                                tile_size=64), "enc"),
    InterruptCase("vae-decode-exact-tiles", lambda: vae_decode_graph(1024), "dec"),
    InterruptCase("tiled-sampling", lambda: tiled_sampling_graph(1024, 20), "ks"),
    InterruptCase("guidance", guidance_interrupt_graph, "ks"),
    InterruptCase("spaced-sampler", lambda: sampler_graph("spaced", 1000), "ks"),
    InterruptCase("edm-sampler", lambda: sampler_graph("edm", 1000), "ks"),
    InterruptCase("ksampler-with-ircontrolnet", lambda: with_inputs(with_inputs(
        stage2_graph(empty_image(256, 256)), "ks", steps=1000), "pos", text=""), "ks"),
    InterruptCase("face-detect", lambda: faces_graph(empty_image(640, 640, 48)), "align"),
    # one face's parsing is one ParseNet pass at 512x512 (the official size), up to 26 s measured on 2 busy
    # cores, and cannot stop midway; ~500 faces uninterrupted would take hours
    InterruptCase("face-parse", lambda: many_faces_graph(parser=True), "paste",
                  setup=lambda m: swap(m, PARSENET, "copy", "parsenet"), latency=60.0),
    InterruptCase("face-paste", many_faces_graph, "paste"),
]


def category_counts() -> dict:
    counts: dict = {}
    for case in CASES:
        counts[case.category] = counts.get(case.category, 0) + 1
    counts["interrupt"] = len(INTERRUPT_CASES)
    return counts


# -- the server ----------------------------------------------------------------------------------------
def good_files() -> dict:
    return {"ckpt": model_factory.sd2_checkpoint("tiny"), "irc.pth": model_factory.ircontrolnet_file("tiny", fmt="pth"),
            "irc.safetensors": model_factory.ircontrolnet_file("tiny", fmt="safetensors"),
            "irc.v1": model_factory.ircontrolnet_file("tiny", fmt="v1_full"),
            "controlnet": model_factory.stock_controlnet_file("tiny"), "sd15": model_factory.sd1_checkpoint("tiny"),
            "cleaner": model_factory.stage1_file("scunet_color_real_psnr.pth", "small"),
            "lora": model_factory.sd2_lora_file("tiny"),
            "resnet50": model_factory.face_model_file("retinaface_resnet50"),
            "mobilenet": model_factory.face_model_file("retinaface_mobilenet0.25"),
            "parsenet": model_factory.face_model_file("parsenet")}


MARKER_DIR: Path | None = None


def place(path: Path, kind: str, source: str) -> None:
    """Puts the case's file at ``path``: a link to a good file of another kind ("copy"; a link, not a copy,
    since some are close to 1 GB and the suite's temporary files must stay small), a pickle, or broken bytes."""
    path.unlink(missing_ok=True)  # never write through an earlier case's link into the model cache
    if kind == "copy":
        path.symlink_to(good_files()[source])
    elif kind == "pickle":
        path.write_bytes(pickle_payload(source, MARKER_DIR / f"ran-{source}"))
    else:
        path.write_bytes(broken_bytes(kind, good_files()[source].read_bytes()))


def swap(models: Path, name: str, kind: str, source: str) -> None:
    place(models / "facedetection" / name, kind, source)


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    global MARKER_DIR
    root = tmp_path_factory.mktemp("reliability")
    MARKER_DIR = root / "markers"
    MARKER_DIR.mkdir()
    models = root / "models"
    good = good_files()
    for folder, name, source in (("checkpoints", CKPT, "ckpt"), ("checkpoints", SD15, "sd15"),
                                 ("diffbir", IRC, "irc.pth"), ("upscale_models", CLEANER, "cleaner"),
                                 ("facedetection", MOBILENET, "mobilenet")):
        (models / folder).mkdir(parents=True, exist_ok=True)
        (models / folder / name).symlink_to(good[source])
    for case in CASES:
        for target, (kind, source) in case.files.items():
            place(models / target, kind, source)
    base = comfy_headless.make_base_directory(root / "base", models)
    (base / "custom_nodes" / "diffbir_test_probe").symlink_to(PROBE_NODES, target_is_directory=True)
    rng = np.random.default_rng(0)
    for label, mode in PNG_MODES.items():
        pixels = (rng.random((16, 24, 4)) * 255).astype(np.uint8)
        if mode == "I;16":
            image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)  # 16-bit grayscale
        else:
            image = Image.fromarray(pixels).convert(mode)
        image.save(base / "input" / f"{label}.png")
    with comfy_headless.ComfyServer(base) as server:
        yield server, models
    assert not list(MARKER_DIR.iterdir()), "a pickle payload ran"


def files_under(folder: Path) -> set:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(battery, case):
    server, models = battery
    for name in (RESNET50, PARSENET):  # the fixed-name face files: missing unless the case puts one there
        (models / "facedetection" / name).unlink(missing_ok=True)
    if case.setup:
        case.setup(models)
    before = files_under(server.base / "output")
    error = entry = None
    try:
        entry = server.run(case.graph(), timeout=300)
    except (comfy_headless.PromptRejected, comfy_headless.PromptFailed) as failure:
        error = str(failure)
    assert server.process.poll() is None and server.get("/system_stats"), "the server died"
    assert not list(MARKER_DIR.iterdir()), "a pickle payload ran"
    new = files_under(server.base / "output") - before
    if case.errors:
        assert error is not None, f"expected an error, got {server.output_images(entry)}"
        for pattern in case.errors:
            assert re.search(pattern, error), f"{pattern!r} not in: {error}"
        assert not new, f"outputs left by a failed run: {new}"
        assert "Traceback" not in error
    else:
        assert error is None, error
        paths = server.output_images(entry)
        assert len(paths) == case.batch and {Image.open(p).size for p in paths} == {case.size}
        assert new == set(paths)


INTERRUPT_DELAY = 1.0  # seconds after the node starts: past its set-up, inside its loop


@pytest.mark.parametrize("case", INTERRUPT_CASES, ids=[c.id for c in INTERRUPT_CASES])
def test_interrupt(battery, case):
    """/interrupt while the node's loop runs: the prompt stops at that node within the case's latency, saves
    nothing, the server answers and the next prompt works."""
    server, models = battery
    if case.setup:
        case.setup(models)
    before = files_under(server.base / "output")
    sent = []

    def report(event, data):
        if event in ("executing", "progress") and data.get("node") == case.node and not sent:
            sent.append(None)

            def interrupt():
                sent[0] = time.monotonic()
                server.post("/interrupt", {})
            threading.Timer(INTERRUPT_DELAY, interrupt).start()

    with pytest.raises(comfy_headless.PromptFailed) as failure:
        server.run_with_progress(case.graph(), report, timeout=180)
    latency = time.monotonic() - sent[0]
    print(f"{case.id}: stopped {latency:.2f} s after /interrupt")
    assert "interrupted at " in str(failure.value) and f"(node {case.node})" in str(failure.value), failure.value
    assert latency < case.latency
    assert server.process.poll() is None and server.get("/system_stats"), "the server died"
    assert files_under(server.base / "output") == before, "an interrupted run left an output"
    # The next prompt works. The case's nodes ride along unconnected (ComfyUI runs only what leads to an
    # output) so that their cached results (the CLIP-H text encoding, face detection) serve the next case.
    upstream = {f"prev-{k}": v for k, v in case.graph().items() if v["class_type"] != "SaveImage"}
    for node in upstream.values():
        node["inputs"] = {k: [f"prev-{v[0]}", v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
    entry = server.run(upstream | colour_fix_graph(), timeout=120)
    paths = server.output_images(entry)
    assert len(paths) == 1 and Image.open(paths[0]).size == (32, 32)


def test_battery_size_and_docs_table():
    """At least 100 cases; the docs table lists every category with its count."""
    assert len(CASES) >= 100 and len(INTERRUPT_CASES) >= 10
    assert len({c.id for c in CASES}) == len(CASES)
    table = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    for category, count in category_counts().items():
        assert re.search(rf"\| {re.escape(category)} \| {count} \|", table), (category, count)


if __name__ == "__main__":  # prints the docs table
    for category, count in category_counts().items():
        print(f"| {category} | {count} |")
    print(f"| total | {len(CASES) + len(INTERRUPT_CASES)} |")
