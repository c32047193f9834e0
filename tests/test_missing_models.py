"""Offline, a workflow whose model files are missing is refused before anything runs, with every
missing file of the prompt in the one answer (ComfyUI validates all nodes and reports all their
errors together; the DiffBIR loaders check their files in ``validate_inputs``), through a real
headless ComfyUI server with empty model folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from scripts import comfy_headless

REPO = Path(__file__).resolve().parent.parent
FACES_IN_THE_WILD = REPO / "example_workflows" / "DiffBIR faces in the wild (v2.1).json"


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory):
    """Empty model folders and downloads off (DIFFBIR_OFFLINE=1), as for a user without a network."""
    base = comfy_headless.make_base_directory(tmp_path_factory.mktemp("offline"))
    Image.new("RGB", (64, 64), (120, 90, 60)).save(base / "input" / "example.png")
    with comfy_headless.ComfyServer(base, env={"DIFFBIR_OFFLINE": "1"}) as server:
        yield server


def rejection(server, prompt: dict) -> dict:
    """The server's answer to ``prompt``, which must be refused: {node id: [error details]} (ComfyUI
    repeats a node's validation message once per input its validate_inputs takes)."""
    with pytest.raises(comfy_headless.PromptRejected) as refused:
        server.queue(prompt)
    body = json.loads(str(refused.value).split(": ", 1)[1])
    return {node: [e["details"] for e in errors["errors"]] for node, errors in body["node_errors"].items()}


@pytest.mark.server
def test_two_missing_files_are_listed_in_one_answer(offline_server):
    prompt = {
        "image": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "detector": {"class_type": "DiffBIRFaceDetectorLoader", "inputs": {
            "detector": "retinaface_resnet50", "download_if_missing": True}},
        "faces": {"class_type": "DiffBIRFaceDetectAlign", "inputs": {
            "image": ["image", 0], "detector": ["detector", 0], "face_size": 512, "selection": "all", "indices": "0",
            "min_size": 0, "order": "left to right", "confidence": 0.8, "detection_size": 640,
            "eye_distance_threshold": 5.0, "official_quirks": False}},
        "parser": {"class_type": "DiffBIRFaceParserLoader", "inputs": {"download_if_missing": False}},
        "paste": {"class_type": "DiffBIRFacePasteBack", "inputs": {
            "background": ["image", 0], "restored_faces": ["faces", 0], "faces": ["faces", 1],
            "face_parser": ["parser", 0], "color_match": "none", "feather": 1.0, "official_quirks": False}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["paste", 0], "filename_prefix": "faces"}},
    }
    errors = rejection(offline_server, prompt)
    assert set(errors) == {"detector", "parser"}, errors
    detector, parser = errors["detector"][0], errors["parser"][0]
    models = offline_server.base / "models" / "facedetection"
    # each names its file, where to get it, the folder to put it in and why nothing was downloaded
    assert "detection_Resnet50_Final.pth" in detector and "github.com/xinntao/facexlib/releases" in detector
    assert str(models) in detector and "DIFFBIR_OFFLINE=1" in detector
    assert "parsing_parsenet.pth" in parser and "github.com/xinntao/facexlib/releases" in parser
    assert str(models) in parser and "download_if_missing = false" in parser


@pytest.mark.server
def test_shipped_faces_workflow_lists_every_missing_file_at_once(offline_server):
    workflow = comfy_headless.load_workflow(FACES_IN_THE_WILD)
    prompt = comfy_headless.workflow_to_prompt(workflow, offline_server.object_info())
    errors = rejection(offline_server, prompt)
    text = "\n".join(d for details in errors.values() for d in details)
    # the preset's six files (SD 2.1 zsnr, IRControlNet v2.1, the face and background cleaners, the
    # detector and the parser) with the loaders' own detector and parser files: all in one answer
    for name in ("sd2.1-base-zsnr-laionaes5.ckpt", "DiffBIR_v2.1.pt", "face_swinir_v1.ckpt",
                 "realesrgan_s4_swinir_100k.pth", "detection_Resnet50_Final.pth", "parsing_parsenet.pth"):
        assert name in text, f"{name} not listed:\n{text}"
    workflow_loaders = {str(n["id"]) for n in workflow["nodes"]
                        if n["type"] in ("DiffBIRPresetLoader", "DiffBIRFaceDetectorLoader", "DiffBIRFaceParserLoader")}
    assert set(errors) == workflow_loaders, errors
