"""Greedy non-maximum suppression in plain torch (no torchvision ops)."""

from __future__ import annotations

import torch


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
