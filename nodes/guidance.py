"""Restoration guidance nodes: the MODEL patch, and a scale sweep (a list of scales + a labelled grid)."""

from comfy_api.latest import io

from ..diffbir_modules import guards, guidance, images
from ..diffbir_modules import sweep as sweep_grid
from . import menu


class DiffBIRRestorationGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRRestorationGuidance",
            **menu.search("guidance", "fidelity", "faithful", "region adaptive", restore=True),
            display_name="DiffBIR Restoration Guidance",
            category=menu.GUIDANCE,
            description=(
                "DiffBIR's region-adaptive restoration guidance (v2.0), as a MODEL patch for any sampler: at every "
                "step the predicted clean image is pulled toward the stage-1 image where that image is flat, while "
                "edges and texture stay free to be generated. Higher scale = more fidelity to the stage-1 result "
                "(smoother, fewer invented details); 0 = off (the model is returned unpatched). No retraining; "
                "works with LoRAs, CFG and every native sampler, and exactly as v2.0 with DiffBIR Spaced Sampler."),
            inputs=[
                io.Model.Input("model", tooltip="The SD 2.1 model used for DiffBIR sampling (after any LoRA)."),
                io.Vae.Input("vae", tooltip=(
                    "The SD 2.1 VAE: encodes the target (latent space) or decodes the prediction with gradients "
                    "(rgb space).")),
                io.Image.Input("image", tooltip=(
                    "The stage-1 (degradation-removed) image: the same image DiffBIR Apply IRControlNet encoded. "
                    "It is the target the guidance pulls toward; it may be up to 63 px smaller than the sampled "
                    "latent x 8 (the official zero padding to a multiple of 64 is added).")),
                io.Float.Input("scale", default=0.1, min=0.0, max=100.0, step=0.001, tooltip=(
                    "Guidance strength, the official --g_scale (the step is scale x 3000 x the loss gradient). "
                    "Higher = closer to the stage-1 image (fidelity), lower = more generated detail (realness). "
                    "The official example uses 0.5 in rgb space; use DiffBIR Guidance Scales to compare by eye.")),
                io.Combo.Input("loss", options=list(guidance.LOSSES), default="w_mse", tooltip=(
                    "w_mse: region-adaptive, flat regions follow the stage-1 image, edges/texture are left free "
                    "(v2.0). mse: the same pull everywhere (v1-style latent image guidance).")),
                io.Combo.Input("space", options=list(guidance.SPACES), default="latent", tooltip=(
                    "latent: compare latents (fast, little memory; w_mse uses the pixel weight map averaged per "
                    "latent cell, which the official code could not do). rgb: decode the prediction and compare "
                    "pixels, back-propagating through the VAE decoder (the paper's formula; slower, more memory).")),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, tooltip=(
                    "Sampling progress at which guidance starts (0 = first step). Timestep t <-> 1 - t/999; "
                    "official --g_start T is start_percent (1001 - T) / 999.")),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, tooltip=(
                    "Sampling progress at which guidance stops (1 = last step). Official --g_stop T is "
                    "end_percent (999 - T) / 999. Stopping early leaves the final details unguided.")),
                io.Int.Input("repeat", default=1, min=1, max=20, tooltip=(
                    "Gradient steps per sampling step (official --g_repeat). More = stronger pull, slower.")),
                io.Combo.Input("latent_target", options=list(guidance.LATENT_TARGETS), default="mode", tooltip=(
                    "Latent space only. mode: the target latent is the VAE posterior mode (deterministic). "
                    "posterior_sample: a new posterior sample per gradient step, as the official code does (with "
                    "DiffBIR Spaced Sampler it draws from the sampler's noise stream in the official order).")),
                io.Int.Input("reference_steps", default=50, min=0, max=1000, tooltip=(
                    "Makes the strength independent of the step count: the total pull equals the official spaced "
                    "sampler's at this many steps (50 = the v2.0 default). 0 = official rule, one full pull per "
                    "step (strength then grows with the number of steps).")),
                io.Combo.Input("rgb_memory", options=list(guidance.RGB_MEMORY), default="checkpoint", tooltip=(
                    "rgb space only: how the decoder is back-propagated. checkpoint: exact, recomputes decoder "
                    "blocks to save memory. tiled: 256 px tiles with context, bounded memory at any size "
                    "(approximate at tile seams). full: plain autograd as the official code (most memory).")),
            ],
            outputs=[io.Model.Output(tooltip=(
                "The model with restoration guidance: connect it to KSampler / SamplerCustomAdvanced together "
                "with the IRControlNet conditioning."))],
        )

    @classmethod
    def validate_inputs(cls, start_percent=0.0, end_percent=1.0):
        # Declaring these two here turns off ComfyUI's own min/max check for them: done below.
        return (guards.require_range("start_percent", start_percent, 0.0, 1.0)
                or guards.require_range("end_percent", end_percent, 0.0, 1.0)
                or guards.require_order("DiffBIR Restoration Guidance", "start_percent", start_percent,
                                        "end_percent", end_percent)
                or True)

    @classmethod
    def execute(cls, model, vae, image, scale=0.1, loss="w_mse", space="latent", start_percent=0.0,
                end_percent=1.0, repeat=1, latent_target="mode", reference_steps=50,
                rgb_memory="checkpoint") -> io.NodeOutput:
        guards.require_finite_settings("DiffBIR Restoration Guidance", scale=scale, start_percent=start_percent,
                                       end_percent=end_percent)
        config = guidance.GuidanceConfig(
            scale=float(scale), loss=loss, space=space, start_percent=float(start_percent),
            end_percent=float(end_percent), repeat=int(repeat), latent_target=latent_target,
            reference_steps=int(reference_steps), rgb_memory=rgb_memory)
        rgb, _ = images.split_alpha(image)
        rg = guidance.RestorationGuidance(vae, rgb, config)
        if config.scale == 0:
            return io.NodeOutput(model.clone())
        rg.prepare()
        return io.NodeOutput(rg.patch(model))


