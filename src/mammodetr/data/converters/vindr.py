"""VinDr-Mammo: ``finding_annotations.csv`` (one row per finding) and DICOMs at images/<study>/<image>.dicom.

``breast-level_annotations.csv`` (one row per image), when it lies beside, is checked against the findings table:
an image only it lists is added, labelled from its breast BI-RADS, and reported.

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
_BREAST_LEVEL_REQUIRED = ("study_id", "image_id", "laterality", "view_position", "breast_birads")
BREAST_LEVEL_FILE = "breast-level_annotations.csv"


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


def _find_table(path: Path) -> Path:
    """finding_annotations.csv: ``path`` itself, in ``path``, one folder down, or where ``wget`` puts it."""
    if not path.is_dir():
        if path.is_file():
            return path
        raise ValueError(f"{path}: VinDr finding_annotations.csv not found")
    found = [path / "finding_annotations.csv"] if (path / "finding_annotations.csv").is_file() else sorted(
        [*path.glob("*/finding_annotations.csv"),
         *path.glob("physionet.org/files/vindr-mammo/*/finding_annotations.csv")])
    if len(found) != 1:
        where = f"several ({', '.join(map(str, found))})" if found else "none"
        raise ValueError(f"{path}: VinDr finding_annotations.csv not found here or one folder down ({where}); "
                         "--input is the folder holding it and images/ (a PhysioNet wget download puts them in "
                         "physionet.org/files/vindr-mammo/1.0.0/)")
    return found[0]


def convert(input_path: Path, *, positive_birads: Iterable[int] = (4, 5), images_dir: str | Path | None = None,
            **_options) -> Conversion:
    """Read VinDr-Mammo.

    Args:
        input_path: the dataset folder (holding finding_annotations.csv and images/), or the CSV itself.
        positive_birads: BI-RADS categories counted as malignant (default 4 and 5).
        images_dir: folder holding <study_id>/<image_id>.dicom (default: <dataset>/images).
    """
    csv_path = _find_table(Path(input_path))
    positive = {int(v) for v in positive_birads}
    if not positive or not positive <= set(range(0, 7)):
        raise ValueError(f"positive BI-RADS must be categories 0-6, got {sorted(positive)}")
    img_root = Path(images_dir) if images_dir else csv_path.parent / "images"
    problems: list[Problem] = []
    images = _read_findings(csv_path, positive, problems)
    breast_level = csv_path.parent / BREAST_LEVEL_FILE
    if breast_level.is_file():
        _add_breast_level_only(breast_level, images, problems)
    records = [_record(image_id, e, img_root, positive) for image_id, e in images.items()]
    summary = {"layout": f"VinDr-Mammo: table {csv_path}, images under {img_root}"
                         + ("" if img_root.is_dir() else " (folder not found)"), "images_root": str(img_root)}
    return Conversion(records, problems, input_root=csv_path.parent, summary=summary)


def _new_entry(row: dict, study: str, line_no: int) -> dict:
    return {"study": study, "laterality": normalise_laterality(row["laterality"]),
            "view": clean_text(row["view_position"]).upper() or None,
            "split": normalise_split(row.get("split")), "breast_birads": set(), "findings": 0, "boxes": [],
            "first_row": line_no, "density": clean_text(row.get("breast_density")) or None}


def _read_findings(csv_path: Path, positive: set[int], problems: list[Problem]) -> dict[str, dict]:
    """Per image_id: study, side, view, split, breast BI-RADS values, number of findings, boxes, density."""
    images: dict[str, dict] = {}
    for line_no, where, row in read_csv_rows(csv_path, _REQUIRED, problems=problems):
        study, image_id = clean_text(row["study_id"]), clean_text(row["image_id"])
        if not study or not image_id:
            problems.append(Problem(where, "empty study_id or image_id", "skipped row"))
            continue
        e = images.setdefault(image_id, _new_entry(row, study, line_no))
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
    return images


def _add_breast_level_only(path: Path, images: dict[str, dict], problems: list[Problem]) -> None:
    """Images that breast-level_annotations.csv lists but finding_annotations.csv lacks are added (reported).

    Both tables list every image in the published dataset; an image missing from one points to a truncated or
    edited copy. Its label then comes from its breast BI-RADS only.
    """
    for line_no, where, row in read_csv_rows(path, _BREAST_LEVEL_REQUIRED, problems=problems):
        study, image_id = clean_text(row["study_id"]), clean_text(row["image_id"])
        if not study or not image_id or image_id in images:
            continue
        e = images[image_id] = _new_entry(row, study, line_no)
        b = parse_birads(row["breast_birads"])
        if b is not None:
            e["breast_birads"].add(b)
        problems.append(Problem(where, "image listed here but not in finding_annotations.csv (a truncated copy?); "
                                       "labelled from its breast BI-RADS", "note"))


def _record(image_id: str, e: dict, img_root: Path, positive: set[int]) -> ImageRecord:
    if any(b.pathology == "malignant" for b in e["boxes"]) or e["breast_birads"] & positive:
        label = "malignant"
    elif e["findings"] or e["breast_birads"] & {2, 3}:
        label = "benign"
    else:
        label = "normal"
    return ImageRecord(
        image_path=img_root / e["study"] / f"{image_id}.dicom",
        key=image_id, patient_id=e["study"], label=label, laterality=e["laterality"], view=e["view"],
        study_id=e["study"], boxes=e["boxes"], official_split=e["split"],
        extra={"breast_birads": max(e["breast_birads"]) if e["breast_birads"] else None,
               "breast_density": e["density"]},
    )
