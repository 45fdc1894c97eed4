"""VinDr-Mammo: ``finding_annotations.csv`` (one row per finding) and DICOMs at images/<study>/<image>.dicom.

VinDr has no biopsy pathology, so malignancy is derived from BI-RADS with an explicit, configurable rule:
a finding is malignant when its ``finding_birads`` is in ``positive_birads`` (default 4 and 5), otherwise benign.
An image is malignant when one of its findings is, or when its ``breast_birads`` is in ``positive_birads``;
benign when it has a finding or a breast BI-RADS of 2 or 3; normal otherwise. ``No Finding`` rows give no box.
``study_id`` (one exam of one woman) is the patient group. The official training/test split is kept.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterable, Optional

from mammodetr.data.converters.common import clean_text, normalise_laterality, normalise_split, read_csv_rows
from mammodetr.data.records import BoxRecord, Conversion, ImageRecord, Problem

_REQUIRED = ("study_id", "image_id", "laterality", "view_position", "breast_birads", "finding_categories",
             "finding_birads", "xmin", "ymin", "xmax", "ymax")


def parse_birads(value) -> Optional[int]:
    """``"BI-RADS 4"`` -> 4 (also "4", "BI-RADS 4A"); None when empty or unreadable."""
    m = re.search(r"(\d)", clean_text(value))
    return int(m.group(1)) if m else None


def parse_categories(value) -> list[str]:
    """Parse the Python-list string ``"['Mass', 'Suspicious Calcification']"`` safely (no eval)."""
    text = clean_text(value)
    if not text:
        return []
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return [text]
    if isinstance(parsed, str):
        return [parsed]
    if isinstance(parsed, (list, tuple)):
        return [str(v).strip() for v in parsed]
    return [text]


def _float(value) -> float:
    text = clean_text(value)
    try:
        return float(text) if text else float("nan")
    except ValueError:
        return float("nan")


def convert(input_path: Path, *, positive_birads: Iterable[int] = (4, 5), images_dir: str | Path | None = None,
            **_options) -> Conversion:
    """Read VinDr-Mammo.

    Args:
        input_path: the dataset folder (holding finding_annotations.csv and images/), or the CSV itself.
        positive_birads: BI-RADS categories counted as malignant (default 4 and 5).
        images_dir: folder holding <study_id>/<image_id>.dicom (default: <dataset>/images).
    """
    path = Path(input_path)
    csv_path = path / "finding_annotations.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: VinDr finding_annotations.csv not found")
    positive = {int(v) for v in positive_birads}
    if not positive or not positive <= set(range(0, 7)):
        raise ValueError(f"positive BI-RADS must be categories 0-6, got {sorted(positive)}")
    img_root = Path(images_dir) if images_dir else csv_path.parent / "images"
    problems: list[Problem] = []
    images: dict[str, dict] = {}
    for line_no, where, row in read_csv_rows(csv_path, _REQUIRED):
        study, image_id = clean_text(row["study_id"]), clean_text(row["image_id"])
        if not study or not image_id:
            problems.append(Problem(where, "empty study_id or image_id", "skipped row"))
            continue
        e = images.setdefault(image_id, {
            "study": study, "laterality": normalise_laterality(row["laterality"]),
            "view": clean_text(row["view_position"]).upper() or None,
            "split": normalise_split(row.get("split")), "breast_birads": set(), "findings": 0, "boxes": [],
            "first_row": line_no, "density": clean_text(row.get("breast_density")) or None,
        })
        if e["study"] != study:
            problems.append(Problem(where, "image_id listed under two study_ids", "skipped row"))
            continue
        b = parse_birads(row["breast_birads"])
        if b is not None:
            e["breast_birads"].add(b)
        categories = parse_categories(row["finding_categories"])
        if not categories or all(c.lower() == "no finding" for c in categories):
            continue
        e["findings"] += 1
        fb = parse_birads(row["finding_birads"])
        pathology = None if fb is None else "malignant" if fb in positive else "benign"
        e["boxes"].append(BoxRecord(_float(row["xmin"]), _float(row["ymin"]), _float(row["xmax"]),
                                    _float(row["ymax"]), pathology=pathology,
                                    lesion_type=", ".join(categories)))

    records = []
    for image_id, e in images.items():
        if any(b.pathology == "malignant" for b in e["boxes"]) or e["breast_birads"] & positive:
            label = "malignant"
        elif e["findings"] or e["breast_birads"] & {2, 3}:
            label = "benign"
        else:
            label = "normal"
        records.append(ImageRecord(
            image_path=img_root / e["study"] / f"{image_id}.dicom",
            key=image_id, patient_id=e["study"], label=label, laterality=e["laterality"], view=e["view"],
            study_id=e["study"], boxes=e["boxes"], official_split=e["split"],
            extra={"breast_birads": max(e["breast_birads"]) if e["breast_birads"] else None,
                   "breast_density": e["density"]},
        ))
    return Conversion(records, problems, input_root=csv_path.parent)