class DiffBIRGuidanceScales(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRGuidanceScales",
            **menu.search("guidance", "sweep", "compare", "xy plot"),
            display_name="DiffBIR Guidance Scales (sweep)",
            category=menu.GUIDANCE,
            description=(
                "A list of guidance scales for a side-by-side comparison: connect 'scale' to DiffBIR Restoration "
                "Guidance's scale input; everything after it (sampler, VAE Decode) then runs once per scale with the "
                "same seed, and DiffBIR Image Grid lays the results out with these labels. Pick the scale by eye: "
                "higher follows the stage-1 image more, lower generates more detail."),
            inputs=[
                io.String.Input("scales", default="0, 0.05, 0.1, 0.2, 0.5", tooltip=(
                    "Comma- or space-separated guidance scales (>= 0), in the order they appear in the grid.")),
            ],
            outputs=[
                io.Float.Output(display_name="scale", is_output_list=True, tooltip=(
                    "One scale per item: connect to DiffBIR Restoration Guidance's scale.")),
                io.String.Output(display_name="labels", is_output_list=True, tooltip=(
                    "One label per scale ('scale 0.1'): connect to DiffBIR Image Grid's labels.")),
            ],
        )

    @classmethod
    def execute(cls, scales) -> io.NodeOutput:
        values = sweep_grid.parse_scales(scales)
        return io.NodeOutput(values, [sweep_grid.scale_label(v) for v in values])


class DiffBIRImageGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRImageGrid",
            **menu.search("grid", "side by side", "compare", "before after", "montage"),
            display_name="DiffBIR Image Grid",
            category=menu.OUTPUT,
            description=(
                "Lays out a list (or batch) of images side by side in one labelled grid image, e.g. the same "
                "restoration at several guidance scales from DiffBIR Guidance Scales. Images of other sizes are "
                "resized to the first one's size."),
            is_input_list=True,
            inputs=[
                io.Image.Input("images", tooltip="The images (a list from a sweep, or one batch)."),
                io.String.Input("labels", optional=True, force_input=True, tooltip=(
                    "One label per image, drawn above it (e.g. DiffBIR Guidance Scales' labels).")),
                io.Int.Input("columns", default=0, min=0, max=64, tooltip=(
                    "Images per row; 0 = all in one row (up to 8, then wraps).")),
            ],
            outputs=[io.Image.Output(tooltip="One image: the grid with a label strip above each cell.")],
        )

    @classmethod
    def execute(cls, images, labels=None, columns=None) -> io.NodeOutput:
        for batch in images:
            guards.require_finite("DiffBIR Image Grid", "images", batch)
        frames = [frame for batch in images for frame in batch]
        columns = int(columns[0]) if columns else 0
        return io.NodeOutput(sweep_grid.make_grid(frames, list(labels or []), columns))
