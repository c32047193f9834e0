"""Face parsing for the paste-back mask: ParseNet (PSFRGAN's parsing network, as facexlib ships it in
``parsing_parsenet.pth``) and the mask DiffBIR's helper makes from it.

The module names follow facexlib's ``ParseNet(in_size=512, out_size=512, parsing_ch=19)`` so the
published file loads as it is. The mask: the 19-class argmax of the restored face at 512x512,
classes 1-13 and 15 (skin, brows, eyes, glasses, ears, earrings, nose, mouth, lips, neck... in
facexlib's CelebAMask-HQ order) count as face, then two 101x101 Gaussian blurs (sigma 11), a 10 px
border set to zero, and /255, exactly as ``paste_faces_to_input_image`` does it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import face_geometry, weights_io

# facexlib/DiffBIR MASK_COLORMAP: 255 for the classes kept in the paste mask, 0 for background (0),
# necklace (14), cloth (16), hair (17) and hat (18).
FACE_CLASSES = (0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255, 0, 0, 0)
PARSE_SIZE = 512


class _ConvLayer(nn.Module):
    """Reflection-padded conv, optional nearest x2 upsampling before or stride 2, optional BN and
    LeakyReLU(0.2); facexlib's ConvLayer names (conv2d, norm.norm)."""

    def __init__(self, cin, cout, scale="none", norm=False, act=False):
        super().__init__()
        self.scale = scale
        self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=not norm)
        self.norm = nn.Module()
        self.norm.norm = nn.BatchNorm2d(cout) if norm else None
        self.act = act

    def forward(self, x):
        if self.scale == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.norm.norm is not None:
            x = self.norm.norm(x)
        return F.leaky_relu(x, 0.2) if self.act else x


class _ResidualBlock(nn.Module):
    def __init__(self, cin, cout, scale="none"):
        super().__init__()
        self.shortcut_func = None
        if scale != "none" or cin != cout:
            self.shortcut_func = _ConvLayer(cin, cout, scale)
        first, second = {"down": ("none", "down"), "up": ("up", "none"), "none": ("none", "none")}[scale]
        self.conv1 = _ConvLayer(cin, cout, first, norm=True, act=True)
        self.conv2 = _ConvLayer(cout, cout, second, norm=True)

    def forward(self, x):
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """facexlib ParseNet(in_size=512, out_size=512, parsing_ch=19): returns (19-class logits, image)."""

    def __init__(self, base_ch=64, parsing_ch=19, res_depth=10, down_steps=4, ch_range=(32, 256)):
        super().__init__()

        def clip(c):
            return max(ch_range[0], min(c, ch_range[1]))

        encoder = [_ConvLayer(3, base_ch)]
        head = base_ch
        for _ in range(down_steps):
            encoder.append(_ResidualBlock(clip(head), clip(head * 2), "down"))
            head *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*[_ResidualBlock(clip(head), clip(head)) for _ in range(res_depth)])
        decoder = []
        for _ in range(down_steps):
            decoder.append(_ResidualBlock(clip(head), clip(head // 2), "up"))
            head //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = _ConvLayer(clip(head), 3)
        self.out_mask_conv = _ConvLayer(clip(head), parsing_ch)

    def forward(self, x):
        features = self.encoder(x)
        x = self.decoder(features + self.body(features))
        return self.out_mask_conv(x), self.out_img_conv(x)


def build_parsenet(state_dict: dict, source: str = "the weights") -> ParseNet:
    state_dict = weights_io.strip_prefix(state_dict)
    other = weights_io.wrong_kind(source, state_dict, "parsenet", "a ParseNet face parser (parsing_parsenet.pth)")
    if "out_mask_conv.conv2d.weight" not in state_dict and other:
        raise other
    if "out_mask_conv.conv2d.weight" not in state_dict:
        raise ValueError(f"{source} is not a ParseNet file (expected facexlib's parsing_parsenet.pth layout with "
                         "out_mask_conv.conv2d.weight)")
    return weights_io.load_strict(ParseNet, state_dict, "ParseNet", source)


@torch.no_grad()
def parse_labels(net: ParseNet, faces: torch.Tensor, swap_channels: bool = False) -> torch.Tensor:
    """Class map [N,512,512] (int64) of restored faces NCHW RGB in [0,1] (resized to 512 bilinearly).
    ``swap_channels``: feed BGR, as DiffBIR does (it hands facexlib an RGB array that facexlib
    converts as if it were BGR)."""
    x = face_geometry.resize_linear(faces, (PARSE_SIZE, PARSE_SIZE))
    if swap_channels:
        x = x.flip(1)
    param = next(net.parameters())
    x = ((x - 0.5) / 0.5).to(device=param.device, dtype=param.dtype)
    logits = net(x)[0]
    return logits.argmax(dim=1).cpu()


def parse_mask_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """The official soft face mask [N,1,512,512] in [0,1] (float64) from a class map [N,512,512]."""
    lut = torch.tensor(FACE_CLASSES, dtype=torch.float64)
    mask = lut[labels.clamp(0, len(FACE_CLASSES) - 1)][:, None]
    mask = face_geometry.gaussian_blur(mask, 101, 11)
    mask = face_geometry.gaussian_blur(mask, 101, 11)
    border = 10
    mask[..., :border, :] = 0
    mask[..., -border:, :] = 0
    mask[..., :, :border] = 0
    mask[..., :, -border:] = 0
    return mask / 255.0
