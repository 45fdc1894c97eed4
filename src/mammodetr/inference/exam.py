"""Exams: the views of one screening study (R/L x CC/MLO), predicted per image, per breast and per exam.

Grouping: a DICOM file belongs to the exam of its Study Instance UID, any other file (or a DICOM without one) to
the exam of its folder; a table (CSV with ``image_path`` and any of ``laterality``, ``view``, ``study_id``,
``patient_id``) overrides both for the files it lists. Views: laterality and view from the table, else the DICOM
tags, else the file name (``LCC``, ``R_MLO``, ``LEFT_CC``, ...). A missing view is allowed and listed.

Identifiers: the Study Instance UID (and a table's study or patient id) only groups files and is never written
out. An exam is named after the folder its images share, as the user gave it, numbered ``#1``, ``#2``, ... in
file order when one folder holds several exams.

Scores: a breast's ``p_malignant`` is the max (or mean) of its views' (:func:`~mammodetr.inference.aggregate.
group_scores`, the rule ``evaluate`` uses for its breast-level metrics); the exam's is the max over its breasts.
An image without a laterality is reported but belongs to no breast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from mammodetr.data.converters.common import clean_text, read_csv_rows
from mammodetr.data.dicom import read_dicom_tags
from mammodetr.data.image import ImageReadError
from mammodetr.data.io import sniff_path
from mammodetr.data.laterality import normalise_laterality, view_from_name
from mammodetr.outputs import LineWriter

from .aggregate import group_scores
from .predictions import Prediction, PredictionError, prediction_to_json

__all__ = ["VIEW_SLOTS", "ExamImage", "Exam", "ExamOptions", "OperatingPoint", "BreastResult", "ExamResult",
           "operating_point", "read_exam_table", "group_exams", "aggregate_exam", "exam_records",
           "write_exam_records"]

# The four screening views, in hanging order: RCC LCC on top, RMLO LMLO below.
VIEW_SLOTS = ("RCC", "LCC", "RMLO", "LMLO")
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ExamImage:
    """One file of an exam.

    Attributes:
        path: the file, as given.
        laterality: ``"L"``/``"R"`` or None.
        view: ``"CC"``, ``"MLO"``, another ViewPosition (``"ML"``, ``"XCCL"``, ...) or None.
        source: where laterality and view came from: ``"table"``, ``"dicom"``, ``"file name"`` or ``""``.
    """

    path: Path
    laterality: Optional[str] = None
    view: Optional[str] = None
    source: str = ""

    @property
    def slot(self) -> Optional[str]:
        """``"RCC"``, ``"LCC"``, ``"RMLO"`` or ``"LMLO"`` for a standard view, else None."""
        slot = f"{self.laterality}{self.view}"
        return slot if slot in VIEW_SLOTS else None

    @property
    def label(self) -> str:
        """The view as a reader says it (``RCC``, ``LXCCL``; ``?`` for what is unknown)."""
        return f"{self.laterality or '?'}{self.view or '?'}"


@dataclass
class Exam:
    """The files of one exam.

    Attributes:
        exam_id: the exam's name in outputs: its folder as given (numbered when a folder holds several exams).
        images: its files, in input order.
        grouped_by: ``"study"`` (Study Instance UID), ``"folder"`` or ``"table"``.
    """

    exam_id: str
    images: list[ExamImage]
    grouped_by: str

    @property
    def views(self) -> dict[str, ExamImage]:
        """The image hung in each standard slot (the first of the exam's images for that slot)."""
        out: dict[str, ExamImage] = {}
        for im in self.images:
            if im.slot is not None and im.slot not in out:
                out[im.slot] = im
        return {s: out[s] for s in VIEW_SLOTS if s in out}

    @property
    def missing_views(self) -> list[str]:
        return [s for s in VIEW_SLOTS if s not in self.views]

    @property
    def extra_images(self) -> list[ExamImage]:
        """Images not hung in a standard slot: other views, repeats of a view, unknown laterality or view."""
        hung = {id(im) for im in self.views.values()}
        return [im for im in self.images if id(im) not in hung]


@dataclass(frozen=True)
class ExamOptions:
    """How image predictions become breast and exam results.

    Attributes:
        breast_aggregate: how a breast's score is made from its views' scores (max or mean); the exam's score is
            the max over its breasts.
        threshold: operating point on p_malignant: an image, breast or exam at or above it is called positive
            (none: the checkpoint's recorded operating threshold, else 0.5).
    """

    breast_aggregate: Literal["max", "mean"] = "max"
    threshold: Optional[float] = None

    def __post_init__(self) -> None:
        if self.breast_aggregate not in ("max", "mean"):
            raise ValueError(f"breast_aggregate must be 'max' or 'mean', got {self.breast_aggregate!r}")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold that turns a probability into a positive call, and where it came from."""

    threshold: float
    source: str


def operating_point(options: ExamOptions, meta: Mapping | None = None) -> OperatingPoint:
    """The operating point: the one given, else the checkpoint's ``operating_threshold`` (meta.json), else 0.5."""
    if options.threshold is not None:
        return OperatingPoint(float(options.threshold), "given")
    recorded = (meta or {}).get("operating_threshold")
    if isinstance(recorded, (int, float)) and 0.0 <= float(recorded) <= 1.0:
        return OperatingPoint(float(recorded), "checkpoint")
    return OperatingPoint(DEFAULT_THRESHOLD, "default (not chosen on validation data)")


@dataclass
class BreastResult:
    """One breast: the aggregate of its predicted views' probabilities."""

    laterality: str
    p_malignant: float
    images: list[ExamImage]


@dataclass
class ExamResult:
    """An exam's predictions: every image (or its error), each breast, and the exam.

    Attributes:
        exam: the exam.
        results: ``(image, prediction or error)`` in the exam's image order.
        breasts: right then left, for the breasts with at least one predicted view.
        p_malignant: max over the breasts; None when no predicted image has a laterality.
        aggregate: the breast aggregation used.
        operating_point: the threshold of the ``positive`` calls.
    """

    exam: Exam
    results: list[tuple[ExamImage, Prediction | PredictionError]]
    breasts: list[BreastResult]
    p_malignant: Optional[float]
    aggregate: str
    operating_point: OperatingPoint
    notes: list[str] = field(default_factory=list)


def read_exam_table(path: str | Path) -> dict[Path, dict]:
    """Read a table of exams: ``{resolved image path: {"exam", "laterality", "view"}}``.

    Columns (case-insensitive): ``image_path`` (required, relative to the table's folder or absolute), and any
    of ``laterality``, ``view``, ``study_id``, ``patient_id`` (the exam is the study, else the patient). The ids
    only group files; they are never written out.

    Raises:
        ValueError: the file is missing or has no ``image_path`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: exam table not found")
    rows: dict[Path, dict] = {}
    for _, _, row in read_csv_rows(path, ("image_path",), hint="; see docs/viewer.md"):
        rel = clean_text(row.get("image_path"))
        if not rel:
            continue
        key = clean_text(row.get("study_id")) or clean_text(row.get("patient_id")) or None
        view = clean_text(row.get("view")).upper() or None
        rows.setdefault((path.parent / rel).resolve(), {"exam": key, "laterality":
                                                        normalise_laterality(row.get("laterality")), "view": view})
    return rows


def _image_and_key(path: Path, table: Mapping[Path, dict] | None) -> tuple[ExamImage, tuple[str, str]]:
    """The image's view and the key of its exam (kind, value): table, else DICOM tags, else folder + file name."""
    folder = ("folder", str(path.parent))
    row = table.get(path.resolve()) if table else None
    if row is not None:
        key = ("table", row["exam"]) if row["exam"] else folder
        return ExamImage(path, row["laterality"], row["view"], "table"), key
    if sniff_path(path) == "dicom":
        try:
            tags = read_dicom_tags(path)
        except (ImageReadError, OSError):  # prediction will report the file's problem
            return ExamImage(path), folder
        key = ("study", tags.study_uid) if tags.study_uid else folder
        return ExamImage(path, tags.laterality, tags.view, "dicom" if tags.laterality or tags.view else ""), key
    laterality, view = view_from_name(path.stem)
    return ExamImage(path, laterality, view, "file name" if laterality else ""), folder


def _common_folder(paths: Sequence[Path], relative_to: Path | None) -> str:
    parents = [str(p.parent) for p in paths]
    try:
        folder = Path(os.path.commonpath(parents))
    except ValueError:  # absolute and relative paths mixed
        folder = Path(parents[0])
    if relative_to is not None:
        try:
            rel = folder.resolve().relative_to(relative_to.resolve())
            return relative_to.resolve().name if str(rel) == "." else rel.as_posix()
        except ValueError:
            pass
    return folder.as_posix()


def group_exams(files: Iterable[str | Path], table: Mapping[Path, dict] | None = None, *,
                relative_to: str | Path | None = None) -> list[Exam]:
    """Group image files into exams (see the module docstring), in the order of each exam's first file.

    Args:
        files: image files (folders already expanded, e.g. by ``collect_inputs``).
        table: from :func:`read_exam_table`, or None.
        relative_to: name exams by their folder relative to this one (the viewer's ``--images``).
    """
    groups: dict[tuple[str, str], list[ExamImage]] = {}
    for f in files:
        image, key = _image_and_key(Path(f), table)
        groups.setdefault(key, []).append(image)
    base = Path(relative_to) if relative_to is not None else None
    names = [_common_folder([im.path for im in images], base) for images in groups.values()]
    seen: dict[str, int] = {}
    exams = []
    for (kind, _), images, name in zip(groups, groups.values(), names):
        if names.count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}#{seen[name]}"
        exams.append(Exam(name, images, kind))
    return exams


