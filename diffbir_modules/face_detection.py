"""Face detectors that give 5 landmarks, in plain torch (no torchvision ops, no facexlib):

- RetinaFace (ResNet-50 and MobileNet-0.25), the detector DiffBIR's face helper uses. The module
  names follow facexlib's ``RetinaFace`` so the published files ``detection_Resnet50_Final.pth`` and
  ``detection_mobilenet0.25_Final.pth`` load as they are. Detection = facexlib's ``detect_faces``
  with its defaults (confidence 0.8, NMS 0.4, the image at its own size).
- MTCNN (P-, R-, O-Net), whose weights ship inside the ``facenet-pytorch`` package
  (``facenet_pytorch/data/{pnet,rnet,onet}.pt``); the cascade follows facenet-pytorch's
  ``detect_face`` (minimum face 20 px, thresholds 0.6/0.7/0.7, pyramid factor 0.709).

Both return boxes [N, 5] (x0, y0, x1, y1, score) and landmarks [N, 5, 2] (left eye, right eye,
nose, left and right mouth corner; "left" = smaller x in the image) in input pixels, best first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import weights_io


# -- non-maximum suppression --------------------------------------------------------------------
def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, mode: str = "union",
        plus_one: bool = False) -> torch.Tensor:
    """Greedy NMS: indices of the kept boxes, best score first. ``mode`` "union" is IoU (what
    torchvision.ops.nms computes), "min" divides the overlap by the smaller area (MTCNN's last
    stage). ``plus_one``: areas in the old inclusive-pixel convention (w = x1 - x0 + 1)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.to(torch.float64)
    extra = 1.0 if plus_one else 0.0
    x0, y0, x1, y1 = boxes.unbind(1)
    areas = (x1 - x0 + extra) * (y1 - y0 + extra)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while order.numel() > 0:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        if rest.numel() == 0:
            break
        w = (torch.minimum(x1[best], x1[rest]) - torch.maximum(x0[best], x0[rest]) + extra).clamp(min=0)
        h = (torch.minimum(y1[best], y1[rest]) - torch.maximum(y0[best], y0[rest]) + extra).clamp(min=0)
        overlap = w * h
        if mode == "min":
            ratio = overlap / torch.minimum(areas[best], areas[rest])
        else:
            ratio = overlap / (areas[best] + areas[rest] - overlap)
        order = rest[ratio <= iou_threshold]
    return torch.stack(keep)


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
class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))  # the TF weight order
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


class MTCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow boxes to squares around their centres (MTCNN's ``rerec``)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x0 = boxes[:, 0] + w * 0.5 - side * 0.5
    y0 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.cat([torch.stack([x0, y0, x0 + side, y0 + side], dim=1), boxes[:, 4:]], dim=1)


def _regress(boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Box regression in MTCNN's inclusive-pixel convention (``bbreg``)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    scale = torch.stack([w, h, w, h], dim=1)
    return torch.cat([boxes[:, :4] + deltas[:, :4] * scale, boxes[:, 4:]], dim=1)


def _crops(image: torch.Tensor, boxes: torch.Tensor, size: int):
    """Patches of ``boxes`` (clipped to the image, 1-based inclusive as MTCNN's ``pad``) resized to
    size x size by area averaging; returns (patches, indices of boxes that had a patch)."""
    height, width = image.shape[-2:]
    corners = boxes[:, :4].trunc().to(torch.int64)
    x0 = corners[:, 0].clamp(min=1)
    y0 = corners[:, 1].clamp(min=1)
    x1 = corners[:, 2].clamp(max=width)
    y1 = corners[:, 3].clamp(max=height)
    patches, kept = [], []
    for k in range(boxes.shape[0]):
        if y1[k] > y0[k] - 1 and x1[k] > x0[k] - 1:
            patch = image[:, :, int(y0[k]) - 1:int(y1[k]), int(x0[k]) - 1:int(x1[k])]
            patches.append(F.interpolate(patch, size=(size, size), mode="area"))
            kept.append(k)
    if not patches:
        return None, torch.empty(0, dtype=torch.long)
    return torch.cat(patches), torch.tensor(kept, dtype=torch.long)


def _normalise(x):
    return (x - 127.5) * 0.0078125


@torch.no_grad()
def mtcnn_detect(net: MTCNN, image_rgb: torch.Tensor, min_face_size: int = 20,
                 thresholds=(0.6, 0.7, 0.7), factor: float = 0.709):
    """facenet-pytorch's MTCNN cascade for one RGB image [1,3,H,W] in 0..255. Returns (boxes [N,5],
    landmarks [N,5,2]) on the CPU, float32, best first."""
    param = next(net.parameters())
    image = image_rgb.to(device=param.device, dtype=param.dtype)
    height, width = image.shape[-2:]
    empty = torch.zeros(0, 5), torch.zeros(0, 5, 2)
    scale = 12.0 / min_face_size
    smallest = min(height, width) * scale
    scales = []
    while smallest >= 12:
        scales.append(scale)
        scale *= factor
        smallest *= factor

    # stage 1: P-Net over the pyramid
    candidates = []
    for scale in scales:
        data = F.interpolate(image, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
        reg, prob = net.pnet(_normalise(data))
        score = prob[0, 1]
        ys, xs = torch.nonzero(score >= thresholds[0], as_tuple=True)
        if ys.numel() == 0:
            continue
        cells = torch.stack([xs, ys], dim=1).to(param.dtype)
        q1 = torch.floor((2 * cells + 1) / scale)
        q2 = torch.floor((2 * cells + 12) / scale)
        found = torch.cat([q1, q2, score[ys, xs, None], reg[0, :, ys, xs].T], dim=1)
        candidates.append(found[nms(found[:, :4], found[:, 4], 0.5)])
    if not candidates:
        return empty
    boxes = torch.cat(candidates)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    refined = boxes[:, :4] + boxes[:, 5:9] * torch.stack([w, h, w, h], dim=1)
    boxes = _square(torch.cat([refined, boxes[:, 4:5]], dim=1))

    # stage 2: R-Net on 24x24 patches
    patches, kept = _crops(image, boxes, 24)
    if patches is None:
        return empty
    boxes = boxes[kept]
    reg, prob = net.rnet(_normalise(patches))
    passed = prob[:, 1] > thresholds[1]
    boxes = torch.cat([boxes[passed, :4], prob[passed, 1:2]], dim=1)
    reg = reg[passed]
    order = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = _square(_regress(boxes[order], reg[order]))
    if boxes.shape[0] == 0:
        return empty

    # stage 3: O-Net on 48x48 patches, landmarks
    patches, kept = _crops(image, boxes, 48)
    if patches is None:
        return empty
    boxes = boxes[kept]
    reg, marks, prob = net.onet(_normalise(patches))
    passed = prob[:, 1] > thresholds[2]
    boxes = torch.cat([boxes[passed, :4], prob[passed, 1:2]], dim=1)
    reg, marks = reg[passed], marks[passed]
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    points = torch.stack([w * marks[:, :5] + boxes[:, 0:1] - 1, h * marks[:, 5:] + boxes[:, 1:2] - 1], dim=2)
    boxes = _regress(boxes, reg)
    order = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min", plus_one=True)
    return boxes[order].float().cpu(), points[order].float().cpu()


# -- weights ------------------------------------------------------------------------------------
def _strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def retinaface_backbone_of(state_dict: dict) -> str | None:
    keys = _strip_prefix(state_dict)
    if "body.layer1.0.conv1.weight" in keys:
        return "resnet50"
    if "body.stage1.0.0.weight" in keys:
        return "mobilenet0.25"
    return None


def load_strict(module_factory, state_dict: dict, what: str, source: str) -> nn.Module:
    """Builds ``module_factory()`` (on the meta device: no wasted initialisation) and loads a state
    dict that must match it exactly (BatchNorm's num_batches_tracked may be absent); errors name the
    file and what differs. Floating-point weights are kept in float32."""
    with torch.device("meta"):
        module = module_factory()
    own = module.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked") or k in own}
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k}: file {tuple(state_dict[k].shape)}, expected {tuple(own[k].shape)}"
             for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} is not a {what} weight file in the expected layout: "
            f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}, "
            f"{len(wrong)} with other shapes {wrong[:3]}")
    full = {}
    for key, reference in own.items():
        if key in state_dict:
            value = state_dict[key]
            full[key] = value.float() if value.is_floating_point() else value
        else:  # an absent BatchNorm counter
            full[key] = torch.zeros(reference.shape, dtype=reference.dtype)
    module.load_state_dict(full, strict=True, assign=True)
    return module.eval()


def build_retinaface(state_dict: dict, source: str = "the weights") -> RetinaFace:
    state_dict = _strip_prefix(state_dict)
    backbone = retinaface_backbone_of(state_dict)
    other = weights_io.wrong_kind(source, state_dict, "retinaface", "a RetinaFace face detector")
    if backbone is None and other:
        raise other
    if backbone is None:
        raise ValueError(f"{source} is not a RetinaFace file (expected facexlib's detection_Resnet50_Final.pth or "
                         "detection_mobilenet0.25_Final.pth layout: body.layer1.* or body.stage1.* keys)")
    return load_strict(lambda: RetinaFace(backbone), state_dict, f"RetinaFace {backbone}", source)


def build_mtcnn(pnet: dict, rnet: dict, onet: dict, source: str = "the weights") -> MTCNN:
    net = MTCNN()
    net.pnet = load_strict(PNet, pnet, "MTCNN P-Net", f"{source} (pnet)")
    net.rnet = load_strict(RNet, rnet, "MTCNN R-Net", f"{source} (rnet)")
    net.onet = load_strict(ONet, onet, "MTCNN O-Net", f"{source} (onet)")
    return net.eval()
