"""DiffBIR colour fix node: the generated image with the colours of the stage-1 image."""

from comfy_api.latest import io

from ..diffbir_modules import color_fix, guards, host_memory, images
from . import menu

METHODS = {"wavelet": color_fix.wavelet_color_fix, "adain": color_fix.adain_color_fix,
           "lab": color_fix.lab_color_fix}  # saved workflows store the name: never rename one


class DiffBIRColorFix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRColorFix",
            **menu.search("color fix", "color correction", "color match", "colour", "wavelet", "adain", "lab"),
            display_name="DiffBIR Colour Fix",
            category=menu.OUTPUT,
            description=(
                "DiffBIR's last step: keeps the details (high frequencies) of the restored image and takes its "
                "colour and shading (low frequencies) from the stage-1 image, which removes the colour shift "
                "diffusion sampling can add. 'wavelet' is what every official version does; 'adain' matches "
                "per-channel mean and contrast only (v1's alternative); 'lab' does that in CIELAB (our addition)."),
            inputs=[
                io.Image.Input("image", tooltip="The restored image (VAE Decode output)."),
                io.Image.Input("reference", tooltip=(
                    "The stage-1 (degradation removal) image whose colours to keep. Resized to the restored "
                    "image's size if it differs.")),
                io.Combo.Input("method", options=list(METHODS), default="wavelet", tooltip=(
                    "wavelet: official DiffBIR, 5-level a-trous split (keeps fine detail, follows local colour). "
                    "adain: global mean/std per channel (keeps more of the generated local colour). "
                    "lab: the same global transfer in CIELAB (lightness and colour apart: fixes a colour cast "
                    "without tinting the shading; not an official option).")),
                io.Boolean.Input("clamp", default=True, optional=True, tooltip=(
                    "On: the result is clipped to [0, 1]. Off (official): left unclipped, because the official "
                    "code resizes the colour-fixed image before it clips; connect 'DiffBIR Resize to Output "
                    "Size', which clips once at the end.")),
            ],
            outputs=[io.Image.Output(tooltip="The restored image with the reference's colours.")],
        )

    @classmethod
    def execute(cls, image, reference, method="wavelet", clamp=True) -> io.NodeOutput:
        guards.require_finite("DiffBIR Colour Fix", "image", image)
        guards.require_finite("DiffBIR Colour Fix", "reference", reference)
        content, alpha = images.split_alpha(image)
        style, _ = images.split_alpha(reference)
        content, style = images.match_batch(content, style)
        style = images.resize(style, content.shape[-2:])
        if method not in METHODS:
            raise ValueError(f"DiffBIR Colour Fix: unknown method {method!r}; choose one of {', '.join(METHODS)}")
        return io.NodeOutput(images.join_alpha(METHODS[method](content, style), alpha, clamp=clamp))


class DiffBIRResizeToOutputSize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRResizeToOutputSize",
            **menu.search("resize", "output size", "upscale", "final size", "bicubic", "lanczos"),
            display_name="DiffBIR Resize to Output Size",
            category=menu.OUTPUT,
            description=(
                "DiffBIR's very last step: resizes the restored image to the size the user asked for (input "
                "size x upscale: Degradation Removal's width and height outputs), the way the official code "
                "does, then clips to [0, 1]. Stage 2 works with at least 512 px on the short side, so without "
                "this a small input comes out larger than requested. Core 'Upscale Image' resamples "
                "differently (no antialias), a few levels off the official result."),
            inputs=[
                io.Image.Input("image", tooltip="The restored image (DiffBIR Colour Fix output)."),
                io.Int.Input("width", default=512, min=1, max=16384, tooltip=(
                    "Output width: connect Degradation Removal's width output.")),
                io.Int.Input("height", default=512, min=1, max=16384, tooltip=(
                    "Output height: connect Degradation Removal's height output.")),
                io.Combo.Input("method", options=list(images.OUTPUT_RESIZES), default="bicubic_antialias",
                               tooltip=(
                    "bicubic_antialias: official v2 and v2.1 (torch bicubic with antialias on the unclipped "
                    "float image). lanczos_uint8: official v1 (the image is clipped and truncated to 8 bits, "
                    "then PIL LANCZOS). bicubic_uint8: 8 bits, then PIL BICUBIC: the official upscale of a "
                    "photo before face detection (faces in the wild).")),
            ],
            outputs=[io.Image.Output(tooltip="The restored image at width x height, in [0, 1].")],
        )

    @classmethod
    def execute(cls, image, width, height, method="bicubic_antialias") -> io.NodeOutput:
        # the 8-bit methods would turn NaN into black pixels that look like content
        guards.require_finite("DiffBIR Resize to Output Size", "image", image)
        rgb, alpha = images.split_alpha(image)
        out = images.resize_to_output(rgb, (height, width), method)
        host_memory.release()  # the last step of a restore: what the run freed goes back to the system
        return io.NodeOutput(images.join_alpha(out, alpha))
