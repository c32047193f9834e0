"""The sampling nodes in a real headless ComfyUI server, in the graphs users build: the official v2.1
chain (default prompts -> DiffBIR Text Encode, IRControlNet, noise augmentation, DiffBIR EDM Sampler
with DiffBIR EDM Sigmas in SamplerCustomAdvanced) and the official v2 chain (spaced sampler), each
saved as an image. (Their numbers are checked against the official code in process, in
test_samplers_parity.py; this checks the nodes validate, wire and run under main.py.)"""

import numpy as np
import pytest
from PIL import Image

from devkit import model_factory
from devkit.model_factory import install_model

SEED = 231


def official_graph(ckpt: str, ircontrolnet: str) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        # v2.1: zsnr v-prediction, default prompts with a caption, IRControlNet, --noise_aug 200,
        # edm_dpm++_3m_sde
        "ms21": {"class_type": "DiffBIRModelSampling", "inputs": {"model": ["ckpt", 0], "version": "v2.1"}},
        "prompts21": {"class_type": "DiffBIRDefaultPrompts", "inputs": {"version": "v2.1", "caption": "a red boat"}},
        "pos21": {"class_type": "DiffBIRTextEncode", "inputs": {
            "clip": ["ckpt", 1], "text": ["prompts21", 0], "truncate": True, "prompt_weights": False}},
        "neg21": {"class_type": "DiffBIRTextEncode", "inputs": {
            "clip": ["ckpt", 1], "text": ["prompts21", 1], "truncate": True, "prompt_weights": False}},
        "irc": {"class_type": "DiffBIRIRControlNetLoader", "inputs": {"ircontrolnet_name": ircontrolnet,
                                                                      "version": "v2.1"}},
        "image": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                         "color": 0x8040C0}},
        "apply": {"class_type": "DiffBIRApplyIRControlNet", "inputs": {
            "positive": ["pos21", 0], "negative": ["neg21", 0], "ircontrolnet": ["irc", 0], "vae": ["ckpt", 2],
            "image": ["image", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
            "start_point": "noise", "padding": "64"}},
        "aug": {"class_type": "DiffBIRConditionNoiseAugment", "inputs": {
            "positive": ["apply", 0], "negative": ["apply", 1], "model": ["ms21", 0], "noise_aug": 200,
            "seed": SEED, "official_order": True}},
        "guider21": {"class_type": "CFGGuider", "inputs": {
            "model": ["ms21", 0], "positive": ["aug", 0], "negative": ["aug", 1], "cfg": ["prompts21", 2]}},
        "sampler21": {"class_type": "DiffBIREDMSampler", "inputs": {
            "solver": "dpm++_3m_sde", "noise_stream": "official_after_noise_aug", "timestep_lookup": "official_edm",
            "eta": 1.0, "s_noise": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 300.0, "order": 1}},
        "sigmas21": {"class_type": "DiffBIREDMSigmas", "inputs": {"model": ["ms21", 0], "steps": 2,
                                                                  "first_sigma": "auto"}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
        "sample21": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider21", 0], "sampler": ["sampler21", 0],
            "sigmas": ["sigmas21", 0], "latent_image": ["apply", 2]}},
        "decode21": {"class_type": "VAEDecode", "inputs": {"samples": ["sample21", 0], "vae": ["ckpt", 2]}},
        "fix21": {"class_type": "DiffBIRColorFix", "inputs": {"image": ["decode21", 0], "reference": ["image", 0],
                                                              "method": "wavelet"}},
        "save21": {"class_type": "SaveImage", "inputs": {"images": ["fix21", 0], "filename_prefix": "diffbir_v21"}},
        # v2: eps, the spaced sampler, v2 prompts, cfg 4
        "ms2": {"class_type": "DiffBIRModelSampling", "inputs": {"model": ["ckpt", 0], "version": "v2"}},
        "prompts2": {"class_type": "DiffBIRDefaultPrompts", "inputs": {"version": "v2", "caption": ""}},
        "pos2": {"class_type": "DiffBIRTextEncode", "inputs": {
            "clip": ["ckpt", 1], "text": ["prompts2", 0], "truncate": True, "prompt_weights": False}},
        "neg2": {"class_type": "DiffBIRTextEncode", "inputs": {
            "clip": ["ckpt", 1], "text": ["prompts2", 1], "truncate": True, "prompt_weights": False}},
        "guider2": {"class_type": "CFGGuider", "inputs": {
            "model": ["ms2", 0], "positive": ["pos2", 0], "negative": ["neg2", 0], "cfg": ["prompts2", 2]}},
        "sampler2": {"class_type": "DiffBIRSpacedSampler", "inputs": {"noise_stream": "official"}},
        "sigmas2": {"class_type": "DiffBIRSpacedSigmas", "inputs": {"model": ["ms2", 0], "steps": 3}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "sample2": {"class_type": "SamplerCustom", "inputs": {
            "model": ["ms2", 0], "add_noise": True, "noise_seed": SEED, "cfg": ["prompts2", 2],
            "positive": ["pos2", 0], "negative": ["neg2", 0], "sampler": ["sampler2", 0], "sigmas": ["sigmas2", 0],
            "latent_image": ["empty", 0]}},
        "decode2": {"class_type": "VAEDecode", "inputs": {"samples": ["sample2", 0], "vae": ["ckpt", 2]}},
        "save2": {"class_type": "SaveImage", "inputs": {"images": ["decode2", 0], "filename_prefix": "diffbir_v2"}},
    }


@pytest.mark.server
def test_official_chains_through_the_server(comfy_server, sd2_tiny):
    irc = install_model("diffbir", model_factory.ircontrolnet_file("tiny", 1, "safetensors"))
    graph = official_graph(sd2_tiny, irc)
    entry = comfy_server.run(graph)
    saved = {name: np.asarray(Image.open(comfy_server.output_images(entry, name)[0])) for name in ("save21", "save2")}
    assert saved["save21"].shape == (64, 64, 3) and saved["save2"].shape == (48, 64, 3)
    assert saved["save21"].std() > 0.5 and saved["save2"].std() > 0.5
