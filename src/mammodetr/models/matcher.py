"""Hungarian matching between predicted boxes and target boxes (DETR convention)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from mammodetr.data.boxes import box_cxcywh_to_xyxy
from mammodetr.models.box_ops import generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target boxes per image, minimising

    ``cost = cost_bbox * L1(cxcywh) + cost_giou * (-GIoU) + cost_obj * (-objectness probability)``.

    With more targets than queries, only ``num_queries`` targets are matched (the cheapest set).
    """

    def __init__(self, cost_bbox: float = 5.0, cost_giou: float = 2.0, cost_obj: float = 1.0) -> None:
        super().__init__()
        self.cost_bbox, self.cost_giou, self.cost_obj = cost_bbox, cost_giou, cost_obj

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """
        Args:
            outputs: ``pred_boxes`` (B, K, 4) normalised cxcywh, ``pred_obj_logits`` (B, K).
            targets: B dicts with ``boxes`` (N_i, 4) normalised cxcywh (N_i may be 0).

        Returns:
            B pairs ``(pred_idx, target_idx)`` of int64 tensors of equal length min(K, N_i).
        """
        B, K = outputs["pred_obj_logits"].shape
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(B)]
        pred_boxes = outputs["pred_boxes"].flatten(0, 1).float()
        prob = outputs["pred_obj_logits"].flatten(0, 1).float().sigmoid()
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes)
        # One cost matrix for the whole batch, then sliced per image: a single cdist/GIoU call.
        cost = (
            self.cost_bbox * torch.cdist(pred_boxes, tgt_boxes, p=1)
            - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
            - self.cost_obj * prob[:, None]
        )
        cost = cost.view(B, K, -1).cpu()
        indices = []
        for i, c in enumerate(cost.split(sizes, dim=-1)):
            if sizes[i] == 0:
                indices.append((empty, empty))
                continue
            row, col = linear_sum_assignment(c[i].numpy())
            indices.append((torch.as_tensor(row, dtype=torch.int64), torch.as_tensor(col, dtype=torch.int64)))
        return indices
