"""Typed records that every converter produces and ``prepare`` consumes.

A converter turns a dataset's own format into a list of :class:`ImageRecord` (one per image, boxes in ORIGINAL
image pixels, xyxy, top-left origin) plus a list of :class:`Problem` (one per row/file it had to skip or fix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

LABELS = ("normal", "benign", "malignant")
_LABEL_RANK = {name: i for i, name in enumerate(LABELS)}
SPLITS = ("train", "val", "test")
# The action of a CSV row dropped because it repeats an earlier row cell for cell (counted in prepare's report).
DUPLICATE_ROW = "dropped duplicate row"


def worst_label(labels) -> Optional[str]:
    """The most severe of ``labels`` (malignant > benign > normal); None for an empty input."""
    labels = [lab for lab in labels if lab is not None]
    return max(labels, key=_LABEL_RANK.__getitem__) if labels else None


def check_label(label: str) -> str:
    if label not in _LABEL_RANK:
        raise ValueError(f"label {label!r} is not one of {', '.join(LABELS)}")
    return label


@dataclass
class BoxRecord:
    """One lesion box in original image pixels (xyxy, top-left origin, end-exclusive like a pixel span).

    Attributes:
        x1, y1, x2, y2: corners; may be NaN or outside the image — ``prepare`` checks and reports those.
        pathology: "benign" | "malignant" | None (unknown).
        lesion_type: free text from the source (e.g. "mass", "CALC"), or None.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    pathology: Optional[str] = None
    lesion_type: Optional[str] = None

    def as_list(self) -> list[float]:
        return [float(self.x1), float(self.y1), float(self.x2), float(self.y2)]


@dataclass
class ImageRecord:
    """One image as a converter found it.

    Attributes:
        image_path: absolute path of the source image.
        key: the source's own image identifier (a path relative to the input, a COCO id, an image uid); two
            records with the same key are duplicates.
        patient_id: the source's patient group id. It stays in memory: ``prepare`` writes only its keyed hash
            (:meth:`~mammodetr.data.id_key.IdKey.pseudonym`) and problems name rows and files, never patients.
        label: image label, "normal" | "benign" | "malignant".
        laterality: "L" | "R" | None (from the table; the image tag is used when this is None).
        view: "CC" | "MLO" | ... | None.
        study_id: opaque exam identifier or None.
        boxes: lesion boxes in original pixels.
        official_split: "train" | "val" | "test" when the dataset defines one, else None.
        extra: source-specific fields kept in annotations.json (never patient identifiers).
    """

    image_path: Path
    key: str
    patient_id: str
    label: str
    laterality: Optional[str] = None
    view: Optional[str] = None
    study_id: Optional[str] = None
    boxes: list[BoxRecord] = field(default_factory=list)
    official_split: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        check_label(self.label)


@dataclass(frozen=True)
class Problem:
    """A problem found in the input: ``where`` names the file (and row), ``what`` says what is wrong.

    Attributes:
        where: The file (and row) the problem is in, as the person running ``prepare`` knows it.
        what: What is wrong.
        action: What happened: "skipped image", "skipped box", "clipped box", "used first", "note", ...
        paths: Every source path (as written in ``where``/``what``) that must not reach the dataset folder: the
            line on the terminal names them, :meth:`to_dict` replaces each with its keyed hash.
    """

    where: str
    what: str
    action: str = "skipped image"
    paths: tuple[str, ...] = ()

    def line(self) -> str:
        return f"{self.where}: {self.what} ({self.action})"

    def to_dict(self, hide: Callable[[str], str] | None = None) -> dict:
        """``{"file", "problem", "action"}``; with ``hide``, each path of :attr:`paths` becomes ``hide(path)``."""
        where, what = self.where, self.what
        if hide is not None:
            for path in sorted({p for p in self.paths if p}, key=len, reverse=True):
                hidden = hide(path)
                where, what = where.replace(path, hidden), what.replace(path, hidden)
        return {"file": where, "problem": what, "action": self.action}


@dataclass
class Conversion:
    """What a converter returns: the usable images and every problem met on the way.

    Attributes:
        records: One per usable image.
        problems: Every row or file the converter had to skip or fix.
        source: The converter's name (set by :func:`mammodetr.data.converters.convert`).
        input_root: Folder that image paths are reported relative to.
        summary: What the converter decided about the input as a whole, JSON-able (e.g. CBIS-DDSM: the download
            layout used, how many duplicate views were merged); ``prepare`` copies it into its report.
    """

    records: list[ImageRecord]
    problems: list[Problem] = field(default_factory=list)
    source: str = ""
    input_root: Optional[Path] = None
    summary: dict = field(default_factory=dict)
