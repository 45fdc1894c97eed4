"""The counts table ``prepare`` ends with: images, patients and boxes per official split and class.

The numbers a complete conversion of a public dataset must reach are listed in docs/datasets.md in the same
layout, so a user compares them at a glance. Images count by their label, patients by their worst image label in
that row's images, boxes by their own pathology (``unknown`` when the source gives none).
"""

from __future__ import annotations

from collections import defaultdict

from mammodetr.data.records import LABELS, worst_label

__all__ = ["count_table", "format_count_table", "BOX_CLASSES"]

BOX_CLASSES = ("benign", "malignant", "unknown")
_SPLIT_ORDER = ("train", "val", "test", "none")


def _row(name: str, images: list[dict], boxes: list[dict]) -> dict:
    per_patient: dict[str, list[str]] = defaultdict(list)
    for img in images:
        per_patient[img.get("patient_id")].append(img.get("label"))
    patient_labels = [worst_label(labels) for labels in per_patient.values()]
    box_classes = [b.get("pathology") if b.get("pathology") in ("benign", "malignant") else "unknown" for b in boxes]
    return {
        "split": name,
        "images": {"total": len(images), **{lab: sum(i.get("label") == lab for i in images) for lab in LABELS}},
        "patients": {"total": len(per_patient), **{lab: patient_labels.count(lab) for lab in LABELS}},
        "boxes": {"total": len(boxes), **{c: box_classes.count(c) for c in BOX_CLASSES}},
    }


def count_table(images: list[dict], annotations: list[dict]) -> dict:
    """Counts per official split and in total, from COCO image and annotation entries of a prepared folder.

    Args:
        images: ``annotations.json`` images (``label``, ``patient_id``, ``official_split``).
        annotations: ``annotations.json`` annotations (``image_id``, ``pathology``).

    Returns:
        ``{"split_by": "official_split", "rows": [...]}``; a row per official split present ("none" for images
        without one; no split rows when no image has one) and a last ``total`` row, each
        ``{"split", "images": {total, normal, benign, malignant}, "patients": {...same}, "boxes": {total, benign,
        malignant, unknown}}``. A patient found in two splits counts once in ``total``.
    """
    boxes_of: dict[object, list[dict]] = defaultdict(list)
    for ann in annotations:
        boxes_of[ann.get("image_id")].append(ann)
    by_split: dict[str, list[dict]] = defaultdict(list)
    for img in images:
        by_split[img.get("official_split") or "none"].append(img)
    rows = []
    if set(by_split) != {"none"}:
        order = sorted(by_split, key=lambda s: (_SPLIT_ORDER.index(s) if s in _SPLIT_ORDER else len(_SPLIT_ORDER), s))
        for split in order:
            imgs = by_split[split]
            rows.append(_row(split, imgs, [b for i in imgs for b in boxes_of[i.get("id")]]))
    rows.append(_row("total", images, [b for i in images for b in boxes_of[i.get("id")]]))
    return {"split_by": "official_split", "rows": rows}


def format_count_table(table: dict) -> str:
    """The table as fixed-width text (one header pair, one line per row) for the end of ``prepare``."""
    groups = (("images", ("total", *LABELS)), ("patients", ("total", *LABELS)), ("boxes", ("total", *BOX_CLASSES)))
    width = max(len(c) for _, cols in groups for c in cols) + 1
    top = f"{'':<8}" + "".join(f" {name:-^{len(cols) * width}}" for name, cols in groups)
    head = f"{'split':<8}" + "".join(" " + "".join(f"{c:>{width}}" for c in cols) for _, cols in groups)
    lines = [top, head]
    for row in table["rows"]:
        lines.append(f"{row['split']:<8}" + "".join(
            " " + "".join(f"{row[name][c]:>{width}}" for c in cols) for name, cols in groups))
    return "\n".join(lines)
