"""The IRControlNet network: a ControlNet without a hint encoder. The VAE latent of the stage-1 output
(posterior mode x 0.18215) is concatenated channel-wise with the noisy latent, so the first conv
takes 8 channels. It returns one residual per UNet input block (through a 1x1 "zero conv") plus one
after the middle block; ComfyUI's UNet adds the former to its skip connections (last input block to
the first output block, as DiffBIR's ``hs.pop() + control.pop()``) and the latter after the middle
block - exactly where DiffBIR adds them.

Layers are ComfyUI's own (openaimodel ResBlock / Downsample / SpatialTransformer, built with
``comfy.ops``) so weights can be stored in fp16/bf16 with manual casting.
"""

from __future__ import annotations

import dataclasses

import comfy.controlnet
import comfy.model_management
import comfy.ops
import comfy.utils
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, TimestepEmbedSequential
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from ..attention import fast_attention_options
from ..convolution import fastest_exact_convolutions
from ..feed_forward import feed_forward_in_pieces

LATENT_SCALE = 0.18215  # SD's latent scale factor: condition = posterior mode x 0.18215
LATENT_CHANNELS = 4


class IRControlNetError(ValueError):
    """A file or input the IRControlNet cannot use; the message says what and what to do."""


@dataclasses.dataclass(frozen=True)
class IRControlNetConfig:
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: tuple = (2, 2, 2, 2)
    transformer_depth: tuple = (1, 1, 1, 1, 1, 1, 0, 0)  # per input res block, in order
    transformer_depth_middle: int = 1
    context_dim: int = 1024
    num_head_channels: int = 64  # SD 2.x; head counts leave no trace in the weights
    use_linear_in_transformer: bool = True
    latent_channels: int = LATENT_CHANNELS
    condition_channels: int = LATENT_CHANNELS

    @property
    def num_residuals(self) -> int:
        """Input blocks + the middle block: 13 for SD 2.x."""
        return len(self.input_block_channels()) + 1

    def input_block_channels(self) -> list[int]:
        chans = [self.model_channels]
        for level, mult in enumerate(self.channel_mult):
            chans += [mult * self.model_channels] * self.num_res_blocks[level]
            if level != len(self.channel_mult) - 1:
                chans.append(mult * self.model_channels)
        return chans

    def describe(self) -> str:
        return (f"model_channels {self.model_channels}, channel_mult {list(self.channel_mult)}, "
                f"num_res_blocks {list(self.num_res_blocks)}, context_dim {self.context_dim}")


class IRControlNet(torch.nn.Module):
    """The IRControlNet network (parameter names = the published files' keys).

    ``forward(x, hint, timesteps, context)`` -> ``{"output": [one residual per input block, in
    input-block order], "middle": [one residual]}``, unscaled (the control object applies strength).
    ``x`` is the noisy latent in the UNet's input space (DDPM x_t), ``hint`` the condition latent
    (already x 0.18215), ``timesteps`` the discrete DDPM timesteps, ``convolution`` one of
    convolution.CPU_CONVOLUTION_CHOICES and ``feed_forward`` one of feed_forward.CPU_FEED_FORWARD_CHOICES
    (DiffBIR Model Sampling's choices, in transformer_options).
    """

    def __init__(self, config: IRControlNetConfig, dtype=None, device=None, operations=comfy.ops.disable_weight_init):
        super().__init__()
        self.config = config
        self.dtype = dtype if dtype is not None else torch.float32
        mc = config.model_channels
        emb_dim = mc * 4
        kw = dict(dtype=dtype, device=device)
        self.time_embed = torch.nn.Sequential(operations.Linear(mc, emb_dim, **kw), torch.nn.SiLU(),
                                              operations.Linear(emb_dim, emb_dim, **kw))
        in_channels = config.latent_channels + config.condition_channels
        self.input_blocks = torch.nn.ModuleList(
            [TimestepEmbedSequential(operations.conv_nd(2, in_channels, mc, 3, padding=1, **kw))])
        self.zero_convs = torch.nn.ModuleList([self._zero_conv(mc, operations, kw)])
        depths = list(config.transformer_depth)
        ch = mc
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks[level]):
                layers = [ResBlock(ch, emb_dim, 0.0, out_channels=mult * mc, dims=2, use_checkpoint=False,
                                   use_scale_shift_norm=False, operations=operations, **kw)]
                ch = mult * mc
                depth = depths.pop(0)
                if depth > 0:
                    layers.append(self._transformer(ch, depth, operations, kw))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.zero_convs.append(self._zero_conv(ch, operations, kw))
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    Downsample(ch, True, dims=2, out_channels=ch, operations=operations, **kw)))
                self.zero_convs.append(self._zero_conv(ch, operations, kw))
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, 0.0, dims=2, use_checkpoint=False, use_scale_shift_norm=False,
                     operations=operations, **kw),
            self._transformer(ch, config.transformer_depth_middle, operations, kw),
            ResBlock(ch, emb_dim, 0.0, dims=2, use_checkpoint=False, use_scale_shift_norm=False,
                     operations=operations, **kw))
        self.middle_block_out = self._zero_conv(ch, operations, kw)

    def _transformer(self, ch, depth, operations, kw):
        heads = ch // self.config.num_head_channels
        return SpatialTransformer(ch, heads, self.config.num_head_channels, depth=depth,
                                  context_dim=self.config.context_dim, use_linear=self.config.use_linear_in_transformer,
                                  use_checkpoint=False, attn_precision=torch.float32, operations=operations, **kw)

    @staticmethod
    def _zero_conv(ch, operations, kw):
        return TimestepEmbedSequential(operations.conv_nd(2, ch, ch, 1, padding=0, **kw))

    def forward(self, x, hint, timesteps, context, convolution: str = "fastest_exact", feed_forward: str = "in_pieces"):
        t_emb = timestep_embedding(timesteps, self.config.model_channels, repeat_only=False).to(x.dtype)
        emb = self.time_embed(t_emb)
        h = torch.cat([x, hint.to(x.dtype)], dim=1)
        options = fast_attention_options()
        outputs = []
        with fastest_exact_convolutions(h, convolution), feed_forward_in_pieces(self, h, feed_forward):
            for block, zero_conv in zip(self.input_blocks, self.zero_convs):
                h = block(h, emb, context, transformer_options=options)
                outputs.append(zero_conv(h, emb, context))
            h = self.middle_block(h, emb, context, transformer_options=options)
            return {"output": outputs, "middle": [self.middle_block_out(h, emb, context)]}


