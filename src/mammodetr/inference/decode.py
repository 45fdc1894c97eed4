"""The one decoder of model outputs: malignancy probability and K scored boxes in the pixels of any image whose
recorded transform into the model input is known.

Every consumer (the trainer's validation, ``evaluate``, ``predict``, Grad-CAM, export and the viewer) calls
:func:`decode`. A box leaves the model as normalised ``(cx, cy, w, h)`` of the ``S x S`` input; ``decode``
scales it to input pixels and maps it back through the inverse of the image's transform. For a prepared dataset
image that transform is the model-input resize/letterbox alone; for a raw file it is the preparation (breast
crop, side flip, size cap) followed by the resize/letterbox, so the boxes land in the file's own pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mammodetr.data.boxes import box_cxcywh_to_xyxy
from mammodetr.data.geometry import ImageTransform, clip_boxes_xyxy

from .predictions import Prediction

__all__ = ["malignancy_probability", "decode", "decode_arrays"]


def malignancy_probability(image_logits: Tensor) -> Tensor:
    """(B, C) -> (B,): softmax probability of class 1, or the sigmoid of a single logit."""
    logits = image_logits.float()
    if logits.shape[1] == 1:
        return logits[:, 0].sigmoid()
    return logits.softmax(-1)[:, 1]


def decode(outputs: dict, transforms: Sequence[ImageTransform], names: Sequence[str]) -> list[Prediction]:
    """Model outputs of a batch -> one :class:`Prediction` per image, boxes sorted by score (highest first).

    Args:
        outputs: ``image_logits`` (B, C), ``pred_boxes`` (B, K, 4) normalised cxcywh, ``pred_obj_logits`` (B, K).
        transforms: per image, the transform from the target image (where the boxes should end up) to the
            ``S x S`` model input; its ``output_size_hw`` is (S, S).
        names: per image, the ``file_name`` of the prediction.

    Returns:
        B predictions with ``boxes_xyxy_px`` in the target images' pixels, clipped to them.
    """
    p = malignancy_probability(outputs["image_logits"].detach()).cpu().numpy()
    scores = outputs["pred_obj_logits"].detach().float().sigmoid().cpu().numpy().astype(np.float64)
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"].detach().to(torch.float64).cpu()).numpy()
    return decode_arrays(p, boxes, scores, transforms, names)


def decode_arrays(p_malignant: np.ndarray, boxes_xyxy_unit: np.ndarray, scores: np.ndarray,
                  transforms: Sequence[ImageTransform], names: Sequence[str]) -> list[Prediction]:
    """:func:`decode` on numpy arrays: (B,) probabilities, (B, K, 4) normalised xyxy boxes, (B, K) scores."""
    preds = []
    for i, (t, name) in enumerate(zip(transforms, names, strict=True)):
        order = np.argsort(-scores[i], kind="mergesort")
        in_h, in_w = t.output_size_hw
        model_px = boxes_xyxy_unit[i][order] * np.array([in_w, in_h, in_w, in_h], dtype=np.float64)
        b = t.invert_boxes_xyxy(clip_boxes_xyxy(model_px, t.output_size_hw), clip=True)
        preds.append(Prediction(str(name), float(p_malignant[i]), b, scores[i][order].astype(np.float64)))
    return preds
