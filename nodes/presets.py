"""DiffBIR preset loader: one node that loads everything a DiffBIR version + task needs, finding the
files in the model folders or downloading the missing ones."""

from comfy_api.latest import io

from ..diffbir_modules import downloads, preset_loading, presets
from . import menu
from .ircontrolnet import IRControlNetType


def _task_help() -> str:
    return ("sr: blind super-resolution of general photos; face: an aligned 512x512 face crop; denoise: blind "
            "denoising of general photos; unaligned_face: faces anywhere in a photo (v2 and v2.1) - also fetches "
            "the face detector and parser for the face nodes, and 'background_cleaner' is the cleaner of the "
            "whole picture.")


class DiffBIRPresetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRPresetLoader",
            **menu.search("load", "preset", "all in one", "checkpoint", "controlnet", "face", restore=True),
            display_name="DiffBIR Preset Loader",
            category=menu.PRESETS,
            description=(
                "Loads everything one official DiffBIR version and task uses: the SD 2.1 checkpoint (MODEL, CLIP, "
                "VAE), the IRControlNet and the stage-1 cleaner, plus the official sampling settings. Files are "
                "looked up in ComfyUI's model folders (checkpoints, diffbir, upscale_models, facedetection); "
                "missing ones are downloaded (resumable, checksum-verified where a checksum is published) unless "
                "downloads are off, in which case the error lists each file, its URL and its folder. The same "
                "loaders as the hand-wired nodes are used, so the outputs work with any ComfyUI node."),
            inputs=[
                io.Combo.Input("version", options=list(presets.PRESET_VERSIONS), default="v2.1", tooltip=(
                    "v2.1: newest weights, v-prediction zero-SNR SD 2.1, sharpest and most generative, few steps. "
                    "v2: the ECCV paper model on plain SD 2.1. v1: the first release; more faithful to the input, "
                    "less detail. 'v1 release': v1's models with the v1 release's own stage-1 size rules "
                    "(its inference.py / inference_face.py).")),
                io.Combo.Input("task", options=list(presets.TASKS), default="sr", tooltip=_task_help()),
                io.Boolean.Input("download_missing", default=True, tooltip=(
                    "Download files that are not in the model folders (several GB for the SD checkpoint). Off, or "
                    "with DIFFBIR_NO_DOWNLOAD=1 set, a missing file stops the run with a list of what to put "
                    "where.")),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip=(
                    "SD 2.1 UNet (v2.1: with v-prediction and zero terminal SNR set), for the IRControlNet "
                    "and the sampler.")),
                io.Clip.Output(display_name="CLIP", tooltip="The OpenCLIP text encoder, for the prompts."),
                io.Vae.Output(display_name="VAE", tooltip="The SD VAE: encodes the stage-1 image, decodes the result."),
                IRControlNetType.Output(display_name="IRCONTROLNET", tooltip=(
                    "The version's IRControlNet, which steers SD toward the stage-1 image (higher strength: more "
                    "faithful, lower: more generated detail).")),
                io.UpscaleModel.Output(display_name="cleaner", tooltip=(
                    "The stage-1 degradation-removal model (SwinIR, BSRNet or SCUNet) for the faces or the image; "
                    "its output decides the content, diffusion then adds realistic detail.")),
                io.UpscaleModel.Output(display_name="background_cleaner", tooltip=(
                    "unaligned_face: the cleaner of the whole picture (BSRNet for v2, Real-ESRGAN-trained SwinIR "
                    "for v2.1); other tasks: the same model as 'cleaner'.")),
                io.Int.Output(display_name="steps", tooltip="The official number of sampling steps of this version."),
                io.Float.Output(display_name="cfg", tooltip=(
                    "The official classifier-free guidance scale (higher: more prompt-driven detail, more "
                    "artefacts above ~10).")),
                io.String.Output(display_name="positive", tooltip="The official positive prompt ('' for v1/v2)."),
                io.String.Output(display_name="negative", tooltip="The official negative prompt."),
                io.String.Output(display_name="settings", tooltip=(
                    "What was loaded from where, and the official sampler of this version, as text.")),
            ],
        )

    @classmethod
    def validate_inputs(cls, version="v2.1", task="sr", download_missing=True):
        # (declaring the combos here replaces ComfyUI's own check of their values)
        try:
            preset = presets.preset_for(version, task)
        except ValueError as error:
            return str(error)
        return downloads.missing_before_run(preset.files(), download_missing) or True

    @classmethod
    def execute(cls, version="v2.1", task="sr", download_missing=True) -> io.NodeOutput:
        loaded = preset_loading.load_preset(version, task, allow_download=download_missing)
        p = loaded.preset
        return io.NodeOutput(loaded.model, loaded.clip, loaded.vae, loaded.ircontrolnet, loaded.cleaner,
                             loaded.background_cleaner, p.steps, p.cfg, p.positive, p.negative, loaded.summary())
