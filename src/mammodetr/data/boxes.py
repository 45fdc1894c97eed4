"""Box format conversions, the one place they are written. Formats are spelled in the names.

``xyxy``: corners (x1, y1, x2, y2); ``cxcywh``: centre and size; ``xywh``: top-left corner and size (COCO).
The functions work on the last axis of torch tensors of any leading shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_xywh_to_xyxy"]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)
