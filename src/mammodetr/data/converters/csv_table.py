"""The generic CSV schema (OPTIMAM, in-house cohorts, ``mammodetr synth``); documented in docs/data.md.

Columns (header names are case-insensitive):
    image_path (required): path of the image, relative to the CSV's folder (or absolute).
    patient_id (required): patient group; all images of a patient land in the same split.
    label (required): image label, normal | benign | malignant.
    laterality, view, study_id, split (optional): L/R; CC/MLO/...; exam id; official split train/val/test.
    x1, y1, x2, y2 (optional): one lesion box in ORIGINAL image pixels (top-left origin); empty for no box.
    lesion_label (optional): the box's pathology, benign | malignant (empty = unknown; a benign image's boxes
        are benign).
One row per box; an image without boxes has one row with empty box cells. Rows of the same image_path are
merged into one image.
"""

from __future__ import annotations

from pathlib import Path

from mammodetr.data.converters.common import clean_text, normalise_laterality, normalise_split, read_csv_rows
from mammodetr.data.records import LABELS, BoxRecord, Conversion, ImageRecord, Problem, worst_label

REQUIRED = ("image_path", "patient_id", "label")
BOX_COLUMNS = ("x1", "y1", "x2", "y2")


def _parse_box(row: dict, where: str, problems: list[Problem]) -> list[float] | None:
    cells = [clean_text(row.get(c)) for c in BOX_COLUMNS]
    if all(c == "" for c in cells):
        return None
    if any(c == "" for c in cells):
        problems.append(Problem(where, "incomplete box (some of x1, y1, x2, y2 empty)", "skipped box"))
        return None
    try:
        return [float(c) for c in cells]
    except ValueError:
        problems.append(Problem(where, f"box corners are not numbers: {cells}", "skipped box"))
        return None


def convert(input_path: Path, *, images_dir: str | Path | None = None, **_options) -> Conversion:
    """Read a CSV in the generic schema.

    Args:
        input_path: the CSV file.
        images_dir: folder the relative ``image_path`` values start from (default: the CSV's folder).

    Raises:
        ValueError: the file is missing or lacks a required column.
    """
    path = Path(input_path)
    if not path.is_file():
        raise ValueError(f"{path}: CSV table not found")
    root = Path(images_dir) if images_dir else path.parent
    problems: list[Problem] = []
    groups = _group_rows(path, problems)
    records = [_record(path, root, rel, g, problems) for rel, g in groups.items()]
    return Conversion([r for r in records if r is not None], problems, input_root=root)


def _group_rows(path: Path, problems: list[Problem]) -> dict[str, dict]:
    """The CSV's usable rows merged per image_path: row numbers, patients, labels, first values, boxes."""
    groups: dict[str, dict] = {}
    for line_no, where, row in read_csv_rows(path, REQUIRED, hint="; see docs/data.md", problems=problems):
        rel = clean_text(row.get("image_path"))
        patient = clean_text(row.get("patient_id"))
        label = clean_text(row.get("label")).lower()
        if not rel:
            problems.append(Problem(where, "empty image_path", "skipped row"))
            continue
        if not patient:
            problems.append(Problem(where, f"empty patient_id for {rel}", "skipped row", paths=(rel,)))
            continue
        if label not in LABELS:
            problems.append(Problem(where, f"label {label!r} is not one of {', '.join(LABELS)}", "skipped row"))
            continue
        g = groups.setdefault(rel, {"rows": [], "patients": set(), "labels": [], "fields": {}, "boxes": []})
        g["rows"].append(line_no)
        g["patients"].add(patient)
        g["labels"].append(label)
        for name in ("laterality", "view", "study_id", "split"):
            value = clean_text(row.get(name))
            if value and name not in g["fields"]:
                g["fields"][name] = value
        box = _parse_box(row, where, problems)
        if box is not None:
            g["boxes"].append(BoxRecord(*box, pathology=_box_pathology(row, label, where, problems)))
    return groups


def _box_pathology(row: dict, label: str, where: str, problems: list[Problem]) -> str | None:
    pathology = clean_text(row.get("lesion_label")).lower() or None
    if pathology is not None and pathology not in ("benign", "malignant"):
        problems.append(Problem(where, f"lesion_label {pathology!r} is not benign/malignant", "box pathology unknown"))
        pathology = None
    if pathology is None and label == "benign":
        pathology = "benign"
    return pathology


def _record(path: Path, root: Path, rel: str, g: dict, problems: list[Problem]) -> ImageRecord | None:
    """One image from its merged rows; None (reported) when the rows disagree on the patient."""
    rows = g["rows"]
    where = f"{path.name} row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows[:5]))}" + (
        ", ..." if len(rows) > 5 else "")
    if len(g["patients"]) > 1:
        problems.append(Problem(f"{where} ({rel})", "rows of one image give different patient_id values", paths=(rel,)))
        return None
    label = worst_label(g["labels"])
    if len(set(g["labels"])) > 1:
        problems.append(Problem(f"{where} ({rel})", f"rows give different labels {sorted(set(g['labels']))}",
                                f"used {label}", paths=(rel,)))
    boxes = g["boxes"]
    if label == "normal" and boxes:
        problems.append(Problem(f"{where} ({rel})", "image labelled normal has boxes", "kept boxes", paths=(rel,)))
    f = g["fields"]
    split_raw = f.get("split")
    split = normalise_split(split_raw)
    if split_raw and split is None:
        problems.append(Problem(f"{where} ({rel})", f"split {split_raw!r} is not train/val/test", "ignored",
                                paths=(rel,)))
    return ImageRecord(
        image_path=Path(rel) if Path(rel).is_absolute() else root / rel,
        key=rel,
        patient_id=next(iter(g["patients"])),
        label=label,
        laterality=normalise_laterality(f.get("laterality")),
        view=(f.get("view") or "").upper() or None,
        study_id=f.get("study_id"),
        boxes=boxes,
        official_split=split,
    )
