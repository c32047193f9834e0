"""Before / after: the input and the restoration side by side in one labelled image, the end of every
example workflow. Newer ComfyUI also has a core "Compare Images" slider node; this one works on every
supported release and its result can be saved like any image."""

import torch
from comfy_api.latest import io

from ..diffbir_modules import guards, images
from ..diffbir_modules import sweep as sweep_grid
from . import menu


class DiffBIRBeforeAfter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRBeforeAfter",
            **menu.search("before after", "compare", "side by side", "preview", restore=True),
            display_name="DiffBIR Before / After",
            category=menu.OUTPUT,
            description=(
                "Puts the low-quality input (left, 'before') and the restored image (right, 'after') side by "
                "side in one image, labelled, to judge a restoration at a glance. The input is enlarged to the "
                "result's size with nearest-neighbour, so its pixels show as they are (no smoothing)."),
            inputs=[
                io.Image.Input("before", tooltip="The input image (e.g. the Load Image output)."),
                io.Image.Input("after", tooltip="The restored image (e.g. DiffBIR Resize to Output Size)."),
            ],
            outputs=[io.Image.Output(tooltip=(
                "One image per pair: before | after, each under its label. Connect a Preview Image or Save Image."))],
        )

    @classmethod
    def execute(cls, before, after) -> io.NodeOutput:
        guards.require_finite("DiffBIR Before / After", "before", before)
        guards.require_finite("DiffBIR Before / After", "after", after)
        before_rgb, _ = images.split_alpha(before)
        after_rgb, _ = images.split_alpha(after)
        before_rgb, after_rgb = images.match_batch(before_rgb, after_rgb, names=("before", "after"))
        before_rgb = images.resize(before_rgb, after_rgb.shape[-2:], mode="nearest")
        pairs = [sweep_grid.make_grid([b.movedim(0, -1), a.movedim(0, -1)], ["before", "after"])
                 for b, a in zip(before_rgb, after_rgb)]
        return io.NodeOutput(torch.cat(pairs))
