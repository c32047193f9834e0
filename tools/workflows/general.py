"""The general example workflows (super-resolution, denoising, v1 general, LoRA), described once and
built into UI-format JSON with builder.py. Each one wires the explicit loaders so users see every
piece: the stage-1 cleaner (degradation removal), SD 2.1 from ComfyUI's own checkpoint loader, the
IRControlNet, the official prompts and the official sampler of its version.

    python -m tools.workflows.general [--out example_workflows]

starts a headless ComfyUI with this pack for the node definitions and writes the JSON files (the face
workflows come from tools/workflows/faces.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffbir_modules import presets, weights
from tools.workflows.builder import Node, build, live_object_info, note, write

HERE = Path(__file__).resolve().parent

SEED = 231  # the official default seed


def _file(key: str) -> str:
    return weights.entry(key).filename


def _models(key: str) -> list[dict]:
    return [weights.workflow_model_entry(key)]


def chain(version: str, task: str, upscale: float, sampler: str = "official", lora: bool = False,
          sweep: bool = False, tiled: bool = False, caption: bool = False) -> list:
    """LoadImage -> degradation removal -> IRControlNet on SD 2.1 -> sampler -> decode, crop, colour fix,
    then the result saved and shown beside the input (before / after).
    sweep: restoration guidance at several scales, laid out in a labelled grid. tiled: every stage tiled
    for large images (cleaner tiles, tiled sampling with the official padding 8, exact tiled VAE).
    caption: an (empty) text node feeds the prompts' caption, where a captioning node's text goes."""
    p = presets.preset_for(version, task)
    nodes = [
        Node("load", "LoadImage", title="low-quality image", image="example.png"),
        Node("cleaner", "DiffBIRStage1Loader", title="stage-1 cleaner", model_name=_file(p.cleaner),
             models=_models(p.cleaner)),
        Node("stage1", "DiffBIRDegradationRemoval", title="stage 1: degradation removal", image=("load", 0),
             upscale_model=("cleaner", 0), preset=f"{version} {task}", upscale=upscale, clamp=False,
             **({"tiled": True} if tiled else {})),
        Node("ckpt", "CheckpointLoaderSimple", title="Stable Diffusion 2.1", ckpt_name=_file(p.checkpoint),
             models=_models(p.checkpoint)),
    ]
    model = ("ckpt", 0)
    if lora:
        nodes.append(Node("lora", "LoraLoaderModelOnly", title="any SD 2.1 LoRA", model=model,
                          lora_name="your_sd21_lora.safetensors", strength_model=0.6))
        model = ("lora", 0)
    nodes += [
        Node("sampling", "DiffBIRModelSampling", title="DiffBIR model sampling", model=model, version=version),
        *([Node("caption", "PrimitiveStringMultiline", title="caption (optional: any text node)", value=""),
           note("caption_note", CAPTION_NOTE, title="Caption")] if caption else []),
        Node("prompts", "DiffBIRDefaultPrompts", title="official prompts", version=version,
             **({"caption": ("caption", 0)} if caption else {})),
        Node("pos", "DiffBIRTextEncode", title="positive prompt", clip=("ckpt", 1), text=("prompts", 0)),
        Node("neg", "DiffBIRTextEncode", title="negative prompt", clip=("ckpt", 1), text=("prompts", 1)),
        Node("irc", "DiffBIRIRControlNetLoader", title="IRControlNet", ircontrolnet_name=_file(p.ircontrolnet),
             version=version, models=_models(p.ircontrolnet)),
        Node("apply", "DiffBIRApplyIRControlNet", positive=("pos", 0), negative=("neg", 0), ircontrolnet=("irc", 0),
             vae=("ckpt", 2), image=("stage1", 0), **({"padding": "8"} if tiled else {})),
    ]
    model = ("sampling", 0)
    if tiled:
        nodes.append(Node("tiling", "DiffBIRTiledSampling", title="tiled sampling (0 = automatic)", model=model))
        model = ("tiling", 0)
    if sweep:
        nodes += [
            Node("scales", "DiffBIRGuidanceScales", title="guidance scales to compare",
                 scales="0, 0.05, 0.1, 0.2, 0.5"),
            Node("guidance", "DiffBIRRestorationGuidance", title="restoration guidance", model=model, vae=("ckpt", 2),
                 image=("stage1", 0), scale=("scales", 0)),
        ]
        model = ("guidance", 0)
    if sampler == "official" and version == "v2.1":
        nodes += [
            Node("sigmas", "DiffBIREDMSigmas", title="official EDM schedule", model=model, steps=p.steps),
            Node("solver", "DiffBIREDMSampler", title="official EDM sampler", solver="dpm++_3m_sde"),
        ]
    elif sampler == "official":
        nodes += [
            Node("sigmas", "DiffBIRSpacedSigmas", title="official spaced schedule", model=model, steps=p.steps),
            Node("solver", "DiffBIRSpacedSampler", title="official spaced DDPM sampler"),
        ]
    if sampler == "official":
        nodes += [
            Node("noise", "RandomNoise", noise_seed=SEED),
            Node("guider", "CFGGuider", model=model, positive=("apply", 0), negative=("apply", 1), cfg=p.cfg),
            Node("sample", "SamplerCustomAdvanced", noise=("noise", 0), guider=("guider", 0), sampler=("solver", 0),
                 sigmas=("sigmas", 0), latent_image=("apply", 2)),
        ]
    else:  # the stock KSampler with the closest native settings (docs/samplers.md)
        nodes.append(Node("sample", "KSampler", model=model, positive=("apply", 0), negative=("apply", 1),
                          latent_image=("apply", 2), seed=SEED, steps=p.steps, cfg=p.cfg,
                          sampler_name="dpmpp_3m_sde", scheduler="simple", denoise=1.0))
    nodes += [
        *official_finish("", ("sample", 0), ("ckpt", 2), ("stage1", 0), ("stage1", 1), ("stage1", 2),
                         decode_title="exact tiled VAE decode (official: unclipped)" if tiled else None),
        *([Node("grid", "DiffBIRImageGrid", title="side by side", images=("resize", 0), labels=("scales", 1)),
           Node("save", "SaveImage", images=("grid", 0), filename_prefix="diffbir_guidance_sweep")] if sweep else
          [Node("save", "SaveImage", images=("resize", 0), filename_prefix="diffbir"),
           Node("compare", "DiffBIRBeforeAfter", title="before / after", before=("load", 0), after=("resize", 0)),
           Node("preview_compare", "PreviewImage", title="before / after", images=("compare", 0))]),
        Node("preview_stage1", "PreviewImage", title="stage-1 result", images=("stage1", 0)),
    ]
    return nodes


def official_finish(prefix: str, samples, vae, stage1, width, height, decode_title: str | None = None,
                    resize: str = "bicubic_antialias") -> list:
    """Decode -> crop -> colour fix -> resize to the requested size, as the official code ends: the decode
    and colour fix leave the values unclipped (the official code clips only the final image), the resize
    clips (``resize``: bicubic_antialias as v2 / v2.1, lanczos_uint8 as the v1 release). The last node's key
    is ``<prefix>resize``."""
    return [
        Node(f"{prefix}decode", "DiffBIRVAEDecodeTiled", title=decode_title or "VAE decode (official: unclipped)",
             samples=samples, vae=vae, clamp=False),
        Node(f"{prefix}crop", "DiffBIRCropToStage1", image=(f"{prefix}decode", 0), stage1=stage1),
        Node(f"{prefix}colour", "DiffBIRColorFix", title="colour fix (official: wavelet, unclipped)",
             image=(f"{prefix}crop", 0), reference=stage1, method="wavelet", clamp=False),
        Node(f"{prefix}resize", "DiffBIRResizeToOutputSize", title="resize to input size x upscale (official)",
             image=(f"{prefix}colour", 0), width=width, height=height, method=resize),
    ]


CAPTION_NOTE = (
    "The official v2.1 captions every input (LLaVA) and puts the caption in front of the positive prompt. "
    "To do the same, connect any text (STRING) output to **official prompts → caption**, e.g. a Florence-2 "
    "caption (kijai/ComfyUI-Florence2, node Florence2Run) or a LLaVA / VLM node (gokayfem/ComfyUI_VLM_nodes), "
    "or type one into the caption box. Empty = no caption. Keep it short: the prompt is cut at 77 tokens, as "
    "the official code cuts it.")


MODELS_NOTE = (
    "Missing model files: ComfyUI's download button takes only .safetensors files from huggingface.co or "
    "civitai.com, and most DiffBIR files are .pth / .ckpt. Get them from the links in the README's weights table "
    "(https://github.com/comfyui-diffbir/comfyui-diffbir#install) into models/<folder> as listed.")


def _readme(title: str, body: str) -> Node:
    return note("readme", f"# {title}\n\n{body}\n\n{MODELS_NOTE}", title="Read me")


WORKFLOWS = {
    "DiffBIR v2.1 super-resolution (SwinIR)": (
        lambda: chain("v2.1", "sr", 4.0, caption=True),
        "DiffBIR v2.1 (the newest): the Real-ESRGAN-trained SwinIR removes the degradation at the target size, "
        "IRControlNet on DiffBIR's zero-terminal-SNR SD 2.1 regenerates detail. Official sampler: EDM "
        "DPM++ 3M SDE, 10 steps, cfg 6 (the official README uses 8: higher is sharper but less faithful)."),
    "DiffBIR v2 super-resolution (BSRNet)": (
        lambda: chain("v2", "sr", 4.0),
        "DiffBIR v2 (the ECCV paper version): BSRNet (x4) cleans and upscales, IRControlNet on SD 2.1 base. "
        "Official sampler: spaced DDPM, 50 steps, cfg 4, empty positive prompt."),
    "DiffBIR v2 denoising (SCUNet)": (
        lambda: chain("v2", "denoise", 1.0),
        "DiffBIR v2 blind denoising: SCUNet (PSNR) removes noise and compression, IRControlNet restores "
        "texture. Same size in and out (upscale 1)."),
    "DiffBIR v1 general": (
        lambda: chain("v1", "sr", 4.0),
        "DiffBIR v1: the general SwinIR and the v1 IRControlNet, empty prompts, cfg 1 (no negative prompt "
        "evaluation), spaced DDPM 50 steps."),
    "DiffBIR v2.1 with a LoRA (stock KSampler)": (
        lambda: chain("v2.1", "sr", 4.0, sampler="ksampler", lora=True),
        "Any SD 2.1 LoRA (put it in models/loras and pick it in the LoRA node) mixes in before the DiffBIR "
        "model sampling. Sampling uses the stock KSampler (dpmpp_3m_sde, simple scheduler: the closest native "
        "setting to the official v2.1 sampler, see docs/samplers.md)."),
    "DiffBIR v2 restoration guidance sweep": (
        lambda: chain("v2", "sr", 4.0, sweep=True),
        "Region-adaptive restoration guidance (DiffBIR v2.0): while sampling, the prediction is pulled toward "
        "the stage-1 image where the image is flat, and left free on edges and texture. Higher scale = more "
        "faithful to the stage-1 result (smoother), lower = more generated detail. This workflow renders the "
        "same restoration (same seed) at each scale in the list and lays them out side by side: pick the scale "
        "by eye, then keep one value. Works with every sampler, LoRAs and tiled sampling (docs/guidance.md)."),
    "DiffBIR v2.1 large images (tiled)": (
        lambda: chain("v2.1", "sr", 4.0, tiled=True),
        "For outputs too large for memory (2K and up): the cleaner runs on tiles, sampling runs on overlapping "
        "latent tiles blended with the official gaussian weights (tile size 0 = automatic from free memory; "
        "the official setting is 512 / 256), and the VAE encodes and decodes in exact tiles (whole-image "
        "GroupNorm statistics: no colour shift between tiles). Measured: a 2048 x 2048 output peaks at 1.8 GiB "
        "of GPU memory when ComfyUI offloads (docs/tiling.md)."),
}


STAGES = {  # group title: node keys, one column each, in the order the workflow runs
    "1. input and stage 1 (clean)": ["readme", "load", "cleaner", "stage1", "preview_stage1"],
    "2. Stable Diffusion and prompts": ["ckpt", "lora", "sampling", "caption", "caption_note", "prompts", "pos", "neg"],
    "3. IRControlNet": ["irc", "apply"],
    "4. sampling": ["tiling", "scales", "guidance", "sigmas", "solver", "noise", "guider", "sample"],
    "5. decode and colour fix": ["decode", "crop", "colour", "resize"],
    "6. result": ["grid", "save", "compare", "preview_compare"],
}


def _stages(nodes: list[Node]) -> dict[str, list[str]]:
    keys = {node.key for node in nodes}
    stages = {title: [k for k in members if k in keys] for title, members in STAGES.items()}
    return {title: members for title, members in stages.items() if members}


def workflows(info: dict) -> dict:
    """{title: UI-format workflow} for the given node definitions."""
    built = {}
    for title, (describe, text) in WORKFLOWS.items():
        nodes = [_readme(title, text), *describe()]
        built[title] = build(nodes, info, stages=_stages(nodes))
    return built


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE.parents[1] / "example_workflows"))
    args = parser.parse_args(argv)
    write(workflows(live_object_info()), args.out)


if __name__ == "__main__":
    main()
