"""Prediction files: JSON lines, one object per image.

Each line is ``{"file_name": str, "p_malignant": float, "boxes": [[x1, y1, x2, y2], ...], "scores": [...],
"warnings": [str, ...]}`` (boxes in pixels of the image named by ``file_name``; ``warnings`` lists what made the
input doubtful, :mod:`mammodetr.inference.quality`), or ``{"file_name": str, "error": str}`` for an image that
could not be processed. Files written by ``predict --exam`` also hold ``breast`` and ``exam`` records
(``"record"`` field, docs/viewer.md); :func:`read_predictions` reads their image records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammodetr.outputs import LineWriter

__all__ = ["Prediction", "PredictionError", "PredictionSet", "read_predictions", "write_predictions",
           "prediction_to_json"]


@dataclass
class Prediction:
    """One image's prediction.

    Attributes:
        file_name: image name (dataset ``file_name`` or input path).
        p_malignant: probability of malignancy.
        boxes_xyxy_px: (K, 4) float64 boxes in the image's pixels.
        scores: (K,) objectness scores.
        extra: more fields of its line (``overlay``, ``dicom_sr``: the files written for it).
        warnings: ``"code: detail"`` for each doubt about the input (blank, tiny, no breast found, unusual
            photometric; :func:`mammodetr.inference.quality.input_warnings`). Empty when there is none.
    """

    file_name: str
    p_malignant: float
    boxes_xyxy_px: np.ndarray
    scores: np.ndarray
    extra: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class PredictionError:
    """An image the predictor could not process."""

    file_name: str
    error: str


@dataclass
class PredictionSet:
    """Predictions keyed by file name, plus the images that failed."""

    by_name: dict[str, Prediction]
    errors: list[PredictionError]


def prediction_to_json(pred: Prediction | PredictionError) -> dict:
    """JSON object for one line (floats rounded to 6 decimals to keep files small and diffable)."""
    if isinstance(pred, PredictionError):
        return {"file_name": pred.file_name, "error": pred.error}
    out = {
        "file_name": pred.file_name,
        "p_malignant": round(float(pred.p_malignant), 6),
        "boxes": [[round(float(v), 3) for v in b] for b in np.asarray(pred.boxes_xyxy_px).reshape(-1, 4)],
        "scores": [round(float(s), 6) for s in np.asarray(pred.scores).reshape(-1)],
        "warnings": list(pred.warnings),
    }
    out.update(pred.extra)
    return out


def write_predictions(path: str | Path, preds: Iterable[Prediction | PredictionError]) -> Path:
    """Write predictions as JSON lines, each line flushed as it comes (``preds`` may be a generator, so a long
    run keeps what it has done when it stops); returns the path.

    Raises:
        OutputWriteError: the file cannot be written (disk full, read-only); the message says how many lines
            were saved, and those lines are complete.
    """
    with LineWriter(path, "predictions") as out:
        for p in preds:
            out.write(json.dumps(prediction_to_json(p)) + "\n")
    return Path(path)


def _parse(obj: dict, where: str) -> Prediction | PredictionError:
    if not isinstance(obj, dict) or not isinstance(obj.get("file_name"), str):
        raise ValueError(f"{where}: each line must be an object with a string 'file_name'")
    name = obj["file_name"]
    if "error" in obj:
        return PredictionError(name, str(obj["error"]))
    try:
        p = float(obj["p_malignant"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: '{name}' has no numeric 'p_malignant'") from None
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise ValueError(f"{where}: '{name}' has p_malignant={p}, outside [0, 1]")
    try:
        boxes = np.asarray(obj.get("boxes", []), dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(obj.get("scores", []), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: '{name}' boxes must be [[x1, y1, x2, y2], ...] and scores a list of numbers"
        ) from None
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{where}: '{name}' has {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"{where}: '{name}' has NaN or infinite boxes/scores")
    inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if inverted.size:
        # pycocotools would score it as a false positive without a word: a silent wrong result.
        box = [float(v) for v in boxes[inverted[0]]]
        raise ValueError(f"{where}: '{name}' box {int(inverted[0])} {box} is inverted (x2 < x1 or y2 < y1; boxes "
                         f"are [x1, y1, x2, y2]); {inverted.size} such box(es) on this line")
    warnings = obj.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise ValueError(f"{where}: '{name}' 'warnings' must be a list of strings")
    extra = {k: v for k, v in obj.items() if k not in ("file_name", "p_malignant", "boxes", "scores", "warnings")}
    return Prediction(name, p, boxes, scores, extra, list(warnings))


def read_predictions(path: str | Path) -> PredictionSet:
    """Read a predictions JSON-lines file.

    Raises:
        ValueError: naming the file and line for malformed content or a duplicated file name.
    """
    path = Path(path)
    by_name: dict[str, Prediction] = {}
    errors: list[PredictionError] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if isinstance(obj, dict) and obj.get("record", "image") != "image":
                continue  # breast and exam records of ``predict --exam`` (inference/exam.py)
            rec = _parse(obj, where)
            if rec.file_name in by_name or any(e.file_name == rec.file_name for e in errors):
                raise ValueError(f"{where}: '{rec.file_name}' appears more than once")
            if isinstance(rec, PredictionError):
                errors.append(rec)
            else:
                by_name[rec.file_name] = rec
    return PredictionSet(by_name, errors)
