"""Evaluation of one split: ground truth from a prepared dataset folder + predictions -> files a person keeps.

:func:`evaluate_predictions` is pure (ground truth + predictions -> metrics). :func:`evaluate_split` adds the
files: ``metrics.json`` (the keys of ``metrics.md``), ``per_image.jsonl`` (for paired comparisons), Grad-CAM
localisation scores when a model is given (``gradcam.json``), and the report. :func:`evaluate_checkpoint`
predicts the split first (``predictions.jsonl``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from mammodetr.atomic import to_jsonable, write_json, write_text_atomic
from mammodetr.checkpoint import file_sha256
from mammodetr.data.ground_truth import ANNOTATIONS, LabelledImage, load_split
from mammodetr.data.png16 import read_png16
from mammodetr.inference.predictions import PredictionSet, write_predictions
from mammodetr.inference.predictor import Predictor
from mammodetr.metrics.detection import match_detections
from mammodetr.metrics.scoring import EvaluationOptions, EvaluationResult, align_predictions, compute_metrics

from .localisation import localisation_scores
from .report import write_report

__all__ = ["evaluate_predictions", "write_metrics", "select_examples", "evaluate_split", "evaluate_checkpoint"]

log = logging.getLogger(__name__)


def evaluate_predictions(images: list[LabelledImage], predictions: PredictionSet, options: EvaluationOptions, *,
                         meta: dict | None = None) -> EvaluationResult:
    """Metrics of a split's predictions. Images whose prediction failed are left out and counted in ``meta``."""
    kept, aligned, dropped = align_predictions(images, predictions)
    meta = {**(meta or {}), "n_failed_predictions": len(dropped), "failed_predictions": dropped[:20]}
    return compute_metrics(kept, aligned, options, meta=meta)