def config_from_state_dict(sd: dict, source: str = "state dict") -> IRControlNetConfig:
    """The network size of an IRControlNet state dict (published key layout, no prefix)."""
    first = sd["input_blocks.0.0.weight"]
    mc, in_channels = int(first.shape[0]), int(first.shape[1])
    if in_channels != 2 * LATENT_CHANNELS:
        raise IRControlNetError(
            f"{source}: the first conv takes {in_channels} channels; an IRControlNet takes 8 (4 noisy-latent + 4 "
            "condition-latent channels). This is not a DiffBIR IRControlNet for SD 2.x.")
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
    channel_mult, num_res_blocks, depths = [], [0], []
    context_dim, use_linear = None, True
    for i in range(1, n_blocks):
        p = f"input_blocks.{i}."
        if p + "0.op.weight" in sd:  # downsample: next level
            num_res_blocks.append(0)
            continue
        if p + "0.out_layers.3.weight" not in sd:
            raise IRControlNetError(f"{source}: input block {i} is neither a ResBlock nor a downsample conv; "
                                    "unknown IRControlNet layout")
        out_ch = int(sd[p + "0.out_layers.3.weight"].shape[0])
        level = len(num_res_blocks) - 1
        if len(channel_mult) == level:
            channel_mult.append(out_ch // mc)
        num_res_blocks[-1] += 1
        depth = 0
        while f"{p}1.transformer_blocks.{depth}.attn2.to_k.weight" in sd:
            context_dim = int(sd[f"{p}1.transformer_blocks.{depth}.attn2.to_k.weight"].shape[1])
            depth += 1
        if depth:
            use_linear = sd[p + "1.proj_in.weight"].ndim == 2
        depths.append(depth)
    middle_depth = 0
    while f"middle_block.1.transformer_blocks.{middle_depth}.attn2.to_k.weight" in sd:
        context_dim = int(sd[f"middle_block.1.transformer_blocks.{middle_depth}.attn2.to_k.weight"].shape[1])
        middle_depth += 1
    if not channel_mult or middle_depth == 0 or context_dim is None or len(channel_mult) != len(num_res_blocks):
        raise IRControlNetError(f"{source}: cannot read the network size (no middle transformer or no res blocks); "
                                "unknown IRControlNet layout")
    return IRControlNetConfig(model_channels=mc, channel_mult=tuple(channel_mult), num_res_blocks=tuple(num_res_blocks),
                              transformer_depth=tuple(depths), transformer_depth_middle=middle_depth,
                              context_dim=context_dim, use_linear_in_transformer=use_linear)
