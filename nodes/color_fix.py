"""DiffBIR colour fix node: the generated image with the colours of the stage-1 image."""

from comfy_api.latest import io

from ..diffbir_modules import color_fix, comfy_compat, guards, images


class DiffBIRColorFix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRColorFix",
            **comfy_compat.schema_fields(search_aliases=[
                "color fix", "color correction", "color match", "wavelet", "adain"]),
            display_name="DiffBIR Colour Fix",
            category="DiffBIR",
            description=(
                "DiffBIR's last step: keeps the details (high frequencies) of the restored image and takes its "
                "colour and shading (low frequencies) from the stage-1 image, which removes the colour shift "
                "diffusion sampling can add. 'wavelet' is what every official version does; 'adain' matches "
                "per-channel mean and contrast only (v1's alternative)."),
            inputs=[
                io.Image.Input("image", tooltip="The restored image (VAE Decode output)."),
                io.Image.Input("reference", tooltip=(
                    "The stage-1 (degradation removal) image whose colours to keep. Resized to the restored "
                    "image's size if it differs.")),
                io.Combo.Input("method", options=["wavelet", "adain"], default="wavelet", tooltip=(
                    "wavelet: official DiffBIR, 5-level a-trous split (keeps fine detail, follows local colour). "
                    "adain: global mean/std per channel (keeps more of the generated local colour).")),
            ],
            outputs=[io.Image.Output(tooltip="The restored image with the reference's colours.")],
        )

    @classmethod
    def execute(cls, image, reference, method="wavelet") -> io.NodeOutput:
        guards.require_finite("DiffBIR Colour Fix", "image", image)
        guards.require_finite("DiffBIR Colour Fix", "reference", reference)
        content, alpha = images.split_alpha(image)
        style, _ = images.split_alpha(reference)
        content, style = images.match_batch(content, style)
        style = images.resize(style, content.shape[-2:])
        fix = color_fix.wavelet_color_fix if method == "wavelet" else color_fix.adain_color_fix
        return io.NodeOutput(images.join_alpha(fix(content, style), alpha))
