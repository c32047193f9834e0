"""DiffBIR synthetic degradation node: makes realistic low-quality test inputs from clean photos."""

from comfy_api.latest import io

from ..diffbir_modules import degradations, guards, images
from . import menu


class DiffBIRSynthesizeDegradation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRSynthesizeDegradation",
            **menu.search("degrade", "blur", "noise", "jpeg", "test image", "synthetic"),
            display_name="DiffBIR Synthesize Degradation",
            category=menu.TESTING,
            description=(
                "Degrades clean photos with the random pipelines DiffBIR was trained on, to make test inputs whose "
                "clean original you know (compare the restoration with it). 'realesrgan' is the second-order "
                "Real-ESRGAN pipeline of DiffBIR v2.1 (two rounds of blur, resize, noise and JPEG, then a sinc "
                "filter); 'codeformer' is the simpler one of DiffBIR's stage-1 training (one blur, downsampling "
                "by 1-12x, noise, JPEG). The same seed always gives the same result; image i of a batch uses "
                "seed + i."),
            inputs=[
                io.Image.Input("image", tooltip="Clean photos to degrade (a batch is degraded image by image)."),
                io.Combo.Input("pipeline", options=list(degradations.PIPELINES), default="realesrgan", tooltip=(
                    "realesrgan: DiffBIR v2.1's training degradations (varied and often heavy: ringing, colour "
                    "noise, double JPEG). codeformer: DiffBIR v1/v2's (Gaussian blur, down/up-sampling, noise, "
                    "one JPEG); smoother, closer to old scanned or resized photos.")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of every random choice (kernel, sizes, noise, JPEG quality). Same seed, "
                                     "same output."),
                io.Float.Input("intensity", default=1.0, min=0.0, max=2.0, step=0.05, tooltip=(
                    "1.0 = the exact random ranges DiffBIR trained on. Lower values shrink every range toward "
                    "'no degradation' (milder blur and noise, higher JPEG quality); above 1 goes beyond the "
                    "training ranges, where restoration is expected to fail more often.")),
                io.Float.Input("scale", default=0.0, min=0.0, max=16.0, step=0.5, tooltip=(
                    "Downscale factor of the low-resolution stage. 0 = official: realesrgan works at 1/4 size, "
                    "codeformer draws a factor between 1 and 12 per image. A value fixes the factor, e.g. 4 to "
                    "test 4x super-resolution.")),
                io.Boolean.Input("low_resolution_output", default=False, tooltip=(
                    "Off (DiffBIR's training setup): the degraded image is resized back to the input size. On: it "
                    "is returned at the low resolution (input size / scale), as a super-resolution input; with "
                    "codeformer and a batch, set scale > 0 so all images get one size.")),
                io.Combo.Input("jpeg_codec", options=list(degradations.JPEG_CODECS), default="auto", tooltip=(
                    "auto: the codec each official pipeline uses - kornia's differentiable JPEG for realesrgan "
                    "(like Real-ESRGAN's DiffJPEG), Pillow's libjpeg for codeformer (like OpenCV's imencode). "
                    "kornia's codec approximates libjpeg (no entropy coding, slightly different rounding and "
                    "chroma upsampling).")),
                io.Boolean.Input("usm_sharpen", default=True, tooltip=(
                    "realesrgan only: sharpen the clean image (unsharp mask, radius 50, weight 0.5) before degrading "
                    "and return the sharpened image as 'clean', as DiffBIR v2.1's training does. Off: degrade and "
                    "return the photo as it is.")),
            ],
            outputs=[
                io.Image.Output(display_name="degraded", tooltip=(
                    "The degraded images (RGB, alpha dropped): input size, or input size / scale with "
                    "low_resolution_output.")),
                io.Image.Output(display_name="clean", tooltip=(
                    "The clean images the degradation started from (the input, or its sharpened version for "
                    "realesrgan with usm_sharpen), for PSNR/SSIM against the restoration.")),
            ],
        )

    @classmethod
    def execute(cls, image, pipeline="realesrgan", seed=0, intensity=1.0, scale=0.0, low_resolution_output=False,
                jpeg_codec="auto", usm_sharpen=True) -> io.NodeOutput:
        guards.require_finite_settings("DiffBIR Synthesize Degradation", intensity=intensity, scale=scale)
        guards.require_finite("DiffBIR Synthesize Degradation", "image", image)
        rgb, _ = images.split_alpha(image)
        degraded, clean = degradations.synthesize(
            rgb, pipeline, seed, intensity=intensity, scale=scale, jpeg_codec=jpeg_codec,
            sharpen=usm_sharpen, low_resolution=low_resolution_output)
        return io.NodeOutput(images.join_alpha(degraded, None), images.join_alpha(clean, None))