def aggregate_exam(exam: Exam, predictions: Mapping[Path, Prediction | PredictionError], aggregate: str,
                   point: OperatingPoint) -> ExamResult:
    """Breast and exam results from the predictions of an exam's images (keyed by path)."""
    results = [(im, predictions[im.path]) for im in exam.images]
    done = [(im, p) for im, p in results if isinstance(p, Prediction) and im.laterality in ("L", "R")]
    breasts = []
    if done:
        keys, scores, _ = group_scores([p.p_malignant for _, p in done], [im.laterality for im, _ in done], aggregate)
        for lat in ("R", "L"):
            if lat in keys:
                members = [im for im, _ in done if im.laterality == lat]
                breasts.append(BreastResult(lat, float(scores[keys.index(lat)]), members))
    notes = []
    if not breasts:
        notes.append("no predicted image has a known laterality: no breast or exam score")
    p_exam = max(b.p_malignant for b in breasts) if breasts else None
    return ExamResult(exam, results, breasts, p_exam, aggregate, point, notes)


def _positive(p: Optional[float], point: OperatingPoint) -> Optional[bool]:
    return None if p is None else bool(p >= point.threshold)


def exam_records(result: ExamResult, name: Callable[[Path], str] = str) -> list[dict]:
    """JSON records of an exam: one ``image`` record per file (in the exam's order), one ``breast`` record per
    breast, one ``exam`` record (schema in docs/viewer.md). ``name`` gives a file's ``file_name``."""
    ex, op = result.exam, result.operating_point
    records = []
    for im, pred in result.results:
        rec = {"record": "image", "exam_id": ex.exam_id, "view": im.label, "laterality": im.laterality,
               **prediction_to_json(pred), "file_name": name(im.path)}
        if isinstance(pred, Prediction):
            rec["positive"] = _positive(pred.p_malignant, op)
        records.append(rec)
    for b in result.breasts:
        records.append({"record": "breast", "exam_id": ex.exam_id, "laterality": b.laterality,
                        "p_malignant": round(b.p_malignant, 6), "positive": _positive(b.p_malignant, op),
                        "aggregate": result.aggregate, "views": [im.label for im in b.images],
                        "file_names": [name(im.path) for im in b.images]})
    failed = [name(im.path) for im, p in result.results if isinstance(p, PredictionError)]
    records.append({
        "record": "exam", "exam_id": ex.exam_id,
        "p_malignant": None if result.p_malignant is None else round(result.p_malignant, 6),
        "positive": _positive(result.p_malignant, op), "threshold": op.threshold, "threshold_source": op.source,
        "breast_aggregate": result.aggregate, "exam_aggregate": "max over breasts", "grouped_by": ex.grouped_by,
        "views": {slot: name(im.path) for slot, im in ex.views.items()}, "missing_views": ex.missing_views,
        "other_images": [{"view": im.label, "file_name": name(im.path)} for im in ex.extra_images],
        "failed": failed, "n_images": len(ex.images), "notes": result.notes,
    })
    return records


def write_exam_records(path: str | Path, results: Iterable[ExamResult]) -> tuple[Path, dict[str, int]]:
    """Write exams as JSON lines, each exam flushed as soon as it is done; returns the path and counts
    (``exams``, ``images``, ``failed``).

    Raises:
        OutputWriteError: the file cannot be written; the message says how many exams were saved (complete).
    """
    counts = {"exams": 0, "images": 0, "failed": 0}
    with LineWriter(path, "exams") as out:
        for result in results:
            out.write("".join(json.dumps(rec) + "\n" for rec in exam_records(result)))
            counts["exams"] += 1
            counts["images"] += len(result.results)
            counts["failed"] += sum(isinstance(p, PredictionError) for _, p in result.results)
    return Path(path), counts
