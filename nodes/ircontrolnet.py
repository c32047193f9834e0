"""DiffBIR stage 2 nodes: load an IRControlNet and condition a stock SD 2.1 sampler on a stage-1 image."""

import folder_paths
import torch
from comfy_api.latest import io

from ..diffbir_modules import guards, host_memory, images
from ..diffbir_modules import ircontrolnet as irc
from . import menu

IRControlNetType = io.Custom("DIFFBIR_IRCONTROLNET")

NODE_NAME = "DiffBIR Apply IRControlNet"
VERSION_OPTIONS = ["auto", *irc.VERSIONS]
PADDING_OPTIONS = list(irc.PADDINGS)


class DiffBIRIRControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRIRControlNetLoader",
            **menu.search("controlnet", "load controlnet", "ircontrolnet"),
            display_name="DiffBIR Load IRControlNet",
            category=menu.CONTROL,
            description=(
                "Loads a DiffBIR IRControlNet (v1_general.pth, v1_face.pth, v2.pth, DiffBIR_v2.1.pt, or a safetensors "
                "copy) from models/diffbir. The network size is read from the weights; weights are stored in the "
                "dtype ComfyUI picks for this device. It conditions SD 2.1 on the stage-1 image: without it, "
                "sampling is plain SD and ignores the image."),
            inputs=[
                io.Combo.Input("ircontrolnet_name", options=folder_paths.get_filename_list("diffbir"), tooltip=(
                    "IRControlNet file in models/diffbir. Any published wrapper works (flat, 'state_dict', "
                    "'module.' prefix, the old v1 full .ckpt); pickles carrying code are refused.")),
                io.Combo.Input("version", options=VERSION_OPTIONS, default="auto", tooltip=(
                    "Which DiffBIR release the file is. auto: recognised by a content hash of the weights, but the "
                    "three releases share one architecture and the hash table ships empty, so pick it yourself "
                    "unless the log says the file is known (a file known to be another release, such as a v1 "
                    "full checkpoint, is refused under a different version). v2.1 expects the zero-terminal-SNR "
                    "v-prediction SD 2.1; v1/v2 the plain eps SD 2.1 base.")),
            ],
            outputs=[IRControlNetType.Output(display_name="IRCONTROLNET", tooltip=(
                "The loaded IRControlNet; connect it to 'DiffBIR Apply IRControlNet'."))],
        )

    @classmethod
    def execute(cls, ircontrolnet_name, version="auto") -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("diffbir", ircontrolnet_name)
        return io.NodeOutput(irc.load_ircontrolnet(path, version=version))


class DiffBIRApplyIRControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRApplyIRControlNet",
            **menu.search("controlnet", "ircontrolnet", restore=True),
            display_name="DiffBIR Apply IRControlNet",
            category=menu.CONTROL,
            description=(
                "DiffBIR stage 2: encodes the stage-1 (cleaned) image with the VAE (posterior mode x 0.18215, padded "
                "as the official code does) and attaches the IRControlNet to the positive and negative conditioning "
                "for any stock sampler (KSampler, KSamplerAdvanced, SamplerCustomAdvanced). Also outputs the LATENT "
                "to sample from, sized from the image. Decode the result, then 'DiffBIR Crop to Stage-1 Size' removes "
                "the padding."),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive prompt conditioning (SD 2.1 text encoder)."),
                io.Conditioning.Input("negative", tooltip=(
                    "Negative prompt conditioning. It gets the same image condition, as in the official code.")),
                IRControlNetType.Input("ircontrolnet", tooltip="From 'DiffBIR Load IRControlNet'."),
                io.Vae.Input("vae", tooltip=(
                    "The SD 2.1 VAE (from the checkpoint loader) that encodes the stage-1 image.")),
                io.Image.Input("image", tooltip=(
                    "The stage-1 output (degradation removed, already at the final size, >= 512 px on each side in "
                    "the official pipeline). A batch gives one condition per latent.")),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01, tooltip=(
                    "Multiplies every control residual (official --strength / control_scales). Lower follows the "
                    "stage-1 image less and lets SD invent more (realness); 1 is the official default.")),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, tooltip=(
                    "Sampling progress at which the control starts (0 = from the first step, official).")),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, tooltip=(
                    "Sampling progress at which the control stops (1 = to the last step, official). Stopping early "
                    "leaves the final details to SD alone.")),
                io.Combo.Input("start_point", options=["noise", "cond"], default="noise", tooltip=(
                    "The LATENT output. noise: an empty latent (pure noise start, official default). cond: the "
                    "condition latent, so the sampler starts from the noised stage-1 image (official "
                    "--start_point_type cond; slightly more faithful to the stage-1 colours and layout; "
                    "meaningless for v2.1's zero-terminal-SNR schedule, where the first step is pure noise).")),
                io.Combo.Input("padding", options=PADDING_OPTIONS, default="64", tooltip=(
                    "Zero padding before encoding, as the official code does. 64: image to a multiple of 64 "
                    "(official untiled v2/v2.1). 8+latent8: image to a multiple of 8, latent to a multiple of 8 "
                    "(official with the tiled VAE encoder). 8: image to a multiple of 8 only (official with tiled "
                    "diffusion). The padding is sampled with the image and cropped after decoding.")),
                io.Int.Input("vae_tile_size", default=0, min=0, max=8192, step=64, optional=True, tooltip=(
                    "Encoding the stage-1 image: 0 = whole when it fits in memory, else in exact tiles (whole-image "
                    "GroupNorm statistics: the same latent; on a CPU in fp32 also an image of 1024 px or more, as "
                    "fast there with 0.6x the memory); a multiple of 64 forces tiles of that size in pixels (less "
                    "memory, same result).")),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the IRControlNet."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the IRControlNet."),
                io.Latent.Output(display_name="latent", tooltip=(
                    "The latent to sample from, sized from the (padded) stage-1 image: connect it to the sampler's "
                    "latent_image. A latent of another size makes the sampler stop with an error.")),
            ],
        )

    @classmethod
    def validate_inputs(cls, start_percent=0.0, end_percent=1.0):
        # Declaring these two here turns off ComfyUI's own min/max check for them: done below.
        return (guards.require_range("start_percent", start_percent, 0.0, 1.0)
                or guards.require_range("end_percent", end_percent, 0.0, 1.0)
                or guards.require_order(NODE_NAME, "start_percent", start_percent, "end_percent", end_percent)
                or True)

    @classmethod
    def execute(cls, positive, negative, ircontrolnet, vae, image, strength=1.0, start_percent=0.0, end_percent=1.0,
                start_point="noise", padding="64", vae_tile_size=0) -> io.NodeOutput:
        if start_point not in ("noise", "cond"):
            raise ValueError(f"unknown start_point {start_point!r}; choose noise or cond")
        guards.require_finite_settings(NODE_NAME, strength=strength, start_percent=start_percent,
                                       end_percent=end_percent)
        guards.require_finite(NODE_NAME, "image", image)
        order = guards.require_order(NODE_NAME, "start_percent", start_percent, "end_percent", end_percent)
        if order:  # linked values are not seen at validation time
            raise guards.InputError(order)
        rgb, _ = images.split_alpha(image)
        height, width = rgb.shape[-2:]
        condition, raw = irc.encode_condition(vae, rgb, padding, tile_size=vae_tile_size)
        host_memory.release()  # the encoder's freed activations
        samples = raw.clone() if start_point == "cond" else torch.zeros_like(raw)
        latent = {"samples": samples}
        if strength == 0:
            return io.NodeOutput(positive, negative, latent)
        template = ircontrolnet.copy().set_condition(condition, strength, (start_percent, end_percent),
                                                     stage1_size=(height, width), padding=padding)
        controls = {}
        out = []
        for conditioning in (positive, negative):
            entries = []
            for t, d in conditioning:
                d = d.copy()
                previous = d.get("control", None)
                if previous not in controls:
                    control = template.copy()
                    control.set_previous_controlnet(previous)
                    controls[previous] = control
                d["control"] = controls[previous]
                d["control_apply_to_uncond"] = False
                entries.append([t, d])
            out.append(entries)
        return io.NodeOutput(out[0], out[1], latent)


class DiffBIRCropToStage1(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRCropToStage1",
            **menu.search("crop", "remove padding", "output size"),
            display_name="DiffBIR Crop to Stage-1 Size",
            category=menu.OUTPUT,
            description=(
                "Removes the zero padding 'DiffBIR Apply IRControlNet' added before sampling: crops the decoded image "
                "(top-left) to the stage-1 image's size, as the official code does after decoding. Put it right "
                "after VAE Decode, before the colour fix. Passes the image through when there is no padding."),
            inputs=[
                io.Image.Input("image", tooltip="The decoded stage-2 image (VAE Decode output)."),
                io.Image.Input("stage1", tooltip="The stage-1 image given to 'DiffBIR Apply IRControlNet'."),
            ],
            outputs=[io.Image.Output(tooltip="The restored image at the stage-1 image's size.")],
        )

    @classmethod
    def execute(cls, image, stage1) -> io.NodeOutput:
        guards.require_finite("DiffBIR Crop to Stage-1 Size", "image", image)
        height, width = stage1.shape[1:3]
        if image.shape[1] < height or image.shape[2] < width:
            raise ValueError(
                f"the image ({image.shape[2]}x{image.shape[1]}) is smaller than the stage-1 image ({width}x{height}): "
                "connect the decoded output of the sampler that used this stage-1 image")
        if image.shape[1] - height >= 64 or image.shape[2] - width >= 64:
            raise ValueError(
                f"the image ({image.shape[2]}x{image.shape[1]}) is more than the padding larger than the stage-1 image "
                f"({width}x{height}); padding adds at most 63 px, so these do not belong together")
        return io.NodeOutput(image[:, :height, :width, :].contiguous())
