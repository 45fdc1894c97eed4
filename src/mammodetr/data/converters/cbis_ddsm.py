"""CBIS-DDSM: four case-description CSVs, DICOM images, boxes from ROI masks.

One CSV row per abnormality. The mass CSVs spell the density column ``breast_density``, the calc CSVs
``breast density``; both are read. Path cells often carry trailing whitespace or line breaks; they are cleaned.
The folder the CSV paths start from is found among the usual ways of unpacking the TCIA download
(:mod:`~mammodetr.data.converters.cbis_layout`). An abnormality's box is the bounding box of the non-zero pixels of
its ROI mask DICOM, which must have the size of the full mammogram: a mask of another size is reported and its box
skipped, never rescaled (when the CSV's mask path names the cropped lesion image and exactly one file beside it has
the mammogram's size, that one is used and reported). BENIGN_WITHOUT_CALLBACK is benign. The official train/test
split (from the file name) is kept. A view stored under both a Mass- and a Calc- folder becomes one image carrying
every box (:mod:`~mammodetr.data.converters.cbis_views`) unless ``merge_duplicate_views=False``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from mammodetr.data.converters.cbis_layout import Layout, find_images_root, top_folder
from mammodetr.data.converters.cbis_views import DicomHeader
from mammodetr.data.converters.cbis_views import merge_duplicate_views as merge_views
from mammodetr.data.converters.common import clean_text, normalise_laterality, read_csv_rows
from mammodetr.data.dicom_redact import describe_error, quiet_pydicom
from mammodetr.data.records import BoxRecord, Conversion, ImageRecord, Problem, worst_label

_PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
_REQUIRED = ("patient id", "left or right breast", "image view", "pathology", "image file path",
             "roi mask file path")


def _norm_header(name: str) -> str:
    # "breast_density" (mass CSVs) and "breast density" (calc CSVs) become the same key.
    return re.sub(r"[\s_]+", " ", clean_text(name).lower())


def _dicom_header(path: Path) -> DicomHeader:
    import pydicom

    with quiet_pydicom():
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        uid = ds.get("SOPInstanceUID")
        return DicomHeader(int(ds.Rows), int(ds.Columns), str(uid) if uid else None)


def _dicom_size(path: Path) -> tuple[int, int]:
    return _dicom_header(path).size


def _size_or_none(path: Path) -> Optional[tuple[int, int]]:
    try:
        return _dicom_size(path)
    except Exception:  # noqa: BLE001 - an unreadable candidate is simply not a match
        return None


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
        candidates = [p for p in candidates if _size_or_none(p) == want_size]
    return candidates[0] if len(candidates) == 1 else None


def _same_size_sibling(path: Path, size: tuple[int, int]) -> Optional[Path]:
    """The only other DICOM beside ``path`` whose size is ``size`` (None when there is none or several)."""
    others = [p for p in sorted(path.parent.glob("*.dcm")) if p != path and _size_or_none(p) == size]
    return others[0] if len(others) == 1 else None


def mask_box_xyxy(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Bounding box (end-exclusive pixels) of the non-zero pixels of a 2-D mask; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _read_mask(path: Path) -> np.ndarray:
    import pydicom

    with quiet_pydicom():
        arr = pydicom.dcmread(str(path)).pixel_array
    if arr.ndim == 3:  # a mask stored with samples per pixel > 1
        arr = arr.max(axis=-1)
    return arr


def _csv_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv"
                   and "case_description" in p.name.lower())
    if not files:
        raise ValueError(f"{folder}: no CBIS-DDSM case-description CSVs (*case_description*.csv) found; --input is "
                         "the folder holding the four CSVs from the TCIA page (they are not inside the image download)")
    return files


def _read_rows(files: list[Path], problems: list[Problem]) -> list[tuple[str, dict, str, str]]:
    """Every abnormality row as ``(where, row, split, kind)``; split and kind come from the file name."""
    rows = []
    for csv_path in files:
        split = "test" if "test" in csv_path.name.lower() else "train"
        kind = "calc" if csv_path.name.lower().startswith("calc") else "mass"
        rows.extend((where, row, split, kind) for _, where, row in read_csv_rows(csv_path, _REQUIRED,
                                                                                 header=_norm_header,
                                                                                 problems=problems))
    return rows


def convert(input_path: Path, *, images_dir: str | Path | None = None, merge_duplicate_views: bool = True,
            **_options) -> Conversion:
    """Read CBIS-DDSM.

    Args:
        input_path: folder holding the case-description CSVs (or one CSV file).
        images_dir: root of the TCIA download tree the CSV paths are relative to (default: found among the usual
            layouts, see :mod:`~mammodetr.data.converters.cbis_layout`).
        merge_duplicate_views: fold the Mass- and Calc- copies of one view into one image (default); False keeps
            them apart, each with only its own boxes (to study masses or calcifications alone).

    Raises:
        ValueError: no CSV, or none of the image folders the CSVs name exists under any layout tried.
    """
    path = Path(input_path)
    files = [path] if path.is_file() else _csv_files(path) if path.is_dir() else []
    if not files:
        raise ValueError(f"{path}: not found")
    problems: list[Problem] = []
    rows = _read_rows(files, problems)
    tops = {top_folder(clean_text(row["image file path"])) for _, row, _, _ in rows}
    tops.discard("")
    layout = find_images_root(files[0].parent, tops, Path(images_dir) if images_dir else None)
    reader = _Reader(layout.root, problems=problems)
    for where, row, split, kind in rows:
        reader.add_row(where, row, split, kind)
    if layout.found < layout.named:
        reader.problems.append(Problem(str(layout.root), f"{layout.named - layout.found} of the {layout.named} image "
                                       "folders the CSVs name are missing (a partial download?)", "note",
                                       paths=(str(layout.root),)))
    images, merged = reader.images, 0
    if merge_duplicate_views:
        images, merged = merge_views(reader.images, reader.problems)
    records = [_record(key, e) for key, e in images.items()]
    return Conversion(records, reader.problems, input_root=layout.root,
                      summary=_summary(layout, merged, merge_duplicate_views))


def _record(key: str, e: dict) -> ImageRecord:
    extra = {"abnormality_types": sorted(e["kinds"]), "breast_density": e["density"]}
    if e.get("copies", 1) > 1:
        extra["copies_merged"] = e["copies"]
    return ImageRecord(
        image_path=e["path"], key=key, patient_id=e["patient"], label=worst_label(e["labels"]),
        laterality=e["laterality"], view=e["view"], boxes=e["boxes"], official_split=e["split"], extra=extra,
    )


def _summary(layout: Layout, merged: int, merging: bool) -> dict:
    return {
        "layout": f"CBIS-DDSM images: {layout.description}; {layout.found} of {layout.named} image folders found",
        "images_root": str(layout.root),
        "image_folders_found": layout.found,
        "image_folders_named": layout.named,
        "duplicate_views": "merged" if merging else "kept apart",
        "duplicate_views_merged": merged,
    }


@dataclass(frozen=True)
class _Where:
    """Where a problem is (``"<csv> row <n> (<path>)"``) and the source paths in that text."""

    text: str
    paths: tuple[str, ...]


@dataclass
class _Reader:
    """Collects the abnormality rows per image.

    Attributes:
        root: Root the CSV paths are relative to.
        images: Per image key (path relative to ``root``): path, patient, laterality, view, split, header,
            labels, boxes, abnormality kinds and density.
        headers: Header per image file already read.
        problems: Every problem met.
    """

    root: Path
    images: dict[str, dict] = field(default_factory=dict)
    headers: dict[Path, DicomHeader] = field(default_factory=dict)
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
            self.problems.append(Problem(f"{where} ({image_rel})", "image file not found", paths=(image_rel,)))
            return
        try:
            if image_path not in self.headers:
                self.headers[image_path] = _dicom_header(image_path)
        except Exception as exc:  # noqa: BLE001 - reported, the rest of the dataset goes on
            self.problems.append(Problem(f"{where} ({image_rel})",
                                         f"cannot read DICOM header ({describe_error(exc, image_path)})",
                                         paths=(image_rel,)))
            return
        header = self.headers[image_path]
        root = self.root
        key = str(image_path.relative_to(root)) if image_path.is_relative_to(root) else str(image_path)
        entry = self.images.setdefault(key, {
            "path": image_path, "patient": clean_text(row["patient id"]),
            "laterality": normalise_laterality(row["left or right breast"]),
            "view": clean_text(row["image view"]).upper() or None, "split": split, "header": header,
            "labels": [], "boxes": [], "kinds": set(),
            "density": clean_text(row.get("breast density")) or None,
        })
        entry["labels"].append(pathology)
        entry["kinds"].add(kind)
        mask_rel = clean_text(row["roi mask file path"])
        box = self._mask_box(_Where(f"{where} ({mask_rel})", (mask_rel,)), mask_rel, header.size)
        if box is not None:
            entry["boxes"].append(BoxRecord(*box, pathology=pathology, lesion_type=kind))

    def _problem(self, where: _Where, what: str, action: str, *paths: str) -> None:
        self.problems.append(Problem(where.text, what, action, paths=(*where.paths, *paths)))

    def _mask_box(self, where: _Where, mask_rel: str, size: tuple[int, int]) -> Optional[tuple[int, int, int, int]]:
        """The ROI mask's bounding box; None (reported) when the mask is missing, unreadable, mis-sized or empty."""
        mask_path = _resolve(self.root, mask_rel, want_size=size)
        if mask_path is None:
            self._problem(where, "ROI mask not found (or not unique)", "skipped box")
            return None
        mask = self._read(where, mask_path)
        if mask is not None and tuple(mask.shape[:2]) != size:
            mask = self._sibling_mask(where, mask_path, mask.shape[:2], size)
        if mask is None:
            return None
        box = mask_box_xyxy(mask)
        if box is None:
            self._problem(where, "ROI mask is empty", "skipped box")
        return box

    def _read(self, where: _Where, path: Path) -> Optional[np.ndarray]:
        try:
            return _read_mask(path)
        except Exception as exc:  # noqa: BLE001 - reported, the rest of the dataset goes on
            self._problem(where, f"cannot read ROI mask ({describe_error(exc, path)})", "skipped box")
            return None

    def _sibling_mask(self, where: _Where, path: Path, shape: tuple[int, int], size: tuple[int, int]
                      ) -> Optional[np.ndarray]:
        """A mask of the wrong size: the only image-sized file beside it, when there is one; else reported."""
        what = f"ROI mask is {shape[0]}x{shape[1]} but the image is {size[0]}x{size[1]}"
        sibling = _same_size_sibling(path, size)
        mask = None if sibling is None else self._read(where, sibling)
        if mask is None or tuple(mask.shape[:2]) != size:
            self._problem(where, f"{what} (mis-sized or mis-linked mask)", "skipped box")
            return None
        self._problem(where, f"{what} (the cropped lesion image?); used {sibling.name} beside it, the only file of "
                             "the image's size", "note", sibling.name)
        return mask
