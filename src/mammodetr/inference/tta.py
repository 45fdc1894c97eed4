"""Horizontal-flip test-time augmentation: the model sees the image and its mirror, and the two answers become one.

The mirror is made on the model input; its boxes are mapped back by ``cx -> 1 - cx`` in the normalised
``(cx, cy, w, h)`` of the input, before :func:`~mammodetr.inference.decode.decode`, so the one decoder and the
one input transform stay the only ones. Merged outputs keep the model's output contract:

- image: the two malignancy probabilities (class probabilities) are averaged; the logits handed on are those
  of the averaged probabilities (``log p`` for a softmax head, ``logit p`` for a single sigmoid logit);
- boxes: the K boxes of each pass are paired greedily by IoU (highest first, at least ``iou``); a pair becomes
  one box, the score-weighted mean of its corners, scoring the mean of the two scores (weighted box fusion); a
  box that only one pass found keeps its place with half its score (the other pass gave it none). The K
  best-scoring boxes are kept, so downstream code sees the same K as without TTA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mammodetr.data.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from mammodetr.models.box_ops import box_iou

__all__ = ["hflip_boxes_cxcywh", "merge_hflip", "DEFAULT_TTA_IOU"]

DEFAULT_TTA_IOU = 0.55  # weighted box fusion's customary pairing threshold


def hflip_boxes_cxcywh(boxes: Tensor) -> Tensor:
    """Normalised (cx, cy, w, h) boxes of a mirrored image -> the same boxes on the original image."""
    out = boxes.clone()
    out[..., 0] = 1.0 - boxes[..., 0]
    return out


def _merged_image_logits(a: Tensor, b: Tensor) -> Tensor:
    a, b = a.float(), b.float()
    if a.shape[1] == 1:
        p = 0.5 * (a.sigmoid() + b.sigmoid())
        return torch.logit(p, eps=1e-7)
    p = 0.5 * (a.softmax(-1) + b.softmax(-1))
    return p.clamp_min(1e-12).log()


def _pairs(iou: Tensor, threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (i, j) of a (K, K) IoU matrix, highest IoU first, IoU >= threshold."""
    iou = iou.clone()
    pairs = []
    for _ in range(min(iou.shape)):
        flat = int(torch.argmax(iou))
        i, j = divmod(flat, iou.shape[1])
        if iou[i, j] < threshold:
            break
        pairs.append((i, j))
        iou[i, :] = -1.0
        iou[:, j] = -1.0
    return pairs


def _fuse_one(boxes_a: Tensor, scores_a: Tensor, boxes_b: Tensor, scores_b: Tensor, iou: float
              ) -> tuple[Tensor, Tensor]:
    """One image: (K, 4) xyxy boxes and (K,) probabilities of each pass -> K fused boxes and scores."""
    pairs = _pairs(box_iou(boxes_a, boxes_b)[0], iou)
    used_a, used_b = {i for i, _ in pairs}, {j for _, j in pairs}
    boxes, scores = [], []
    for i, j in pairs:
        w = torch.stack([scores_a[i], scores_b[j]]).clamp_min(1e-12)
        boxes.append((w[0] * boxes_a[i] + w[1] * boxes_b[j]) / w.sum())
        scores.append(0.5 * (scores_a[i] + scores_b[j]))
    for boxes_x, scores_x, used in ((boxes_a, scores_a, used_a), (boxes_b, scores_b, used_b)):
        for k in range(len(boxes_x)):
            if k not in used:
                boxes.append(boxes_x[k])
                scores.append(0.5 * scores_x[k])
    scores_t, boxes_t = torch.stack(scores), torch.stack(boxes)
    keep = torch.argsort(scores_t, descending=True, stable=True)[: len(boxes_a)]
    return boxes_t[keep], scores_t[keep]


def merge_hflip(outputs: dict, flipped: dict, iou: float = DEFAULT_TTA_IOU) -> dict:
    """Merge the outputs for a batch and for its mirror (``flipped``: the model's raw outputs on ``x.flip(-1)``).

    Args:
        outputs, flipped: ``image_logits`` (B, C), ``pred_boxes`` (B, K, 4) normalised cxcywh,
            ``pred_obj_logits`` (B, K).
        iou: IoU at which two boxes are taken for the same finding.

    Returns:
        The same keys and shapes (float32), and ``aux_outputs`` empty (the merge is of final predictions).
    """
    boxes_a = box_cxcywh_to_xyxy(outputs["pred_boxes"].detach().float())
    boxes_b = box_cxcywh_to_xyxy(hflip_boxes_cxcywh(flipped["pred_boxes"].detach().float()))
    scores_a = outputs["pred_obj_logits"].detach().float().sigmoid()
    scores_b = flipped["pred_obj_logits"].detach().float().sigmoid()
    fused = [_fuse_one(boxes_a[n], scores_a[n], boxes_b[n], scores_b[n], iou) for n in range(len(boxes_a))]
    boxes = torch.stack([f[0] for f in fused]).clamp(0.0, 1.0)
    scores = torch.stack([f[1] for f in fused])
    return {
        "image_logits": _merged_image_logits(outputs["image_logits"].detach(), flipped["image_logits"].detach()),
        "pred_boxes": box_xyxy_to_cxcywh(boxes),
        "pred_obj_logits": torch.logit(scores, eps=1e-7),
        "aux_outputs": [],
    }
