"""DiffBIR tiled sampling for large images: a MODEL patch for every sampler (the exact tiled VAE
nodes are in ``tiled_vae.py``)."""

from comfy_api.latest import io

from ..diffbir_modules import tiled_diffusion as td
from . import menu

WEIGHTING_OPTIONS = ["gaussian", "gaussian_symmetric", "uniform"]


class DiffBIRTiledSampling(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRTiledSampling",
            **menu.search("tile", "tiled", "large image", "high resolution", "multidiffusion", restore=True),
            display_name="DiffBIR Tiled Sampling",
            category=menu.TILING,
            description=(
                "Lets any sampler restore images too large for memory (official --cldm_tiled): every model call is "
                "run on overlapping latent tiles and the outputs are blended with the official gaussian weights. The "
                "IRControlNet condition is cut with the same tile (never re-encoded or resized per tile); stock "
                "ControlNets chained with it get their hint cut the same way. Works with KSampler, "
                "SamplerCustomAdvanced, LoRAs and DiffBIR guidance. With 0 (automatic) the image is sampled whole "
                "when it fits in the memory ComfyUI reports, which is exact; tiling changes the result slightly "
                "at tile overlaps (like the official tiled mode)."),
            inputs=[
                io.Model.Input("model", tooltip="The SD 2.1 model to sample with (after LoRAs or Model Sampling)."),
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=64, tooltip=(
                    "Tile size in image pixels: 0 = automatic (whole image if it fits in memory, else the largest "
                    "of 1024/768/512/384/256 that fits), or a multiple of 64, at least 64 (official 512). Images "
                    "smaller than one tile on either side are sampled whole (official rule). Larger tiles: more "
                    "context per tile, more memory.")),
                io.Int.Input("tile_stride", default=0, min=0, max=8192, step=8, tooltip=(
                    "Distance between tile starts in pixels: 0 = half the tile (official 256 for 512), or a "
                    "multiple of 8 up to the tile size. Smaller: more overlap, smoother blending, slower.")),
                io.Int.Input("tile_batch", default=0, min=0, max=64, tooltip=(
                    "Tiles evaluated together in one model call: 0 = automatic (on a GPU as many as fit in free "
                    "memory, up to 16; on a CPU one, as batching saved no time there and cost memory); 1 = one "
                    "at a time (least memory). Same result whatever the batch.")),
                io.Combo.Input("weighting", options=WEIGHTING_OPTIONS, default="gaussian", tooltip=(
                    "How overlapping tiles are blended. gaussian: official (its vertical profile is centred half a "
                    "pixel low, kept for parity); gaussian_symmetric: centred; uniform: plain average (DiffBIR v1; "
                    "seams more likely).")),
            ],
            outputs=[io.Model.Output(tooltip="The model with tiled sampling; connect it to the sampler.")],
        )

    @classmethod
    def execute(cls, model, tile_size=0, tile_stride=0, tile_batch=0, weighting="gaussian") -> io.NodeOutput:
        settings = td.DiffusionTiling(tile_size=tile_size, tile_stride=tile_stride, tile_batch=tile_batch,
                                      weighting="uniform" if weighting == "uniform" else "gaussian",
                                      official_midpoint=weighting != "gaussian_symmetric")
        return io.NodeOutput(td.patch_model(model, settings))
