"""CBIS-DDSM: four case-description CSVs, DICOM images, boxes from ROI masks.

One CSV row per abnormality. The mass CSVs spell the density column ``breast_density``, the calc CSVs
``breast density``; both are read. Path cells often carry trailing whitespace or line breaks; they are cleaned.
An abnormality's box is the bounding box of the non-zero pixels of its ROI mask DICOM, which must have the
size of the full mammogram: a mask of another size (mis-sized or mis-linked) is reported and its box skipped,
never rescaled. BENIGN_WITHOUT_CALLBACK is benign. The official train/test split (from the file name) is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from mammodetr.data.converters.common import clean_text, normalise_laterality, read_csv_rows
from mammodetr.data.records import BoxRecord, Conversion, ImageRecord, Problem, worst_label

_PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
_REQUIRED = ("patient id", "left or right breast", "image view", "pathology", "image file path",
             "roi mask file path")


def _norm_header(name: str) -> str:
    # "breast_density" (mass CSVs) and "breast density" (calc CSVs) become the same key.
    return re.sub(r"[\s_]+", " ", clean_text(name).lower())


def _dicom_size(path: Path) -> tuple[int, int]:
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


def _resolve(root: Path, rel: str, want_size: Optional[tuple[int, int]] = None) -> Optional[Path]:
    """The file a CSV path names, or a unique stand-in when the download tree names files differently.

    TCIA downloads keep the top folder of the CSV path but may rename the file. The stand-in is the only DICOM
    under that top folder (for a mask: the only one whose size equals ``want_size``); None when it is not unique.
    """
    rel = rel.replace("\\", "/").strip("/")
    exact = root / rel
    if exact.is_file():
        return exact
    top = root / rel.split("/")[0]
    if not top.is_dir():
        return None
    candidates = sorted(p for p in top.rglob("*.dcm") if p.is_file())
    if want_size is not None:
        matching = []
        for p in candidates:
            try:
                if _dicom_size(p) == want_size:
                    matching.append(p)
            except Exception:  # noqa: BLE001 - an unreadable candidate is simply not a match
                continue
        candidates = matching
    return candidates[0] if len(candidates) == 1 else None


def mask_box_xyxy(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Bounding box (end-exclusive pixels) of the non-zero pixels of a 2-D mask; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _read_mask(path: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array
    if arr.ndim == 3:  # a mask stored with samples per pixel > 1
        arr = arr.max(axis=-1)
    return arr


def _csv_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv"
                   and "case_description" in p.name.lower())
    if not files:
        raise ValueError(f"{folder}: no CBIS-DDSM case-description CSVs (*case_description*.csv) found")
    return files


def convert(input_path: Path, *, images_dir: str | Path | None = None, **_options) -> Conversion:
    """Read CBIS-DDSM.

    Args:
        input_path: folder holding the case-description CSVs (or one CSV file).
        images_dir: root of the TCIA download tree the CSV paths are relative to (default: the CSVs' folder).
    """
    path = Path(input_path)
    files = [path] if path.is_file() else _csv_files(path) if path.is_dir() else []
    if not files:
        raise ValueError(f"{path}: not found")
    reader = _Reader(Path(images_dir) if images_dir else files[0].parent)
    for csv_path in files:
        split = "test" if "test" in csv_path.name.lower() else "train"
        kind = "calc" if csv_path.name.lower().startswith("calc") else "mass"
        for _, where, row in read_csv_rows(csv_path, _REQUIRED, header=_norm_header):
            reader.add_row(where, row, split, kind)
    records = [
        ImageRecord(
            image_path=e["path"], key=key, patient_id=e["patient"], label=worst_label(e["labels"]),
            laterality=e["laterality"], view=e["view"], boxes=e["boxes"], official_split=e["split"],
            extra={"abnormality_types": sorted(e["kinds"]), "breast_density": e["density"]},
        )
        for key, e in reader.images.items()
    ]
    return Conversion(records, reader.problems, input_root=reader.root)


@dataclass
class _Reader:
    """Collects the abnormality rows per image.

    Attributes:
        root: Root the CSV paths are relative to.
        images: Per image key (path relative to ``root``): path, patient, laterality, view, split, labels,
            boxes, abnormality kinds and density.
        sizes: ``(rows, columns)`` per image file already read.
        problems: Every problem met.
    """

    root: Path
    images: dict[str, dict] = field(default_factory=dict)
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def add_row(self, where: str, row: dict, split: str, kind: str) -> None:
        """One abnormality: its label goes to its image, its ROI mask's bounding box becomes a box."""
        pathology = _PATHOLOGY.get(clean_text(row["pathology"]).upper())
        if pathology is None:
            self.problems.append(Problem(where, f"pathology {clean_text(row['pathology'])!r} unknown", "skipped row"))
            return
        image_rel = clean_text(row["image file path"])
        image_path = _resolve(self.root, image_rel)
        if image_path is None:
            self.problems.append(Problem(f"{where} ({image_rel})", "image file not found"))
            return
        try:
            if image_path not in self.sizes:
                self.sizes[image_path] = _dicom_size(image_path)
        except Exception as exc:  # noqa: BLE001 - reported, the rest of the dataset goes on
            self.problems.append(Problem(f"{where} ({image_rel})", f"cannot read DICOM header: {exc}"))
            return
        size = self.sizes[image_path]
        root = self.root
        key = str(image_path.relative_to(root)) if image_path.is_relative_to(root) else str(image_path)
        entry = self.images.setdefault(key, {
            "path": image_path, "patient": clean_text(row["patient id"]),
            "laterality": normalise_laterality(row["left or right breast"]),
            "view": clean_text(row["image view"]).upper() or None, "split": split,
            "labels": [], "boxes": [], "kinds": set(),
            "density": clean_text(row.get("breast density")) or None,
        })
        entry["labels"].append(pathology)
        entry["kinds"].add(kind)
        box = self._mask_box(where, clean_text(row["roi mask file path"]), size)
        if box is not None:
            entry["boxes"].append(BoxRecord(*box, pathology=pathology, lesion_type=kind))

    def _mask_box(self, where: str, mask_rel: str, size: tuple[int, int]) -> Optional[tuple[int, int, int, int]]:
        """The ROI mask's bounding box; None (reported) when the mask is missing, unreadable, mis-sized or empty."""
        mask_path = _resolve(self.root, mask_rel, want_size=size)
        if mask_path is None:
            self.problems.append(Problem(f"{where} ({mask_rel})", "ROI mask not found (or not unique)", "skipped box"))
            return None
        try:
            mask = _read_mask(mask_path)
        except Exception as exc:  # noqa: BLE001
            self.problems.append(Problem(f"{where} ({mask_rel})", f"cannot read ROI mask: {exc}", "skipped box"))
            return None
        if tuple(mask.shape[:2]) != size:
            self.problems.append(Problem(
                f"{where} ({mask_rel})",
                f"ROI mask is {mask.shape[0]}x{mask.shape[1]} but the image is {size[0]}x{size[1]} "
                "(mis-sized or mis-linked mask)", "skipped box"))
            return None
        box = mask_box_xyxy(mask)
        if box is None:
            self.problems.append(Problem(f"{where} ({mask_rel})", "ROI mask is empty", "skipped box"))
        return box
