"""Model outputs -> per-image malignancy probability and K scored boxes in pixels."""

from __future__ import annotations

import torch
from torch import Tensor

from mammodetr.models.box_ops import box_cxcywh_to_xyxy


def malignancy_probability(image_logits: Tensor) -> Tensor:
    """(B, C) -> (B,): softmax probability of class 1, or sigmoid of a single logit."""
    logits = image_logits.float()
    if logits.shape[1] == 1:
        return logits[:, 0].sigmoid()
    return logits.softmax(-1)[:, 1]


@torch.no_grad()
def postprocess(outputs: dict, image_sizes_hw: Tensor) -> list[dict]:
    """
    Args:
        outputs: model outputs (``image_logits``, ``pred_boxes`` normalised cxcywh, ``pred_obj_logits``).
        image_sizes_hw: (B, 2) the (H, W) of the image each box should be expressed in.

    Returns:
        B dicts: ``p_malignant`` (0-d tensor), ``boxes_xyxy_px`` (K, 4) clipped to the image, ``scores``
        (K,) objectness probabilities; sorted by score, highest first.
    """
    p = malignancy_probability(outputs["image_logits"])
    scores = outputs["pred_obj_logits"].float().sigmoid()
    sizes = torch.as_tensor(image_sizes_hw, dtype=torch.float32, device=scores.device)
    scale = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], -1)[:, None, :]
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"].float()).clamp(0, 1) * scale
    results = []
    for i in range(len(p)):
        order = scores[i].argsort(descending=True)
        results.append({"p_malignant": p[i], "boxes_xyxy_px": boxes[i, order], "scores": scores[i, order]})
    return results
