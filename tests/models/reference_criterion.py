"""The criterion and matcher as they were before the batched rewrite (issue 11), kept verbatim as a reference.

Per image and per layer: a scipy Hungarian solve, index lists and a Python loop over auxiliary layers. The
batched implementation must give the same losses (tests/models/test_criterion.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from mammodetr.data.boxes import box_cxcywh_to_xyxy
from mammodetr.models.box_ops import elementwise_generalized_box_iou, generalized_box_iou
from mammodetr.models.config import LossConfig
from mammodetr.models.criterion import focal_loss


class ReferenceMatcher(nn.Module):
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


def limit_targets(boxes: Tensor, malignant: Tensor | None, max_targets: int | None) -> Tensor:
    """Indices of the targets kept when an image has more than ``max_targets`` boxes.

    Kept: malignant boxes before benign/unknown ones, then larger boxes before smaller ones (a stable,
    documented rule; the paper states only "at most 3").
    """
    n = len(boxes)
    if max_targets is None or n <= max_targets:
        return torch.arange(n)
    area = (boxes[:, 2] * boxes[:, 3]).float()
    # area <= 1 for normalised boxes
    priority = area + (2.0 * (malignant == 1).float() if malignant is not None else 0.0)
    return torch.sort(torch.argsort(priority, descending=True, stable=True)[:max_targets]).values


class ReferenceCriterion(nn.Module):
    """Computes every named loss, unweighted, and ``loss``: the weighted total.

    Targets: list of B dicts with ``boxes`` (N_i, 4) normalised cxcywh (N_i may be 0), ``label`` (scalar
    int64, image class) and optionally ``box_malignant`` (N_i,) used only to choose kept targets.
    Box losses are divided by the number of target boxes over all processes (at least 1), so DDP
    gradients equal single-process gradients on the same global batch.
    """

    def __init__(self, matcher: ReferenceMatcher, config: LossConfig, num_aux: int) -> None:
        super().__init__()
        if config.cls_loss not in ("focal", "ce"):
            raise ValueError(f"cls_loss must be 'focal' or 'ce', got {config.cls_loss!r}")
        if config.obj_loss not in ("bce", "focal"):
            raise ValueError(f"obj_loss must be 'bce' or 'focal', got {config.obj_loss!r}")
        if config.obj_normalization not in ("boxes", "queries"):
            raise ValueError(f"obj_normalization must be 'boxes' or 'queries', got {config.obj_normalization!r}")
        self.matcher = matcher
        self.config = config
        self.weight_dict = config.weight_dict(num_aux)

    def select_targets(self, targets: list[dict]) -> list[dict]:
        out = []
        for t in targets:
            keep = limit_targets(t["boxes"], t.get("box_malignant"), self.config.max_targets)
            out.append({**t, "boxes": t["boxes"][keep]})
        return out

    def loss_cls(self, logits: Tensor, labels: Tensor) -> Tensor:
        gamma = self.config.focal_gamma if self.config.cls_loss == "focal" else 0.0
        alpha = self.config.focal_alpha if self.config.cls_loss == "focal" else None
        return focal_loss(logits, labels, gamma=gamma, alpha=alpha)

    def loss_det(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        obj_logits = outputs["pred_obj_logits"].float()
        obj_target = torch.zeros_like(obj_logits)
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        obj_target[batch_idx, src_idx] = 1.0
        if self.config.obj_loss == "bce":
            obj = F.binary_cross_entropy_with_logits(obj_logits, obj_target, reduction="sum")
        else:
            from torchvision.ops import sigmoid_focal_loss

            obj = sigmoid_focal_loss(obj_logits, obj_target, alpha=0.25, gamma=2.0, reduction="sum")
        obj = obj / (num_boxes if self.config.obj_normalization == "boxes" else obj_logits.numel())
        pred = outputs["pred_boxes"][batch_idx, src_idx].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(pred)
        # With no target in the batch these sums are 0 but still connected to the graph.
        loss_bbox = F.l1_loss(pred, tgt, reduction="sum") / num_boxes
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou, "loss_obj": obj}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """
        Returns:
            ``loss_cls``, ``loss_bbox``, ``loss_giou``, ``loss_obj`` (final layer), the same with suffix
            ``_i`` for auxiliary layer i, and ``loss`` = sum of weight_dict[k] * value.
        """
        targets = self.select_targets(targets)
        device = outputs["pred_boxes"].device
        num_boxes = torch.tensor(float(sum(len(t["boxes"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        num_boxes = num_boxes.clamp(min=1.0).item()
        labels = torch.stack([torch.as_tensor(t["label"]) for t in targets]).to(device=device, dtype=torch.int64)
        losses = {"loss_cls": self.loss_cls(outputs["image_logits"], labels)}
        losses.update(self.loss_det(outputs, targets, num_boxes))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self.loss_det(aux, targets, num_boxes).items()})
        losses["loss"] = sum(self.weight_dict[k] * v for k, v in losses.items() if k in self.weight_dict)
        return losses


def build_reference(config: LossConfig, num_aux: int) -> ReferenceCriterion:
    matcher = ReferenceMatcher(cost_bbox=config.cost_bbox, cost_giou=config.cost_giou, cost_obj=config.cost_obj)
    return ReferenceCriterion(matcher, config, num_aux=num_aux)