def write_metrics(result: EvaluationResult, out_dir: str | Path) -> Path:
    """Write ``metrics.json`` and ``per_image.jsonl`` (for paired comparisons) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(to_jsonable(row)) + "\n" for row in result.per_image)
    write_text_atomic(out / "per_image.jsonl", lines)
    return write_json(out / "metrics.json", result.metrics)


def select_examples(result: EvaluationResult, n_per_kind: int = 2) -> list[tuple[int, str]]:
    """Indices of example images: found lesions (TP), missed lesions, false positives on lesion-free images.

    Returns:
        list of ``(image index, kind)`` with kind in ``"TP"``, ``"missed"``, ``"FP"``.
    """
    rows = result.per_image
    top = np.array([float(pr.scores.max()) if pr.scores.size else -1.0 for pr in result.predictions])
    tp = [i for i, r in enumerate(rows) if r["n_gt"] and r["matched25"] == r["n_gt"]]
    missed = [i for i, r in enumerate(rows) if r["n_gt"] and r["matched25"] < r["n_gt"]]
    fp = [i for i, r in enumerate(rows) if not r["n_gt"] and top[i] >= 0]
    tp.sort(key=lambda i: -top[i])
    missed.sort(key=lambda i: -rows[i]["p_malignant"])
    fp.sort(key=lambda i: -top[i])
    return ([(i, "TP") for i in tp[:n_per_kind]] + [(i, "missed") for i in missed[:n_per_kind]]
            + [(i, "FP") for i in fp[:n_per_kind]])


def _example_panels(result: EvaluationResult, data_dir: str | Path, picks: list[tuple[int, str]]) -> list[dict]:
    panels = []
    k = result.metrics["meta"]["max_dets"]
    for i, kind in picks:
        im, pr = result.images[i], result.predictions[i]
        try:
            pixels = read_png16(Path(data_dir) / im.file_name).astype(np.float32) / 65535.0
        except (ValueError, OSError) as e:
            log.warning("example image skipped: %s", e)
            continue
        order = np.argsort(-pr.scores, kind="mergesort")[:k]
        mt = match_detections([im.boxes_xyxy_px], [pr.boxes_xyxy_px], [pr.scores], max_dets=k, iou_thresholds=(0.25,))
        panels.append({"pixels": pixels, "gt": im.boxes_xyxy_px, "pred": pr.boxes_xyxy_px[order],
                       "scores": pr.scores[order], "matched": mt.gt_hit[0.25][0][: len(im.boxes_xyxy_px)],
                       "title": f"{kind}: {Path(im.file_name).name}\np={pr.p_malignant:.2f} label={im.label_name}"})
    return panels


def _gradcam_section(predictor: Predictor, data_dir: str | Path, result: EvaluationResult, out: Path,
                     n_overlays: int) -> tuple[str, list[dict]]:
    """Grad-CAM localisation scores (``gradcam.json``, ``meta.gradcam``): the report section and its panels."""
    try:
        loc = localisation_scores(predictor, data_dir, result.images, n_overlays=n_overlays)
    except ImportError as e:  # the metrics do not need Grad-CAM; say how to get it
        reason = f"the grad-cam package is not installed (pip install 'mammodetr[gradcam]'): {e}"
        log.warning("Grad-CAM localisation skipped: %s", reason)
        return f"## Grad-CAM localisation\n\nNot computed: {reason}", []
    except (ValueError, RuntimeError) as e:  # e.g. a model without the default target layer
        log.warning("Grad-CAM localisation skipped: %s", e)
        return f"## Grad-CAM localisation\n\nNot computed: {e}", []
    write_json(out / "gradcam.json", loc.summary)
    result.metrics["meta"]["gradcam"] = {**loc.summary, "file": "gradcam.json"}
    s = loc.summary
    text = (f"## Grad-CAM localisation\n\nOver {s['n_images']} images with boxes: pointing-game hit "
            f"rate {100 * s['pointing_game']:.1f}%, CAM energy inside the boxes "
            f"{100 * s['energy_in_box']:.1f}% (boxes cover {100 * s['box_area_fraction']:.1f}% of the "
            f"image area on average; a CAM spread uniformly would put that much energy inside). "
            f"Target layer: `{s['target_layer']}`.")
    return text, loc.overlays


def evaluate_split(data_dir: str | Path, out_dir: str | Path, predictions: PredictionSet, options: EvaluationOptions,
                   *, split: str | None = "test", source: dict | None = None, predictor: Predictor | None = None,
                   report: bool = True, n_gradcam: int = 4, extra_sections: list[str] | None = None
                   ) -> EvaluationResult:
    """Score one split's predictions and write ``metrics.json``, ``per_image.jsonl`` and the report.

    Args:
        data_dir: prepared dataset folder (ground truth).
        out_dir: output folder.
        predictions: the split's predictions (boxes in the prepared images' pixels).
        options: how to score.
        split: the split to score (None: every image).
        source: where the predictions came from (checkpoint, file, hashes), recorded in ``meta``.
        predictor: the model, when there is one: adds Grad-CAM localisation scores (``gradcam.json``).
        report: also write ``report.md`` and ``report.html``.
        n_gradcam: Grad-CAM overlay panels in the report.
        extra_sections: Markdown sections added to the report (e.g. ``mammodetr cv``'s per-fold table).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = load_split(data_dir, split)
    meta = {"split": split, "data_dir": str(data_dir), "data_hash": file_sha256(Path(data_dir) / ANNOTATIONS),
            **(source or {})}
    result = evaluate_predictions(images, predictions, options, meta=meta)
    sections, panels = list(extra_sections or []), []
    if predictor is not None:
        text, panels = _gradcam_section(predictor, data_dir, result, out, n_gradcam)
        sections.append(text)
    write_metrics(result, out)
    if report:
        write_report(result, out, examples=_example_panels(result, data_dir, select_examples(result)),
                     gradcams=panels, extra_sections=sections)
    return result


def evaluate_checkpoint(predictor: Predictor, data_dir: str | Path, out_dir: str | Path, options: EvaluationOptions,
                        *, split: str | None = "test", checkpoint: str | Path | None = None, report: bool = True,
                        n_gradcam: int = 4) -> EvaluationResult:
    """Predict a split with ``predictor`` (``predictions.jsonl``), then :func:`evaluate_split` with Grad-CAM.

    K (``options.max_dets``) defaults to the model's number of queries.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds = predictor.predict_prepared(data_dir, split)
    pred_path = write_predictions(out / "predictions.jsonl", [*preds.by_name.values(), *preds.errors])
    if options.max_dets is None:
        options = dataclasses.replace(options, max_dets=predictor.config.model.num_queries)
    source = {"checkpoint": str(checkpoint) if checkpoint is not None else "in-memory model",
              "predictions_hash": file_sha256(pred_path), "tta": "hflip" if predictor.tta else "none"}
    return evaluate_split(data_dir, out, preds, options, split=split, source=source, predictor=predictor,
                          report=report, n_gradcam=n_gradcam)
