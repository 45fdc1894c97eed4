"""(Generalised) IoU of boxes. (Format conversions: :mod:`mammodetr.data.boxes`.)"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_area", "box_iou", "generalized_box_iou", "elementwise_generalized_box_iou", "inverse_sigmoid"]


def box_area(boxes_xyxy: Tensor) -> Tensor:
    width = (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]).clamp(min=0)
    height = (boxes_xyxy[..., 3] - boxes_xyxy[..., 1]).clamp(min=0)
    return width * height


def box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union. (N, 4), (M, 4) -> (N, M), (N, M)."""
    area1 = box_area(boxes1_xyxy)
    area2 = box_area(boxes2_xyxy)
    lt = torch.max(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.min(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    # eps keeps degenerate (zero-area) pairs finite instead of 0/0.
    return inter / union.clamp(min=1e-12), union


def generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019). (N, 4), (M, 4) -> (N, M) in [-1, 1]."""
    iou, union = box_iou(boxes1_xyxy, boxes2_xyxy)
    lt = torch.min(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.max(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=1e-12)


def elementwise_generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """GIoU of paired boxes: (..., 4), (..., 4) -> (...), leading shapes broadcast.

    Pairs only, so it avoids the N x N matrix of the pairwise form; broadcasting (L, B, K, 1, 4) against
    (B, 1, T, 4) gives every layer's query-target matrix in one call (the batched matcher does this).
    """
    area1 = box_area(boxes1_xyxy)
    area2 = box_area(boxes2_xyxy)
    lt = torch.max(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    rb = torch.min(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    iou = inter / union.clamp(min=1e-12)
    lt_h = torch.min(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    rb_h = torch.max(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    wh_h = (rb_h - lt_h).clamp(min=0)
    hull = wh_h[..., 0] * wh_h[..., 1]
    return iou - (hull - union) / hull.clamp(min=1e-12)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
