"""DiffBIR stage 1 nodes: degradation removal with any spandrel restoration model under the official
size rules, and a loader that reads every published stage-1 file with clear errors."""

import folder_paths
from comfy_api.latest import io

from ..diffbir_modules import guards, host_memory, presets, stage1
from . import menu

PRESET_OPTIONS = ["auto", *presets.preset_names()]
WEIGHTING_OPTIONS = ["gaussian", "gaussian_symmetric", "uniform"]


class DiffBIRDegradationRemoval(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRDegradationRemoval",
            **menu.search("restore", "restoration", "upscale", "super resolution", "denoise", "deblur",
                "jpeg artifacts", "sharpen", "enhance", "face", "swinir", "bsrnet", "scunet"),
            display_name="DiffBIR Restore / Upscale: Degradation Removal (stage 1)",
            category=menu.STAGE1,
            description=(
                "DiffBIR's first stage: a restoration network (SwinIR, BSRNet, SCUNet or any model from 'Load "
                "Upscale Model') removes noise, blur and compression, with the official resize/pad rules so the "
                "result is what IRControlNet was trained on. The output is faithful but smooth; stage 2 adds the "
                "realistic detail. Untiled and tiled runs reproduce the official code to float precision."),
            inputs=[
                io.Image.Input("image", tooltip="The low-quality image(s). RGBA keeps its alpha (resized), gray "
                                                "becomes RGB. Each image of a batch gets the same size rules."),
                io.UpscaleModel.Input("upscale_model", tooltip=(
                    "The cleaner, from 'Load Upscale Model' or 'DiffBIR Load Stage-1 Model': the official "
                    "general_swinir_v1 / face_swinir_v1 / realesrgan_s4_swinir_100k (SwinIR), BSRNet or SCUNet, "
                    "or any other restoration model (your choice changes what stage 2 starts from).")),
                io.Combo.Input("preset", options=PRESET_OPTIONS, default="auto", tooltip=(
                    "Which official size rules to apply. auto: from the model (SwinIR -> SwinIR pipeline of v1/v2.1 "
                    "and faces; BSRNet -> v2 sr; SCUNet -> v2 denoise; other x1 models pre-upscaled, other upscalers "
                    "use their own scale). 'v1 release' is the 7bd5675 code (ceil sizes, PIL resize to 512).")),
                io.Float.Input("upscale", default=4.0, min=0.05, max=16.0, step=0.05, tooltip=(
                    "Target upscale factor (official --upscale; README uses 4 for sr, 1 for face and denoise). 1x "
                    "cleaners get a bicubic pre-upscale to this size; BSRNet upscales x4 itself and is resized.")),
                io.Int.Input("min_short_side", default=512, min=0, max=8192, step=8, tooltip=(
                    "Enlarge so the short side is at least this (official: 512, the resolution SD 2.1 and "
                    "IRControlNet work at). 0 turns it off: the output is then exactly the requested size.")),
                io.Boolean.Input("tiled", default=False, tooltip=(
                    "Run the cleaner on overlapping tiles blended with gaussian weights (official --cleaner_tiled): "
                    "less memory. Skipped when the image is smaller than a tile. Off: untiled, unless the image "
                    "would not fit in the free memory ComfyUI reports; then tiled with the size below (halved "
                    "until a tile fits) and the log says so. SwinIR untiled resizes to 512 before the network, "
                    "tiled after it (official), so the two differ slightly.")),
                io.Int.Input("tile_size", default=512, min=16, max=8192, step=8, tooltip=(
                    "Tile size in input pixels of the cleaner (official 512; SwinIR needs a multiple of 64; BSRNet "
                    "tiles the low-resolution input, so e.g. 128 there is 512 out). "
                    "Halved automatically on out-of-memory.")),
                io.Int.Input("tile_stride", default=256, min=8, max=8192, step=8, tooltip=(
                    "Distance between tiles (official 256). Smaller: more overlap, smoother blending, slower.")),
                io.Combo.Input("tile_weighting", options=WEIGHTING_OPTIONS, default="gaussian", tooltip=(
                    "gaussian: official blending (its y profile is centred half a pixel low, kept for parity); "
                    "gaussian_symmetric: the centred profile; uniform: plain averaging (visible seams more likely).")),
                io.Combo.Input("resample", options=list(stage1.RESAMPLERS), default="pil_uint8", tooltip=(
                    "The bicubic pre-upscale. pil_uint8: PIL on the 8-bit image, as the official code (exact for "
                    "images loaded from 8-bit files). pil_float: the same PIL filter on float values, no rounding "
                    "(for 16-bit or generated inputs).")),
                io.Boolean.Input("clamp", default=True, optional=True, tooltip=(
                    "On: the result is clipped to [0, 1], the usual IMAGE range. Off (official): the network's "
                    "values are kept as they are (a little outside [0, 1] where it overshoots), because the "
                    "official code encodes and colour-corrects the unclipped stage-1 output and clips only the "
                    "final image; 'DiffBIR Resize to Output Size' clips at the end. Save/Preview Image clip too.")),
            ],
            outputs=[
                io.Image.Output("cleaned", display_name="cleaned", tooltip=(
                    "The cleaned image (stage-1 output, the condition and colour reference of stage 2), at least "
                    "min_short_side on its short side.")),
                io.Int.Output("width", display_name="width", tooltip=(
                    "Width the official pipeline returns in the end (input x upscale): resize the final image to it.")),
                io.Int.Output("height", display_name="height", tooltip=(
                    "Height the official pipeline returns in the end (input x upscale).")),
            ],
        )

    @classmethod
    def execute(cls, image, upscale_model, preset="auto", upscale=4.0, min_short_side=512, tiled=False, tile_size=512,
                tile_stride=256, tile_weighting="gaussian", resample="pil_uint8", clamp=True) -> io.NodeOutput:
        guards.require_finite_settings("DiffBIR Degradation Removal", upscale=upscale)
        settings = stage1.Settings(
            rules=preset, upscale=upscale, min_short_side=min_short_side, resample=resample, tiled=tiled,
            tile_size=tile_size, tile_stride=tile_stride,
            weighting="uniform" if tile_weighting == "uniform" else "gaussian",
            official_midpoint=tile_weighting != "gaussian_symmetric", clamp=clamp)
        out, plan = stage1.run_in_comfy(image, upscale_model, settings)
        host_memory.release()
        return io.NodeOutput(out, plan.requested[1], plan.requested[0])


class DiffBIRStage1Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRStage1Loader",
            **menu.search("upscale model", "restoration model", "swinir", "bsrnet", "scunet"),
            display_name="DiffBIR Load Stage-1 Model",
            category=menu.STAGE1,
            description=(
                "Loads a stage-1 cleaner from models/upscale_models: every published DiffBIR/KAIR file "
                "(Lightning .ckpt, 'module.'-prefixed, plain .pth, safetensors) or any spandrel restoration model. "
                "Like 'Load Upscale Model', with errors that say what a wrong file is (e.g. an SD checkpoint)."),
            inputs=[
                io.Combo.Input("model_name", options=folder_paths.get_filename_list("upscale_models"), tooltip=(
                    "The file in models/upscale_models (e.g. realesrgan_s4_swinir_100k.pth for v2.1, BSRNet.pth "
                    "for v2 sr, scunet_color_real_psnr.pth for v2 denoise, face_swinir_v1.ckpt for faces).")),
            ],
            outputs=[io.UpscaleModel.Output(tooltip="The cleaner, for DiffBIR Degradation Removal (or any node "
                                                    "taking an upscale model).")],
        )

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("upscale_models", model_name)
        return io.NodeOutput(stage1.load_cleaner(path))
