"""What the web UI shows while a prompt runs, through a real headless ComfyUI server: live latent
previews (ComfyUI's own mechanism: the sampler's per-step callback, sent as binary websocket frames
when the server runs with a preview method) from every DiffBIR sampler, untiled and under DiffBIR
Tiled Sampling."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from devkit.model_factory import MODELS_DIR
from scripts import comfy_headless

SEED = 11
STEPS = 4

# name -> (DiffBIR sampler node, its sigmas node, the schedule it needs). Each calls the sampler
# callback once per step; DDIM: 4 steps are the official timesteps 751, 501, 251, 1.
SAMPLERS = {
    "spaced": ({"class_type": "DiffBIRSpacedSampler", "inputs": {"noise_stream": "official"}},
               {"class_type": "DiffBIRSpacedSigmas", "inputs": {"steps": STEPS}}, "v2"),
    "edm": ({"class_type": "DiffBIREDMSampler", "inputs": {
        "solver": "dpm++_3m_sde", "noise_stream": "official", "timestep_lookup": "official_edm", "eta": 1.0,
        "s_noise": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 300.0, "order": 1}},
        {"class_type": "DiffBIREDMSigmas", "inputs": {"steps": STEPS, "first_sigma": "auto"}}, "v2.1"),
    "ddim": ({"class_type": "DiffBIRDDIMSampler", "inputs": {}},
             {"class_type": "DiffBIRDDIMSigmas", "inputs": {"steps": STEPS}}, "v2"),
    "dpm": ({"class_type": "DiffBIRDPMSolverSampler", "inputs": {}},
            {"class_type": "DiffBIRDPMSolverSigmas", "inputs": {"steps": STEPS}}, "v2.1"),
}


@pytest.fixture(scope="module")
def preview_server(tmp_path_factory, sd2_tiny):
    """A server of its own started as a user enables previews (``--preview-method latent2rgb``)."""
    base = comfy_headless.make_base_directory(tmp_path_factory.mktemp("previews"), MODELS_DIR)
    with comfy_headless.ComfyServer(base, extra_args=["--preview-method", "latent2rgb"]) as server:
        yield server


def sampling_graph(ckpt: str, sampler: str, width: int, height: int, tile_size: int = 0) -> dict:
    """The checkpoint through DiffBIR Model Sampling (and DiffBIR Tiled Sampling when ``tile_size``)
    into SamplerCustom with a DiffBIR sampler and its sigmas; the result decoded and previewed."""
    sampler_node, sigmas_node, version = SAMPLERS[sampler]
    model = ["ms", 0]
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "ms": {"class_type": "DiffBIRModelSampling", "inputs": {"model": ["ckpt", 0], "version": version}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "sampler": sampler_node,
        "sigmas": {**sigmas_node, "inputs": {**sigmas_node["inputs"], "model": model}},
    }
    if tile_size:
        graph["tiled"] = {"class_type": "DiffBIRTiledSampling", "inputs": {
            "model": model, "tile_size": tile_size, "tile_stride": tile_size // 2, "tile_batch": 1,
            "weighting": "gaussian"}}
        model = ["tiled", 0]
    graph["sample"] = {"class_type": "SamplerCustom", "inputs": {
        "model": model, "add_noise": True, "noise_seed": SEED, "cfg": 2.0, "positive": ["pos", 0],
        "negative": ["neg", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}}
    graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    graph["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
    return graph


def run_collecting_previews(server, graph) -> tuple[list[Image.Image], list[dict]]:
    """Runs ``graph``; returns the preview frames sent for the sampler node (a frame belongs to the
    node of the "progress" message before it) and that node's progress messages."""
    events = []
    server.run_with_progress(graph, lambda event, data: events.append((event, data)), timeout=300)
    frames, progress, node = [], [], None
    for event, data in events:
        if event == "progress":
            node = data.get("node")
            if node == "sample":
                progress.append(data)
        elif event == "preview_image" and node == "sample":
            assert data["format"] == "JPEG", data["format"]
            frames.append(Image.open(io.BytesIO(data["image"])).convert("RGB"))
    return frames, progress


CASES = [(name, False) for name in SAMPLERS] + [
    # tiled: the DiffBIR loop (spaced) and a k-diffusion solver (edm); DDIM and DPM-Solver call the
    # callback the same way tiled or not (tiling wraps the model call, not the sampler)
    ("spaced", True), ("edm", True)]


@pytest.mark.server
@pytest.mark.parametrize("sampler,tiled", CASES, ids=[f"{n}-{'tiled' if t else 'untiled'}" for n, t in CASES])
def test_live_previews_while_sampling(preview_server, sd2_tiny, sampler, tiled):
    # 128 x 64 px (16 x 8 latent); tiled in 64 px tiles, stride 32 px: 3 tiles per model call
    width, height = 128, 64
    graph = sampling_graph(sd2_tiny, sampler, width, height, tile_size=64 if tiled else 0)
    frames, progress = run_collecting_previews(preview_server, graph)
    # one preview per sampling step (the sampler's callback at every step, as stock samplers do)
    assert len(frames) == STEPS, f"{len(frames)} preview frames for {STEPS} steps"
    # each preview shows the whole image (the latent's 2:1), not a tile (square): ComfyUI scales the
    # 16 x 8 latent preview to fit --preview-size 512, 512 x 256
    for frame in frames:
        assert frame.size == (512, 256), frame.size
    # the previews follow the sampling: the denoised estimate changes from the first step to the last
    assert frames[0].tobytes() != frames[-1].tobytes(), "every preview frame is the same image"
    # the step bar reaches its end (tiled: the tile bar over tiles x steps, then the sampler's step bar)
    assert progress and progress[-1]["value"] == progress[-1]["max"], progress[-3:]
