"""Loading everything one DiffBIR version + task needs, with the same loaders a hand-wired graph uses:
ComfyUI's checkpoint loader for SD 2.1 (MODEL, CLIP, VAE), the pack's stage-1 loader (spandrel, as
DiffBIR Load Stage-1 Model) and its IRControlNet loader. Missing files are found or
downloaded through ``downloads.ensure``; see ``presets.PRESETS`` for the table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import attention, convolution, downloads, feed_forward, ircontrolnet, presets, sampling, stage1

log = logging.getLogger("comfyui-diffbir")


@dataclass
class LoadedPreset:
    preset: presets.Preset
    paths: dict[str, str]
    model: Any
    clip: Any
    vae: Any
    ircontrolnet: Any
    cleaner: Any
    background_cleaner: Any

    def summary(self) -> str:
        p = self.preset
        lines = [f"DiffBIR {p.version}, task {p.task}",
                 f"official sampler: {p.sampler}; steps {p.steps}, cfg {p.cfg}",
                 f"SD checkpoint: {self.paths[p.checkpoint]}" + ("  (v-prediction + zero terminal SNR applied)"
                                                                 if p.v_prediction_zsnr else ""),
                 f"IRControlNet: {self.paths[p.ircontrolnet]}",
                 f"stage-1 cleaner: {self.paths[p.cleaner]}"]
        if p.background_cleaner:
            lines.append(f"background cleaner: {self.paths[p.background_cleaner]}")
        for key in p.face_files:
            lines.append(f"face model: {self.paths[key]}")
        return "\n".join(lines)


def load_checkpoint(path: str, version: str):
    """(MODEL, CLIP, VAE) from an SD checkpoint, exactly as CheckpointLoaderSimple loads it, with the
    schedule ``version`` was trained with, the fastest exact attention and convolutions and the feed-forward
    layers in pieces (what DiffBIR
    Model Sampling does by default; ComfyUI cannot detect v2.1's v-prediction + zero terminal SNR from the
    weights)."""
    import comfy.sd
    import folder_paths

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(
        path, output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]
    model = attention.with_unet_attention(sampling.with_model_sampling(model, version), "fastest_exact")
    model = convolution.with_cpu_convolution(model, "fastest_exact")
    model = feed_forward.with_cpu_feed_forward(model, "in_pieces")
    return model, clip, vae


def load_preset(version: str, task: str, allow_download: bool = True) -> LoadedPreset:
    """Every model of a version + task."""
    p = presets.preset_for(version, task)
    paths = downloads.ensure(p.files(), allow_download=allow_download)
    model, clip, vae = load_checkpoint(paths[p.checkpoint], p.model_version)
    cleaner = stage1.load_cleaner(paths[p.cleaner])
    background = stage1.load_cleaner(paths[p.background_cleaner]) if p.background_cleaner else cleaner
    # the release is known here, so it is passed on (the loader's "auto" cannot tell the releases apart)
    control = ircontrolnet.load_ircontrolnet(paths[p.ircontrolnet], version=p.model_version)
    return LoadedPreset(p, paths, model, clip, vae, control, cleaner, background)
