"""COCO JSON (the "DETR format") with optional mammography extras.

Image fields: ``id``, ``file_name`` (relative to the JSON's folder, or to ``images_dir``), ``width``,
``height``; optional extras ``patient_id``, ``label`` (normal|benign|malignant), ``laterality``, ``view``,
``study_id``, ``split``. Annotation fields: ``image_id``, ``bbox`` [x, y, w, h] in original pixels (top-left
origin); optional ``pathology`` (benign|malignant); a category named "benign" or "malignant" also gives the
pathology. An image without ``label`` gets the worst pathology of its boxes, or "normal" without boxes. An
image without ``patient_id`` is its own patient (reported once).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

from mammodetr.data.converters.common import clean_text, normalise_laterality, normalise_split, read_utf8_text
from mammodetr.data.records import LABELS, BoxRecord, Conversion, ImageRecord, Problem, worst_label


def _pathology(ann: dict, categories: dict) -> Optional[str]:
    for value in (ann.get("pathology"), categories.get(ann.get("category_id"))):
        v = clean_text(value).lower()
        if v in ("benign", "malignant"):
            return v
    return None


def convert(input_path: Path, *, images_dir: str | Path | None = None, **_options) -> Conversion:
    """Read a COCO annotation file.

    Args:
        input_path: the JSON file.
        images_dir: folder the ``file_name`` values are relative to (default: the JSON's folder, then its
            ``images/`` subfolder).

    Raises:
        ValueError: the file is missing, not JSON, or has no ``images`` list.
    """
    path = Path(input_path)
    data = _load(path)
    roots = [Path(images_dir)] if images_dir else [path.parent, path.parent / "images"]
    categories = {c.get("id"): c.get("name") for c in data.get("categories", []) if isinstance(c, dict)}
    problems: list[Problem] = []
    images = _index_images(path, data["images"], problems)
    boxes = _boxes_by_image(path, data.get("annotations", []), images, categories, problems)
    records: list[ImageRecord] = []
    no_patient = 0
    for image_id, img in images.items():
        record = _record(path, roots, image_id, img, boxes.get(image_id, []), problems)
        if record is None:
            continue
        records.append(record)
        no_patient += not clean_text(img.get("patient_id"))
    if no_patient:
        problems.append(Problem(path.name, f"{no_patient} image(s) without patient_id; each is its own patient",
                                "note"))
    return Conversion(records, problems, input_root=path.parent)


def _load(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: COCO JSON not found")
    try:
        data = json.loads(read_utf8_text(path, "COCO JSON"))  # JSON is UTF-8 (RFC 8259): anything else is one line
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: no 'images' list; not a COCO annotation file")
    return data


def _index_images(path: Path, entries: list, problems: list[Problem]) -> dict:
    """Image entries by id; entries without id or file_name and repeated ids are reported and left out."""
    images: dict = {}
    for i, img in enumerate(entries):
        where = f"{path.name} images[{i}]"
        if not isinstance(img, dict) or "id" not in img or not clean_text(img.get("file_name")):
            problems.append(Problem(where, "image entry without id or file_name"))
            continue
        if img["id"] in images:
            problems.append(Problem(where, f"duplicate image id {img['id']!r}", "kept the first"))
            continue
        images[img["id"]] = img
    return images


def _boxes_by_image(path: Path, annotations: list, images: dict, categories: dict,
                    problems: list[Problem]) -> dict[object, list[BoxRecord]]:
    """Boxes (``[x, y, w, h]`` turned into corners) per image id; unusable annotations are reported."""
    boxes: dict[object, list[BoxRecord]] = defaultdict(list)
    for j, ann in enumerate(annotations):
        where = f"{path.name} annotations[{j}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            problems.append(Problem(where, f"annotation refers to unknown image id {ann.get('image_id')!r}",
                                    "skipped box"))
            continue
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            problems.append(Problem(where, f"bbox {bbox!r} is not [x, y, w, h]", "skipped box"))
            continue
        boxes[ann["image_id"]].append(BoxRecord(x, y, x + w, y + h, pathology=_pathology(ann, categories),
                                                lesion_type=categories.get(ann.get("category_id"))))
    return boxes


def _image_label(where: str, img: dict, boxes: list[BoxRecord], problems: list[Problem], paths: tuple[str, ...]
                 ) -> Optional[str]:
    """The image's label, else the worst pathology of its boxes, else "normal" without boxes; None if unusable."""
    label = clean_text(img.get("label")).lower() or None
    if label is not None and label not in LABELS:
        problems.append(Problem(where, f"label {label!r} is not one of {', '.join(LABELS)}", paths=paths))
        return None
    if label is None:
        if not boxes:
            return "normal"
        if any(b.pathology is None for b in boxes) and worst_label(b.pathology for b in boxes) != "malignant":
            problems.append(Problem(where, "no image label and boxes without pathology", paths=paths))
            return None
        return worst_label(b.pathology for b in boxes)
    return label


def _record(path: Path, roots: list[Path], image_id, img: dict, boxes: list[BoxRecord],
            problems: list[Problem]) -> Optional[ImageRecord]:
    file_name = clean_text(img["file_name"])
    where = f"{path.name} image {image_id!r} ({file_name})"
    candidates = [Path(file_name)] if Path(file_name).is_absolute() else [r / file_name for r in roots]
    image_path = next((c for c in candidates if c.exists()), candidates[0])
    label = _image_label(where, img, boxes, problems, (file_name,))
    if label is None:
        return None
    if label == "benign":
        for b in boxes:
            b.pathology = b.pathology or "benign"
    return ImageRecord(
        image_path=image_path,
        key=str(image_id),
        patient_id=clean_text(img.get("patient_id")) or f"coco-image:{image_id}",
        label=label,
        laterality=normalise_laterality(img.get("laterality")),
        view=clean_text(img.get("view")).upper() or None,
        study_id=clean_text(img.get("study_id")) or None,
        boxes=boxes,
        official_split=normalise_split(img.get("split")),
        extra={"coco_id": image_id},
    )
