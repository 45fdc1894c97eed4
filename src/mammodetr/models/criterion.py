"""Named losses of the multi-task DETR: image-level focal loss + per-layer box L1, GIoU, objectness.

Every decoder layer is matched and scored in one batched pass on the stacked (L, B, K, ...) predictions and the
padded targets (:mod:`mammodetr.models.targets`): no loop over layers or images, and no value is read back to
the host, so a training step does not wait on the device here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mammodetr.data.boxes import box_cxcywh_to_xyxy
from mammodetr.models.box_ops import elementwise_generalized_box_iou
from mammodetr.models.config import LossConfig
from mammodetr.models.matcher import HungarianMatcher
from mammodetr.models.targets import keep_slots, limit_targets, pad_targets, select_slots, unpack_targets

__all__ = ["SetCriterion", "build_criterion", "focal_loss", "limit_targets"]

DET_LOSSES = ("loss_bbox", "loss_giou", "loss_obj")


def focal_loss(logits: Tensor, labels: Tensor, gamma: float = 2.0, alpha: float | None = None) -> Tensor:
    """Mean softmax focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t.

    Args:
        logits: (B, C); C = 1 means a single malignancy logit (sigmoid).
        labels: (B,) int64 class index (0/1 for C = 1).
        gamma: focusing parameter; 0 gives cross-entropy.
        alpha: weight of class 1 (malignant); the other classes get 1 - alpha. None = no weighting.
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)  # sigmoid(z) == softmax([0, z])[1]
    logp_t = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - logp_t.exp()) ** gamma) * logp_t
    if alpha is not None:
        loss = loss * torch.where(labels == 1, alpha, 1 - alpha)
    return loss.mean()



