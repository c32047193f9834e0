"""Loading everything one DiffBIR version + task needs, with the same loaders a hand-wired graph uses:
ComfyUI's checkpoint loader for SD 2.1 (MODEL, CLIP, VAE), spandrel for the stage-1 cleaners (what the
core "Load Upscale Model" node does) and the pack's IRControlNet loader. Missing files are found or
downloaded through ``downloads.ensure``; see ``weights.PRESETS`` for the table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import downloads, weights

log = logging.getLogger("comfyui-diffbir")


@dataclass
class LoadedPreset:
    preset: weights.Preset
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


def load_checkpoint(path: str, v_prediction_zsnr: bool = False):
    """(MODEL, CLIP, VAE) from an SD checkpoint, exactly as CheckpointLoaderSimple loads it; for v2.1's
    zero-SNR checkpoint the model sampling is set to v-prediction with zero terminal SNR (what the core
    ModelSamplingDiscrete node does), since ComfyUI cannot detect zsnr from the weights."""
    import comfy.sd
    import folder_paths

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(
        path, output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]
    if v_prediction_zsnr:
        model = with_v_prediction_zsnr(model)
    return model, clip, vae


def with_v_prediction_zsnr(model):
    """A clone of MODEL sampled as v-prediction with zero terminal SNR (core ModelSamplingDiscrete node)."""
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    return ModelSamplingDiscrete().patch(model, "v_prediction", True)[0]


def load_cleaner(path: str):
    """A stage-1 cleaner as an UPSCALE_MODEL (spandrel ImageModelDescriptor), loaded the way the core
    "Load Upscale Model" node loads it (safe torch.load, DataParallel prefix removed)."""
    import comfy.utils
    from spandrel import ImageModelDescriptor, ModelLoader

    sd = comfy.utils.load_torch_file(path, safe_load=True)
    if "module.layers.0.residual_group.blocks.0.norm1.weight" in sd:
        sd = comfy.utils.state_dict_prefix_replace(sd, {"module.": ""})
    model = ModelLoader().load_from_state_dict(sd).eval()
    if not isinstance(model, ImageModelDescriptor):
        raise ValueError(f"{path} is not a single-image restoration model that spandrel can run "
                         f"(got {type(model).__name__}); expected a DiffBIR stage-1 cleaner")
    return model


def ircontrolnet_loader():
    """The pack's IRControlNet loader, ``diffbir_modules.ircontrolnet.load_ircontrolnet(path, version=...)``
    (written on the ircontrolnet branch; its signature there is ``(path, version="auto", dtype=None)``).
    Checked after the files are found and before the big checkpoint is loaded."""
    try:
        from . import ircontrolnet
    except ImportError as error:
        raise RuntimeError("this build of the DiffBIR pack has no IRControlNet loader "
                           f"(diffbir_modules.ircontrolnet: {error})") from None
    loader = getattr(ircontrolnet, "load_ircontrolnet", None)
    if loader is None:
        raise RuntimeError("diffbir_modules.ircontrolnet has no load_ircontrolnet(path) function")
    return loader


def load_preset(version: str, task: str, allow_download: bool = True, require_ircontrolnet: bool = True
                ) -> LoadedPreset:
    p = weights.preset(version, task)
    paths = downloads.ensure(p.files(), allow_download=allow_download)
    load_control = ircontrolnet_loader() if require_ircontrolnet else None
    model, clip, vae = load_checkpoint(paths[p.checkpoint], p.v_prediction_zsnr)
    cleaner = load_cleaner(paths[p.cleaner])
    background = load_cleaner(paths[p.background_cleaner]) if p.background_cleaner else cleaner
    # the release is known here, so it is passed on (the loader's "auto" cannot tell the releases apart)
    control = load_control(paths[p.ircontrolnet], version=p.version) if load_control else None
    return LoadedPreset(p, paths, model, clip, vae, control, cleaner, background)
