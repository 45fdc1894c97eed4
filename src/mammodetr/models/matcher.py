"""Optimal one-to-one matching of predicted boxes to target boxes (DETR convention), for all layers at once.

The paper's problem is tiny (K = 3 queries, at most 3 targets), so instead of a Hungarian solve per image and
per layer on the host, the matcher scores every injective assignment of targets to queries on the device
(K = 3, T = 3: 6 of them) for every decoder layer and image in one batched op and takes the cheapest. That is
exact, and it never reads a value back to the host. Above ``exact_max_queries`` queries (or with more targets
than queries) it falls back to scipy's solver.
"""

from __future__ import annotations

import itertools
import math

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from mammodetr.data.boxes import box_cxcywh_to_xyxy
from mammodetr.models.box_ops import elementwise_generalized_box_iou
from mammodetr.models.targets import pad_targets


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target boxes per image, minimising

    ``cost = cost_bbox * L1(cxcywh) + cost_giou * (-GIoU) + cost_obj * (-objectness probability)``.

    With more targets than queries, only ``num_queries`` targets are matched (the cheapest set).

    Args:
        cost_bbox, cost_giou, cost_obj: weights of the three cost terms.
        exact_max_queries: with at most this many queries (and no more targets than queries), enumerate every
            assignment on the device; otherwise solve each image with scipy on the host (a sync per call).
    """

    def __init__(self, cost_bbox: float = 5.0, cost_giou: float = 2.0, cost_obj: float = 1.0,
                 exact_max_queries: int = 4) -> None:
        super().__init__()
        self.cost_bbox, self.cost_giou, self.cost_obj = cost_bbox, cost_giou, cost_obj
        self.exact_max_queries = exact_max_queries
        self._assignments: dict[tuple[int, int, torch.device], Tensor] = {}

    @torch.no_grad()
    def cost(self, pred_boxes: Tensor, pred_obj_logits: Tensor, tgt_boxes: Tensor) -> Tensor:
        """Matching cost of every (query, target) pair.

        Args:
            pred_boxes: (..., B, K, 4) normalised cxcywh (leading dims: e.g. decoder layers).
            pred_obj_logits: (..., B, K).
            tgt_boxes: (B, T, 4) normalised cxcywh.

        Returns:
            (..., B, K, T) float32.
        """
        pred = pred_boxes.float()[..., :, None, :]  # (..., B, K, 1, 4)
        tgt = tgt_boxes.float()[:, None, :, :]  # (B, 1, T, 4)
        l1 = (pred - tgt).abs().sum(-1)
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt))
        prob = pred_obj_logits.float().sigmoid()[..., None]
        return self.cost_bbox * l1 - self.cost_giou * giou - self.cost_obj * prob

    @torch.no_grad()
    def match(self, pred_boxes: Tensor, pred_obj_logits: Tensor, tgt_boxes: Tensor, tgt_mask: Tensor) -> Tensor:
        """The optimal assignment for every layer and image at once.

        Args:
            pred_boxes: (..., B, K, 4), pred_obj_logits: (..., B, K): predictions of one or more layers.
            tgt_boxes: (B, T, 4) padded targets, tgt_mask: (B, T) True for a real box.

        Returns:
            (..., B, T) int64: the query matched to each target slot; -1 for padding and unmatched targets.
        """
        with torch.autocast(pred_boxes.device.type, enabled=False):
            cost = self.cost(pred_boxes, pred_obj_logits, tgt_boxes)
        K, T = cost.shape[-2], cost.shape[-1]
        if K <= self.exact_max_queries and T <= K:
            return self._match_exact(cost, tgt_mask)
        return self._match_scipy(cost, tgt_mask)

    def _assignments_of(self, K: int, T: int, device: torch.device) -> Tensor:
        """(P, T): every injective map of T target slots to K queries (P = K! / (K - T)!), cached per device."""
        key = (K, T, device)
        if key not in self._assignments:
            perms = list(itertools.permutations(range(K), T))
            self._assignments[key] = torch.tensor(perms, dtype=torch.int64).reshape(len(perms), T).to(device)
        return self._assignments[key]

    def _match_exact(self, cost: Tensor, mask: Tensor) -> Tensor:
        K, T = cost.shape[-2], cost.shape[-1]
        assignments = self._assignments_of(K, T, cost.device)
        # cost of each assignment: sum over real targets of cost[query of slot t, t]; padding costs nothing, and
        # with T <= K any assignment of the real targets extends to the padded slots, so the minimum is exact.
        per_slot = cost[..., assignments, torch.arange(T, device=cost.device)]  # (..., B, P, T)
        total = per_slot.masked_fill(~mask[:, None, :], 0.0).sum(-1)
        best = assignments[total.argmin(-1)]  # (..., B, T); ties: the first assignment in enumeration order
        return best.masked_fill(~mask, -1)

    def _match_scipy(self, cost: Tensor, mask: Tensor) -> Tensor:
        lead = cost.shape[:-3]
        flat = cost.reshape(math.prod(lead), *cost.shape[-3:]).cpu()  # the fallback reads the costs on the host
        valid = mask.cpu()
        out = torch.full((flat.shape[0], *mask.shape), -1, dtype=torch.int64)
        for b in range(mask.shape[0]):
            cols = valid[b].nonzero().flatten()
            if len(cols) == 0:
                continue
            for layer in range(flat.shape[0]):
                rows, picked = linear_sum_assignment(flat[layer, b][:, cols].numpy())
                out[layer, b, cols[picked]] = torch.as_tensor(rows, dtype=torch.int64)
        return out.reshape(*lead, *mask.shape).to(cost.device)

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Per-image index pairs for one layer (the DETR interface; the criterion uses :meth:`match`).

        Args:
            outputs: ``pred_boxes`` (B, K, 4) normalised cxcywh, ``pred_obj_logits`` (B, K).
            targets: B dicts with ``boxes`` (N_i, 4) normalised cxcywh (N_i may be 0).

        Returns:
            B pairs ``(pred_idx, target_idx)`` of int64 tensors of equal length min(K, N_i), sorted by query.
        """
        padded = pad_targets([t["boxes"] for t in targets])
        device = outputs["pred_boxes"].device
        query = self.match(outputs["pred_boxes"], outputs["pred_obj_logits"], padded["boxes"].to(device),
                           padded["mask"].to(device)).cpu()
        pairs = []
        for q in query:
            tgt = (q >= 0).nonzero().flatten()
            order = q[tgt].argsort()
            pairs.append((q[tgt][order], tgt[order]))
        return pairs