class SetCriterion(nn.Module):
    """Computes every named loss, unweighted, and ``loss``: the weighted total.

    Box losses are divided by the number of target boxes over all processes (at least 1), so DDP
    gradients equal single-process gradients on the same global batch.
    """

    def __init__(self, matcher: HungarianMatcher, config: LossConfig, num_aux: int) -> None:
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

    def padded_targets(self, targets, device: torch.device) -> dict:
        """Any accepted target form -> padded targets on ``device`` with at most ``max_targets`` per image."""
        if isinstance(targets, (list, tuple)):
            labels = torch.stack([torch.as_tensor(t["label"]) for t in targets])
            targets = pad_targets([t["boxes"] for t in targets], labels, [t.get("box_malignant") for t in targets],
                                  self.config.max_targets)
        elif "packed" in targets:
            targets = unpack_targets(targets["packed"].to(device, non_blocking=True))
        targets = {k: v.to(device, non_blocking=True) for k, v in targets.items() if isinstance(v, torch.Tensor)}
        max_targets = self.config.max_targets
        if max_targets is not None and targets["boxes"].shape[1] > max_targets:
            keep = keep_slots(targets["boxes"], targets["mask"], targets.get("box_malignant"), max_targets)
            targets = select_slots(targets, keep)
        return targets

    def loss_cls(self, logits: Tensor, labels: Tensor) -> Tensor:
        gamma = self.config.focal_gamma if self.config.cls_loss == "focal" else 0.0
        alpha = self.config.focal_alpha if self.config.cls_loss == "focal" else None
        return focal_loss(logits, labels, gamma=gamma, alpha=alpha)

    def num_boxes(self, mask: Tensor) -> Tensor:
        """Target boxes per process, averaged over processes, at least 1: a device scalar (no host read)."""
        num_boxes = mask.sum().float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        return num_boxes.clamp(min=1.0)

    def loss_det(self, boxes: Tensor, obj_logits: Tensor, targets: dict, num_boxes: Tensor) -> dict[str, Tensor]:
        """Box L1, GIoU and objectness losses of every layer.

        Args:
            boxes: (L, B, K, 4) normalised cxcywh; obj_logits: (L, B, K); targets: padded, on the device.

        Returns:
            ``loss_bbox``, ``loss_giou``, ``loss_obj``, each (L,).
        """
        L, B, K = obj_logits.shape
        query = self.matcher.match(boxes, obj_logits, targets["boxes"], targets["mask"])  # (L, B, T), -1 = none
        matched = query >= 0
        pred = boxes.gather(2, query.clamp(min=0)[..., None].expand(-1, -1, -1, 4))  # (L, B, T, 4)
        tgt = targets["boxes"].float().expand_as(pred)
        # With no target these sums are 0 but still connected to the graph. where(): padded slots add nothing.
        l1 = torch.where(matched, (pred - tgt).abs().sum(-1), 0.0)
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt))
        loss_giou = torch.where(matched, 1 - giou, 0.0)
        obj_target = (query[..., None] == torch.arange(K, device=query.device)).any(-2).to(obj_logits.dtype)
        if self.config.obj_loss == "bce":
            obj = F.binary_cross_entropy_with_logits(obj_logits, obj_target, reduction="none")
        else:
            from torchvision.ops import sigmoid_focal_loss

            obj = sigmoid_focal_loss(obj_logits, obj_target, alpha=0.25, gamma=2.0, reduction="none")
        obj_norm = num_boxes if self.config.obj_normalization == "boxes" else B * K
        return {"loss_bbox": l1.sum((1, 2)) / num_boxes, "loss_giou": loss_giou.sum((1, 2)) / num_boxes,
                "loss_obj": obj.sum((1, 2)) / obj_norm}

    def weighted_total(self, loss_cls: Tensor, det: dict[str, Tensor]) -> Tensor:
        """sum of weight_dict[name] * loss over every named loss (names missing from weight_dict count 0)."""
        total = self.weight_dict.get("loss_cls", 0.0) * loss_cls
        for name, per_layer in det.items():
            names = [f"{name}_{i}" for i in range(per_layer.shape[0] - 1)] + [name]
            weights = [self.weight_dict.get(n, 0.0) for n in names]
            if len(set(weights)) == 1:  # the usual case: one weight for every layer, one reduction
                total = total + weights[0] * per_layer.sum()
            else:
                total = total + sum(w * v for w, v in zip(weights, per_layer.unbind()))
        return total

    def forward(self, outputs: dict, targets) -> dict[str, Tensor]:
        """
        Args:
            outputs: the model's dict (``image_logits``, ``pred_boxes``, ``pred_obj_logits``, ``aux_outputs``).
            targets: padded targets (``boxes`` (B, T, 4) normalised cxcywh, ``mask`` (B, T), ``labels`` (B,),
                optional ``box_malignant`` (B, T)), the loader's packed form (``packed``), or a list of B dicts
                with ``boxes`` (N_i, 4), ``label`` and optionally ``box_malignant`` (N_i,).

        Returns:
            ``loss_cls``, ``loss_bbox``, ``loss_giou``, ``loss_obj`` (final layer), the same with suffix
            ``_i`` for auxiliary layer i, and ``loss`` = sum of weight_dict[k] * value.
        """
        targets = self.padded_targets(targets, outputs["pred_boxes"].device)
        layers = [*outputs.get("aux_outputs", []), outputs]
        boxes = torch.stack([o["pred_boxes"] for o in layers]).float()
        obj_logits = torch.stack([o["pred_obj_logits"] for o in layers]).float()
        det = self.loss_det(boxes, obj_logits, targets, self.num_boxes(targets["mask"]))
        losses = {"loss_cls": self.loss_cls(outputs["image_logits"], targets["labels"])}
        losses.update({name: det[name][-1] for name in DET_LOSSES})
        for i in range(len(layers) - 1):
            losses.update({f"{name}_{i}": det[name][i] for name in DET_LOSSES})
        losses["loss"] = self.weighted_total(losses["loss_cls"], det)
        return losses


def build_criterion(config: LossConfig, num_aux: int, exact_max_queries: int = 4) -> SetCriterion:
    matcher = HungarianMatcher(cost_bbox=config.cost_bbox, cost_giou=config.cost_giou, cost_obj=config.cost_obj,
                               exact_max_queries=exact_max_queries)
    return SetCriterion(matcher, config, num_aux=num_aux)
