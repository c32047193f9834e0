"""Prompts and text encoding: the official defaults per version, the official tokenisation (77-token
truncation) against the official OpenCLIP tokenizer's ids, and the text encoder output against the
official FrozenOpenCLIPEmbedder on the same random CLIP-H weights (tests/golden/samplers/)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "golden" / "samplers"


@pytest.fixture(scope="module")
def clip(comfy, sd2_tiny):
    """The CLIP-H of the tiny checkpoint: model_factory draws every tensor from (seed, key), so its
    text encoder is the very one of the small checkpoint the goldens were made with."""
    with torch.inference_mode():
        return comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(sd2_tiny)[1]


@pytest.fixture(scope="module")
def official_tokens():
    data = json.loads((GOLDEN / "tokens.json").read_text())
    return list(zip(data["prompts"], data["tokens"]))


def ids(tokens: dict) -> list[list[int]]:
    return [[int(t[0]) for t in chunk] for chunk in tokens["h"]]


def test_default_prompts(comfy):
    node = comfy.node_class("DiffBIRDefaultPrompts")
    assert tuple(node.execute("v1").result) == ("", "", 1.0)
    assert tuple(node.execute("v2").result) == (
        "", "low quality, blurry, low-resolution, noisy, unsharp, weird textures", 4.0)
    pos, neg, cfg = node.execute("v2.1", "a cat on a sofa").result
    assert pos.startswith("a cat on a sofa, Cinematic, High Contrast, highly detailed") and pos.endswith(
        "perfect without deformations.")
    assert neg.startswith("painting, oil painting, illustration") and neg.endswith("lowres, over-smooth.")
    assert cfg == 6.0
    assert node.execute("v2.1", "").result[0].startswith("Cinematic")


def test_official_tokenisation_equals_open_clip(comfy, clip, official_tokens):
    """DiffBIR Text Encode's tokens (truncate on, weights off) = the official tokenizer's, for plain,
    punctuated, HTML-escaped, accented, weight-syntax-looking and over-long prompts."""
    prompts = comfy.pack_module("diffbir_modules.prompts")
    mismatches = []
    for text, expected in official_tokens:
        ours = ids(prompts.official_tokens(clip, text))
        if ours != [expected]:
            mismatches.append(text)
    assert not mismatches


def test_comfyui_tokenisation_differs_as_documented(comfy, clip, official_tokens):
    """What the switches change (documented in docs/samplers.md): ComfyUI's own tokenisation chunks long
    prompts, reads weights and keeps HTML entities."""
    prompts = comfy.pack_module("diffbir_modules.prompts")
    table = dict(official_tokens)
    long_prompt = official_tokens[-1][0]
    stock = ids(clip.tokenize(long_prompt))
    assert len(stock) == 2 and stock[0][:20] == table[long_prompt][:20]
    assert len(ids(prompts.official_tokens(clip, long_prompt, truncate=False))) == 2
    weighted = 'A (very) beautiful [cat]:1.2, "quoted" text; it\'s 3.5 o\'clock!!  Tabs\tand\nnewlines'
    assert ids(clip.tokenize(weighted)) != [table[weighted]]  # ComfyUI drops the parentheses as weight syntax
    html = "Fish &amp; chips &lt;b&gt; caf\u00e9 na\u00efve \u00c9COLE"
    assert ids(prompts.official_tokens(clip, html, cleanup=False)) != [table[html]]


def test_text_encode_equals_official_encoder(comfy, clip):
    """The long prompt (caption + v2.1 default, > 77 tokens): the official encoder sees one truncated
    chunk; DiffBIR Text Encode gives the same (1, 77, 1024) embedding."""
    golden = load_file(str(GOLDEN / "text.safetensors"))["c_txt"]
    prompt = json.loads((GOLDEN / "tokens.json").read_text())["prompts"][-1]
    node = comfy.node_class("DiffBIRTextEncode")
    with torch.inference_mode():
        cond = node.execute(clip, prompt, True, False).result[0]
        stock = comfy.node_class("CLIPTextEncode")().encode(clip, prompt)[0]
    ours = cond[0][0]
    assert ours.shape == golden.shape == (1, 77, 1024)
    err = (ours.float() - golden).abs().max().item()
    print(f"text encoder: max abs diff {err:.2e} (|c_txt| <= {golden.abs().max():.2f})")
    assert err < 1e-4
    assert stock[0][0].shape == (1, 154, 1024)  # ComfyUI's own encoder: two chunks
