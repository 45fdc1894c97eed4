"""A batch's detection targets, padded once: the form the matcher and the criterion read.

Images carry different numbers of boxes, so a batch is padded to ``T`` slots per image:

- ``boxes``: (B, T, 4) normalised cxcywh; padded slots hold zeros.
- ``mask``: (B, T) bool, True for a real box.
- ``labels``: (B,) int64 image class.

Padding once (in the data loader's collate function) lets every loss run as one batched op over images and
decoder layers, with no per-image loop and no read-back from the device. ``pack_targets`` puts the three
tensors in one float tensor so that moving a batch to the GPU is a single copy (pinned by the loader).
The "at most ``max_targets`` per image" rule of the paper is applied while padding (:func:`keep_slots`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["keep_slots", "limit_targets", "pad_targets", "pack_targets", "unpack_targets", "select_slots"]

_SLOT = 5  # cx, cy, w, h, valid


def keep_slots(boxes: Tensor, mask: Tensor, malignant: Tensor | None, max_targets: int) -> Tensor:
    """(B, min(T, max_targets)) indices of the slots kept per image, in their original order.

    Kept first: real boxes before padding, malignant boxes before benign/unknown ones, then larger boxes before
    smaller ones, then the earlier box (a stable, documented rule; the paper states only "at most 3").
    """
    area = (boxes[..., 2] * boxes[..., 3]).float()  # <= 1 for normalised boxes, so +2 puts malignant first
    priority = area + (2.0 * (malignant == 1).float() if malignant is not None else 0.0)
    priority = priority.masked_fill(~mask, -torch.inf)
    order = torch.argsort(priority, dim=-1, descending=True, stable=True)[..., :max_targets]
    return order.sort(dim=-1).values


def limit_targets(boxes: Tensor, malignant: Tensor | None, max_targets: int | None) -> Tensor:
    """Indices of one image's targets kept when it has more than ``max_targets`` boxes (:func:`keep_slots`)."""
    n = len(boxes)
    if max_targets is None or n <= max_targets:
        return torch.arange(n)
    mask = torch.ones(1, n, dtype=torch.bool)
    return keep_slots(boxes[None], mask, None if malignant is None else malignant[None], max_targets)[0]


def select_slots(targets: dict, keep: Tensor) -> dict:
    """The padded targets restricted to the (B, T') slot indices ``keep``."""
    out = dict(targets)
    out["boxes"] = targets["boxes"].gather(1, keep[..., None].expand(-1, -1, 4))
    out["mask"] = targets["mask"].gather(1, keep)
    if targets.get("box_malignant") is not None:
        out["box_malignant"] = targets["box_malignant"].gather(1, keep)
    return out


def pad_targets(
    boxes: Sequence[Tensor],
    labels: Tensor | None = None,
    malignant: Sequence[Tensor | None] | None = None,
    max_targets: int | None = None,
) -> dict:
    """Per-image boxes -> the padded batch form, keeping at most ``max_targets`` boxes per image.

    Args:
        boxes: B tensors (N_i, 4) normalised cxcywh (N_i may be 0).
        labels: (B,) image classes, or None (the matcher alone needs no labels).
        malignant: B tensors (N_i,) of box malignancy (1 = malignant), used only to choose the kept boxes.
        max_targets: keep at most this many per image; the batch is then padded to exactly this many slots,
            so every batch has the same shape (no recompilation under ``torch.compile``). None keeps all.

    Returns:
        dict with ``boxes`` (B, T, 4), ``mask`` (B, T), ``labels`` (B,) when given, and ``box_malignant`` (B, T)
        (-1 where unknown or padded).
    """
    B = len(boxes)
    device = boxes[0].device if B else torch.device("cpu")
    sizes = [len(b) for b in boxes]
    T = max(sizes, default=0)
    if max_targets is not None:
        T = max(T, max_targets)
    out_boxes = torch.zeros(B, T, 4, dtype=torch.float32, device=device)
    mask = torch.zeros(B, T, dtype=torch.bool, device=device)
    mal = torch.full((B, T), -1, dtype=torch.int64, device=device)
    for i, (b, n) in enumerate(zip(boxes, sizes)):
        out_boxes[i, :n] = b.reshape(n, 4)
        mask[i, :n] = True
        if malignant is not None and malignant[i] is not None:
            mal[i, :n] = malignant[i].reshape(n)
    out = {"boxes": out_boxes, "mask": mask, "box_malignant": mal}
    if labels is not None:
        out["labels"] = torch.as_tensor(labels, dtype=torch.int64, device=device).reshape(B)
    if max_targets is not None and T > max_targets:
        out = select_slots(out, keep_slots(out_boxes, mask, mal, max_targets))
    return out


def pack_targets(targets: dict) -> Tensor:
    """Padded targets -> one (B, 1 + 5 T) float32 tensor: the label, then (cx, cy, w, h, valid) per slot."""
    slots = torch.cat([targets["boxes"].float(), targets["mask"][..., None].float()], dim=-1)
    return torch.cat([targets["labels"].float()[:, None], slots.flatten(1)], dim=1)


def unpack_targets(packed: Tensor) -> dict:
    """Inverse of :func:`pack_targets` (views of ``packed``, on its device)."""
    B, T = packed.shape[0], (packed.shape[1] - 1) // _SLOT
    slots = packed[:, 1:].reshape(B, T, _SLOT)
    return {"boxes": slots[..., :4], "mask": slots[..., 4] > 0.5, "labels": packed[:, 0].long()}
