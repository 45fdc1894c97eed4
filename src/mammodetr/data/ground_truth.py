"""Ground truth of a prepared dataset folder: image labels, patients, views and lesion boxes from ``annotations.json``.

The one reader of ``annotations.json`` for training, evaluation and the trainer's validation: labels are checked
(``normal | benign | malignant``, or 0/1) and boxes come back in PREPARED-image pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ANNOTATIONS", "LabelledImage", "read_annotations", "label_index", "boxes_by_image", "load_split"]

ANNOTATIONS = "annotations.json"
DENSITY_FIELDS = ("density", "breast_density", "acr_density")


@dataclass
class LabelledImage:
    """Ground truth of one dataset image.

    Attributes:
        boxes_xyxy_px: (G, 4) lesion boxes in prepared-image pixels.
    """

    file_name: str
    image_id: int
    patient_id: str
    label: int
    label_name: str
    laterality: str | None
    view: str | None
    study_id: str | None
    density: str | None
    width: int
    height: int
    boxes_xyxy_px: np.ndarray


def read_annotations(root: str | Path) -> dict:
    """The parsed ``annotations.json`` of a prepared dataset folder.

    Raises:
        ValueError: the file is missing or not valid JSON (the message names it).
    """
    path = Path(root) / ANNOTATIONS
    if not path.is_file():
        raise ValueError(f"{path}: not found (expected a folder written by `mammodetr prepare`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None


def label_index(label, where: str) -> tuple[int, str]:
    """``(1 if malignant else 0, label name)``; the name is normal, benign or malignant."""
    if isinstance(label, str):
        name = label.strip().lower()
        if name in ("normal", "benign", "malignant"):
            return int(name == "malignant"), name
    elif label in (0, 1) and not isinstance(label, bool):
        return int(label), "malignant" if label == 1 else "benign"
    raise ValueError(f"{where}: label {label!r} is not normal|benign|malignant")


def boxes_by_image(coco: dict) -> dict[int, list[dict]]:
    """Annotation records grouped by ``image_id``."""
    out: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        out.setdefault(int(ann["image_id"]), []).append(ann)
    return out


def xyxy(anns: list[dict]) -> np.ndarray:
    """(N, 4) float64 corner boxes from COCO ``bbox`` = [x, y, w, h]."""
    return np.asarray([[float(a["bbox"][0]), float(a["bbox"][1]), float(a["bbox"][0]) + float(a["bbox"][2]),
                        float(a["bbox"][1]) + float(a["bbox"][3])] for a in anns], dtype=np.float64).reshape(-1, 4)


def _labelled(im: dict, anns: list[dict], where: str) -> LabelledImage:
    name = im["file_name"]
    if "label" not in im or "patient_id" not in im:
        raise ValueError(f"{where}: image {name!r} lacks 'label' or 'patient_id'")
    label, label_name = label_index(im["label"], f"{where}: {name}")
    density = next((str(im[k]) for k in DENSITY_FIELDS if im.get(k) not in (None, "")), None)
    return LabelledImage(
        file_name=name, image_id=int(im["id"]), patient_id=str(im["patient_id"]), label=label,
        label_name=label_name, laterality=im.get("laterality"), view=im.get("view"),
        study_id=None if im.get("study_id") is None else str(im["study_id"]), density=density,
        width=int(im.get("width", 0)), height=int(im.get("height", 0)), boxes_xyxy_px=xyxy(anns),
    )


def load_split(root: str | Path, split: str | None) -> list[LabelledImage]:
    """Ground truth of one split of a prepared dataset folder.

    Args:
        root: prepared dataset folder.
        split: image ``split`` value to keep ("test", "val", ...); None keeps all images.

    Raises:
        ValueError: missing file, unknown split, or malformed entries (naming the image).
    """
    where = str(Path(root) / ANNOTATIONS)
    coco = read_annotations(root)
    boxes = boxes_by_image(coco)
    all_images = coco.get("images", [])
    images = [_labelled(im, boxes.get(int(im["id"]), []), where) for im in all_images
              if split is None or im.get("split") == split]
    if not images:
        present = sorted(str(im.get("split")) for im in all_images)
        raise ValueError(f"{where}: no images in split {split!r} (splits present: {sorted(set(present))})")
    return images
