"""MTCNN (P-, R-, O-Net) in facenet-pytorch's layout (its ``facenet_pytorch/data/{pnet,rnet,onet}.pt``);
the cascade follows facenet-pytorch's ``detect_face`` (minimum face 20 px, thresholds 0.6/0.7/0.7,
pyramid factor 0.709)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights_io
from .nms import nms


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


def build_mtcnn(pnet: dict, rnet: dict, onet: dict, source: str = "the weights") -> MTCNN:
    net = MTCNN()
    net.pnet = weights_io.load_strict(PNet, pnet, "MTCNN P-Net", f"{source} (pnet)")
    net.rnet = weights_io.load_strict(RNet, rnet, "MTCNN R-Net", f"{source} (rnet)")
    net.onet = weights_io.load_strict(ONet, onet, "MTCNN O-Net", f"{source} (onet)")
    return net.eval()
