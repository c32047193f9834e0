"""DiffBIR exact tiled VAE encode / decode for large images (GroupNorm statistics shared by all tiles,
so the result equals the untiled pass)."""

from comfy_api.latest import io

from ..diffbir_modules import guards, host_memory, images, tiled_vae
from . import menu


class DiffBIRVAEDecodeTiled(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRVAEDecodeTiled",
            **menu.search("vae decode", "tiled decode", "tile", "large image"),
            display_name="DiffBIR VAE Decode (exact tiles)",
            category=menu.TILING,
            description=(
                "Decodes a latent in tiles without the colour and contrast shifts of independently decoded tiles: "
                "the small latent-resolution part (with its global attention) runs whole, and the GroupNorm "
                "statistics of the tiled part are computed over the whole image, as an untiled decode does; tiles "
                "exchange thin borders between blocks instead of carrying wide margins, and when memory is short the "
                "full-resolution level recomputes instead of storing (same result, less memory, a bit slower). The "
                "result equals an untiled decode to float precision. Use it instead of VAE Decode for large "
                "restorations."),
            inputs=[
                io.Vae.Input("vae", tooltip="The SD 2.1 VAE."),
                io.Latent.Input("samples", tooltip="The sampled latent."),
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=64, tooltip=(
                    "Tile size in output pixels: 0 = automatic (untiled when it fits in memory; on a CPU in fp32 exact "
                    "tiles of up to 512 px, which decode faster there with half the memory), else a multiple of 64, "
                    "at least 64 (official decoder tile 256). Smaller tiles use less memory; the result is the same.")),
                io.Boolean.Input("clamp", default=True, optional=True, tooltip=(
                    "On: clipped to [0, 1] like VAE Decode. Off (official): the decoder's values as they are, "
                    "because the official code colour-corrects and resizes the unclipped decode and clips only the "
                    "final image: feed 'DiffBIR Colour Fix' (clamp off) and 'DiffBIR Resize to Output Size', "
                    "which clips at the end.")),
            ],
            outputs=[io.Image.Output(tooltip="The decoded image (unclipped when clamp is off).")],
        )

    @classmethod
    def execute(cls, vae, samples, tile_size=0, clamp=True) -> io.NodeOutput:
        latent = samples["samples"]
        guards.require_finite("DiffBIR VAE Decode (exact tiles)", "samples", latent)
        channels = getattr(vae, "latent_channels", 4)
        if latent.ndim != 4 or latent.shape[1] != channels:
            raise guards.InputError(
                f"DiffBIR VAE Decode (exact tiles): the latent has shape {tuple(latent.shape)}, but this VAE decodes "
                f"[batch, {channels}, height, width] latents: connect a latent made for this VAE's model (SD 1.x / "
                "2.x / SDXL), or decode other latents with ComfyUI's VAE Decode.")
        host_memory.release()  # the sampler's freed activations: else the decode's peak stacks on them
        decoded = tiled_vae.decode(vae, latent, tile_size, clamp=clamp)
        host_memory.release()  # the decoder's
        return io.NodeOutput(decoded)


class DiffBIRVAEEncodeTiled(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRVAEEncodeTiled",
            **menu.search("vae encode", "tiled encode", "tile", "large image"),
            display_name="DiffBIR VAE Encode (exact tiles)",
            category=menu.TILING,
            description=(
                "Encodes an image in tiles with the GroupNorm statistics of the whole image and the latent-resolution "
                "part (with its global attention) run whole, so the latent equals an untiled encode to float "
                "precision (ComfyUI's tiled encode and the official tiled VAE do not). The returned latent is the "
                "posterior mode, as VAE Encode returns."),
            inputs=[
                io.Vae.Input("vae", tooltip="The SD 2.1 VAE."),
                io.Image.Input("pixels", tooltip="The image to encode (cropped to a multiple of 8, as VAE Encode)."),
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=64, tooltip=(
                    "Tile size in input pixels: 0 = automatic (untiled when it fits in memory; on a CPU in fp32 an "
                    "image of 1024 px or more in exact tiles of 512 px, as fast there with 0.6x the memory), else a "
                    "multiple of 64, at least 64 (official encoder tile 256). Smaller tiles use less memory; the "
                    "result is the same.")),
            ],
            outputs=[io.Latent.Output(tooltip="The latent.")],
        )

    @classmethod
    def execute(cls, vae, pixels, tile_size=0) -> io.NodeOutput:
        guards.require_finite("DiffBIR VAE Encode (exact tiles)", "pixels", pixels)
        guards.require_min_size("DiffBIR VAE Encode (exact tiles)", "pixels", pixels, 8,
                                "the VAE encodes 8x8 pixel blocks and crops the rest")
        if pixels.shape[-1] != 3:  # gray becomes RGB and alpha is left out, as the other nodes do
            pixels = images.split_alpha(pixels)[0].movedim(1, -1).contiguous()  # an IMAGE's usual layout
        latent = tiled_vae.encode(vae, pixels, tile_size)
        host_memory.release()
        return io.NodeOutput({"samples": latent})
