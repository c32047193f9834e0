"""RetinaFace (ResNet-50 and MobileNet-0.25) with facexlib's module names, so the published
``detection_Resnet50_Final.pth`` / ``detection_mobilenet0.25_Final.pth`` load as they are; detection
as facexlib's ``detect_faces`` with its defaults (confidence 0.8, NMS 0.4, the image at its own size)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights_io
from .nms import nms


# -- RetinaFace networks (facexlib / biubug6 Pytorch_Retinaface layout) --------------------------
def _conv_bn(cin, cout, stride=1, leaky=0.0, kernel=3, relu=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.LeakyReLU(leaky))
    return nn.Sequential(*layers)


def _conv_dw(cin, cout, stride, leaky=0.1):
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.LeakyReLU(leaky),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(leaky))


class _MobileNetV1Body(nn.Module):
    """MobileNet-0.25 trunk; returns the stage1/2/3 features (strides 8, 16, 32)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn(3, 8, 2, leaky=0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2),
                                    _conv_dw(32, 32, 1), _conv_dw(32, 64, 2), _conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x):
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class _Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), torchvision's module names."""

    def __init__(self, cin, width, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = None
        if stride != 1 or cin != width * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(width * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class _ResNet50Body(nn.Module):
    """ResNet-50 trunk; returns the layer2/3/4 features (strides 8, 16, 32)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layer = []
            for block in range(blocks):
                layer.append(_Bottleneck(cin, width, stride if block == 0 else 1))
                cin = width * 4
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class _FPN(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out_channels, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out_channels, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out_channels, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = _conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, features):
        o1, o2, o3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class _SSH(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        self.conv3X3 = _conv_bn(cin, cout // 2, relu=False)
        self.conv5X5_1 = _conv_bn(cin, cout // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(cout // 4, cout // 4, relu=False)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(cout // 4, cout // 4, relu=False)

    def forward(self, x):
        branch5_1 = self.conv5X5_1(x)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(branch5_1),
                         self.conv7x7_3(self.conv7X7_2(branch5_1))], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    def __init__(self, cin, outputs_per_anchor, anchors=2):
        super().__init__()
        self.values = outputs_per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * outputs_per_anchor, 1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


RETINAFACE_CONFIGS = {
    "resnet50": dict(in_channel=256, out_channel=256),
    "mobilenet0.25": dict(in_channel=32, out_channel=64),
}
RETINAFACE_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
RETINAFACE_STEPS = (8, 16, 32)
RETINAFACE_VARIANCES = (0.1, 0.2)
RETINAFACE_MEAN_BGR = (104.0, 117.0, 123.0)


class RetinaFace(nn.Module):
    """RetinaFace network; forward gives (box deltas [B,A,4], class scores (softmax) [B,A,2], landmark
    deltas [B,A,10]) for the anchors of ``prior_boxes``. Input: BGR 0..255 minus RETINAFACE_MEAN_BGR."""

    def __init__(self, backbone: str = "resnet50"):
        super().__init__()
        config = RETINAFACE_CONFIGS[backbone]
        self.backbone = backbone
        self.body = _ResNet50Body() if backbone == "resnet50" else _MobileNetV1Body()
        c = config["in_channel"]
        out = config["out_channel"]
        self.fpn = _FPN([c * 2, c * 4, c * 8], out)
        self.ssh1, self.ssh2, self.ssh3 = _SSH(out, out), _SSH(out, out), _SSH(out, out)
        self.ClassHead = nn.ModuleList([_Head(out, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out, 10) for _ in range(3)])

    def forward(self, x):
        fpn = self.fpn(self.body(x))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        scores = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return boxes, F.softmax(scores, dim=-1), landmarks


def prior_boxes(height: int, width: int, dtype=torch.float32) -> torch.Tensor:
    """RetinaFace anchors [A, 4] (cx, cy, w, h) relative to the image size, in the heads' order."""
    priors = []
    for step, sizes in zip(RETINAFACE_STEPS, RETINAFACE_MIN_SIZES):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = ((torch.arange(rows, dtype=torch.float64) + 0.5) * step / height)[:, None, None].expand(rows, cols,
                                                                                                     len(sizes))
        cx = ((torch.arange(cols, dtype=torch.float64) + 0.5) * step / width)[None, :, None].expand(rows, cols,
                                                                                                    len(sizes))
        sw = torch.tensor([s / width for s in sizes], dtype=torch.float64).expand(rows, cols, len(sizes))
        sh = torch.tensor([s / height for s in sizes], dtype=torch.float64).expand(rows, cols, len(sizes))
        priors.append(torch.stack([cx, cy, sw, sh], dim=-1).reshape(-1, 4))
    return torch.cat(priors).to(dtype)


def retinaface_detect(net: RetinaFace, image_bgr: torch.Tensor, conf_threshold: float = 0.8,
                      nms_threshold: float = 0.4):
    """facexlib ``RetinaFace.detect_faces`` (use_origin_size=True) for one image [1,3,H,W], 0..255,
    channels in the order the network gets them (BGR as trained). Returns (boxes [N,5], landmarks
    [N,5,2]) on the CPU, float32, best first."""
    height, width = image_bgr.shape[-2:]
    param = next(net.parameters())
    x = image_bgr.to(device=param.device, dtype=param.dtype)
    x = x - torch.tensor(RETINAFACE_MEAN_BGR, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    loc, conf, landm = net(x)
    loc, conf, landm = loc[0].float().cpu(), conf[0].float().cpu(), landm[0].float().cpu()
    priors = prior_boxes(height, width)
    v0, v1 = RETINAFACE_VARIANCES
    centres = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(loc[:, 2:] * v1)
    corners = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    boxes = corners * torch.tensor([width, height, width, height], dtype=torch.float32)
    points = priors[:, None, :2] + landm.view(-1, 5, 2) * v0 * priors[:, None, 2:]
    points = points * torch.tensor([width, height], dtype=torch.float32)
    scores = conf[:, 1]
    keep = scores > conf_threshold
    boxes, points, scores = boxes[keep], points[keep], scores[keep]
    order = nms(boxes, scores, nms_threshold)
    return torch.cat([boxes[order], scores[order, None]], dim=1), points[order]


# -- MTCNN networks (facenet-pytorch layout) -----------------------------------------------------


def retinaface_backbone_of(state_dict: dict) -> str | None:
    keys = weights_io.strip_prefix(state_dict)
    if "body.layer1.0.conv1.weight" in keys:
        return "resnet50"
    if "body.stage1.0.0.weight" in keys:
        return "mobilenet0.25"
    return None


def build_retinaface(state_dict: dict, source: str = "the weights") -> RetinaFace:
    state_dict = weights_io.strip_prefix(state_dict)
    backbone = retinaface_backbone_of(state_dict)
    other = weights_io.wrong_kind(source, state_dict, "retinaface", "a RetinaFace face detector")
    if backbone is None and other:
        raise other
    if backbone is None:
        raise ValueError(f"{source} is not a RetinaFace file (expected facexlib's detection_Resnet50_Final.pth or "
                         "detection_mobilenet0.25_Final.pth layout: body.layer1.* or body.stage1.* keys)")
    return weights_io.load_strict(lambda: RetinaFace(backbone), state_dict, f"RetinaFace {backbone}", source)
