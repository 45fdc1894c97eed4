"""A test-only stand-in for the multi-task model: follows the output contract, returns boxes it is given."""

from __future__ import annotations

import torch
from torch import nn


class ScriptedModel(nn.Module):
    """Returns, call after call, the queued normalised cxcywh boxes (one (K, 4) tensor per image).

    Objectness: queued boxes flagged ``real`` get logit +2 (p 0.88), the others -2; the malignancy logit is
    the image's mean intensity minus 0.5 so ``p_malignant`` depends on the input.
    """

    def __init__(self, queue: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.queue = list(queue)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor) -> dict:
        b = images.shape[0]
        boxes, obj = [], []
        for _ in range(b):
            bx, real = self.queue.pop(0)
            boxes.append(bx)
            obj.append(torch.where(real, 2.0, -2.0))
        logit = (images.mean(dim=(1, 2, 3)) - 0.5) * self.scale
        return {"image_logits": torch.stack([-logit, logit], dim=1), "pred_boxes": torch.stack(boxes),
                "pred_obj_logits": torch.stack(obj), "aux_outputs": []}
