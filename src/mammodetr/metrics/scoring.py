"""All metrics of ``metrics.md`` for one set of images and their predictions, as one nested dict.

The top-level keys are exactly those of ``metrics.md`` (``accuracy, auc, sensitivity, specificity, f1,
f1_weighted, iou, iou_top1, map50, map25, recall25``) plus the nested ``ci``, ``froc``, ``operating_points``,
``calibration``, ``breast_level``, ``subgroups`` and ``meta``. Values are fractions; undefined values (e.g. the
AUC of a single-class subgroup) are NaN here and ``null`` in JSON.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from mammodetr.data.ground_truth import LabelledImage
from mammodetr.inference.predictions import Prediction, PredictionSet

from .bootstrap import bootstrap_metrics
from .breast import aggregate_breasts
from .calibration import expected_calibration_error, reliability_data
from .classification import operating_points, roc_auc, threshold_metrics
from .detection import DetectionMatch, detection_metrics_weighted, match_detections
from .froc import froc

__all__ = ["TOP_LEVEL_KEYS", "EvaluationOptions", "EvaluationResult", "align_predictions", "compute_metrics"]

log = logging.getLogger(__name__)

TOP_LEVEL_KEYS = ("accuracy", "auc", "sensitivity", "specificity", "f1", "f1_weighted",
                  "iou", "iou_top1", "map50", "map25", "recall25")
DETECTION_KEYS = ("iou", "iou_top1", "map50", "map25", "recall25")


@dataclass
class EvaluationOptions:
    """How a split is scored (every field is recorded in ``meta``).

    Attributes:
        threshold: decision threshold on p_malignant.
        threshold_source: where the threshold came from (recorded in the report).
        val_threshold: also report metrics at this threshold (chosen on the validation split).
        val_threshold_source: where val_threshold came from.
        n_bootstrap: patient bootstrap resamples for the confidence intervals (0 = no CIs).
        level: confidence level of the intervals.
        seed: bootstrap seed.
        max_dets: boxes per image kept (K); default: the most any image has.
        images_with_boxes_only: detection metrics on images with ground-truth boxes only.
        froc_iou: IoU at which a FROC prediction hits a lesion.
        breast_aggregate: how a breast's score is made from its views' scores (max or mean).
        calibration_bins: equal-width bins of the expected calibration error.
    """

    threshold: float = 0.5
    threshold_source: str = "default"
    val_threshold: float | None = None
    val_threshold_source: str | None = None
    n_bootstrap: int = 2000
    level: float = 0.95
    seed: int = 0
    max_dets: int | None = None
    images_with_boxes_only: bool = False
    froc_iou: float = 0.25
    breast_aggregate: Literal["max", "mean"] = "max"
    calibration_bins: int = 10


@dataclass
class EvaluationResult:
    """Metrics plus the aligned per-image arrays the report and ``compare`` need."""

    metrics: dict
    images: list[LabelledImage]
    predictions: list[Prediction]
    per_image: list[dict] = field(default_factory=list)


@dataclass
class _Inputs:
    """Aligned arrays every metric step reads."""

    images: list[LabelledImage]
    predictions: list[Prediction]
    y: np.ndarray
    p: np.ndarray
    pids: list[str]
    gt: list[np.ndarray]
    boxes: list[np.ndarray]
    scores: list[np.ndarray]
    k: int
    match: DetectionMatch
    det_w: np.ndarray


def align_predictions(images: list[LabelledImage], preds: PredictionSet
                      ) -> tuple[list[LabelledImage], list[Prediction], list[str]]:
    """Pair dataset images with predictions by ``file_name``.

    Images whose prediction failed are dropped and listed; a dataset image with no line at all is an error.

    Returns:
        kept images, their predictions (same order), names of images dropped because prediction failed.
    """
    failed = {e.file_name for e in preds.errors}
    missing = [im.file_name for im in images if im.file_name not in preds.by_name and im.file_name not in failed]
    if missing:
        raise ValueError(f"predictions lack {len(missing)} of {len(images)} images of the split, e.g. "
                         f"{missing[:3]} (file_name must match the dataset's image file_name)")
    kept = [im for im in images if im.file_name in preds.by_name]
    dropped = [im.file_name for im in images if im.file_name in failed]
    if dropped:
        log.warning("%d images failed in prediction and are left out of the metrics, e.g. %s",
                    len(dropped), dropped[:3])
    return kept, [preds.by_name[im.file_name] for im in kept], dropped


def _inputs(images: Sequence[LabelledImage], predictions: Sequence[Prediction], options: EvaluationOptions) -> _Inputs:
    images, predictions = list(images), list(predictions)
    if len(images) != len(predictions):
        raise ValueError("images and predictions must align one to one")
    gt = [im.boxes_xyxy_px for im in images]
    boxes = [pr.boxes_xyxy_px for pr in predictions]
    scores = [pr.scores for pr in predictions]
    k = options.max_dets if options.max_dets is not None else max((len(s) for s in scores), default=0)
    match = match_detections(gt, boxes, scores, max_dets=k)
    det_w = (match.n_gt > 0).astype(np.float64) if options.images_with_boxes_only else np.ones(len(images))
    return _Inputs(images, predictions, np.array([im.label for im in images], dtype=np.int64),
                   np.array([pr.p_malignant for pr in predictions], dtype=np.float64),
                   [im.patient_id for im in images], gt, boxes, scores, k, match, det_w)


def _headline(x: _Inputs, t: float) -> dict:
    metrics = {**threshold_metrics(x.y, x.p, t), "auc": roc_auc(x.y, x.p)}
    det = detection_metrics_weighted(x.match, x.det_w[None, :])
    metrics.update({key: float(det[key][0]) for key in DETECTION_KEYS})
    return {key: metrics[key] for key in TOP_LEVEL_KEYS}


def _confidence_intervals(x: _Inputs, options: EvaluationOptions) -> dict:
    if options.n_bootstrap <= 0:
        return {}
    boot = bootstrap_metrics(x.y, x.p, x.pids, threshold=options.threshold, match=x.match, detection_weights=x.det_w,
                             n_resamples=options.n_bootstrap, level=options.level, seed=options.seed)
    ci = {key: val for key, val in boot.intervals().items() if key in TOP_LEVEL_KEYS}
    return {**ci, "level": options.level, "n_resamples": options.n_bootstrap, "unit": "patient"}


def _froc(x: _Inputs, options: EvaluationOptions) -> dict:
    sel = [i for i in range(len(x.images)) if x.det_w[i] > 0]
    out: dict = {}
    for crit in ("iou", "center"):
        fr = froc([x.gt[i] for i in sel], [x.boxes[i] for i in sel], [x.scores[i] for i in sel],
                  criterion=crit, iou_threshold=options.froc_iou, max_dets=x.k)
        out[crit] = fr.to_dict()
    out["primary"] = "iou"
    return out


def _operating_points(x: _Inputs, options: EvaluationOptions) -> dict:
    ops = operating_points(x.y, x.p) if 0 < x.y.sum() < x.y.size else {}
    if options.val_threshold is not None:
        vt = threshold_metrics(x.y, x.p, options.val_threshold)
        ops["val_threshold"] = {"threshold": options.val_threshold, "source": options.val_threshold_source, **vt}
    return ops


def _calibration(x: _Inputs, options: EvaluationOptions) -> dict:
    return {"ece": expected_calibration_error(x.y, x.p, options.calibration_bins), "n_bins": options.calibration_bins,
            "reliability": reliability_data(x.y, x.p, options.calibration_bins)}


def _breast_level(x: _Inputs, options: EvaluationOptions) -> dict | None:
    breast = aggregate_breasts(x.p, x.y, x.pids, [im.study_id for im in x.images],
                               [im.laterality for im in x.images], how=options.breast_aggregate)
    if breast is None:
        return None
    out = {"aggregate": options.breast_aggregate, "n_breasts": len(breast.keys),
           "n_malignant": int(breast.labels.sum()), "auc": roc_auc(breast.labels, breast.scores),
           **threshold_metrics(breast.labels, breast.scores, options.threshold)}
    if options.n_bootstrap > 0 and 0 < breast.labels.sum() < breast.labels.size:
        bb = bootstrap_metrics(breast.labels, breast.scores, breast.patient_ids, threshold=options.threshold,
                               n_resamples=options.n_bootstrap, level=options.level, seed=options.seed)
        out["ci"] = {"auc": bb.intervals()["auc"]}
    return out


def _subgroup_metrics(x: _Inputs, mask: np.ndarray, threshold: float) -> dict:
    y_s, p_s = x.y[mask], x.p[mask]
    out = {"n_images": int(mask.sum()), "n_malignant": int(y_s.sum())}
    tm = threshold_metrics(y_s, p_s, threshold) if mask.any() else {}
    out.update({k: tm.get(k, math.nan) for k in ("accuracy", "sensitivity", "specificity")})
    out["auc"] = roc_auc(y_s, p_s) if mask.any() else math.nan
    dm = detection_metrics_weighted(x.match, (x.det_w * mask)[None, :])
    out["n_lesions"] = int(x.match.n_gt[mask].sum())
    out.update({k: float(dm[k][0]) for k in ("map25", "map50", "recall25", "iou_top1")})
    return out


def _subgroups(x: _Inputs, options: EvaluationOptions) -> dict:
    out: dict = {}
    for attr in ("view", "density"):
        values = [getattr(im, attr) for im in x.images]
        uniq = sorted({v for v in values if v not in (None, "")})
        if uniq:
            arr = np.array([v if v is not None else "" for v in values], dtype=object)
            out[attr] = {v: _subgroup_metrics(x, arr == v, options.threshold) for v in uniq}
    out["lesion_size"] = _lesion_size_table(x.match, x.det_w > 0)
    return out


def _lesion_size_table(match: DetectionMatch, det_mask: np.ndarray) -> dict:
    """Lesion-level recall@0.25 and best IoU by lesion size (tertiles of sqrt(box area) in pixels)."""
    valid = match.gt_valid & det_mask[:, None]
    if not valid.any():
        return {}
    b = match.gt_boxes[valid]
    size = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
    hit = match.gt_hit[0.25][valid]
    best = match.gt_best_iou[valid]
    edges = np.quantile(size, [1 / 3, 2 / 3]) if size.size >= 3 else np.array([np.inf, np.inf])
    groups = np.digitize(size, edges, right=True)
    out = {"edges_px": [float(e) for e in edges if np.isfinite(e)], "basis": "tertiles of sqrt(box area), pixels"}
    for gi, name in enumerate(("small", "medium", "large")):
        m = groups == gi
        if m.any():
            out[name] = {"n_lesions": int(m.sum()), "recall25": float(hit[m].mean()), "iou": float(best[m].mean()),
                         "size_px_min": float(size[m].min()), "size_px_max": float(size[m].max())}
    return out


def _meta(x: _Inputs, options: EvaluationOptions, extra: dict | None) -> dict:
    n_gt = x.match.n_gt
    return {
        "n_images": len(x.images), "n_patients": len(set(x.pids)), "n_malignant": int(x.y.sum()),
        "n_benign_or_normal": int((1 - x.y).sum()), "n_lesions": int(n_gt.sum()),
        "n_images_with_boxes": int((n_gt > 0).sum()),
        "threshold": options.threshold, "threshold_source": options.threshold_source, "max_dets": x.k,
        "detection_images": "with_boxes" if options.images_with_boxes_only else "all",
        "froc_iou": options.froc_iou, "breast_aggregate": options.breast_aggregate,
        "paper_iou_compared_with": "iou_top1",
        "options": asdict(options),
        **(extra or {}),
    }


def _per_image(x: _Inputs) -> list[dict]:
    n_gt = x.match.n_gt
    return [{"file_name": im.file_name, "patient_id": im.patient_id, "label": int(im.label),
             "p_malignant": float(pr.p_malignant), "n_gt": int(n_gt[i]),
             "top1_iou": None if n_gt[i] == 0 else float(x.match.top1_iou[i]),
             "matched25": int(x.match.gt_matched[0.25][i])}
            for i, (im, pr) in enumerate(zip(x.images, x.predictions))]


def compute_metrics(images: Sequence[LabelledImage], predictions: Sequence[Prediction], options: EvaluationOptions,
                    *, meta: dict | None = None) -> EvaluationResult:
    """All metrics of ``metrics.md`` for aligned images and predictions.

    Args:
        images: ground truth, N images.
        predictions: predictions for the same N images, same order (boxes in the images' pixels).
        options: thresholds, bootstrap size, K, ...
        meta: extra entries merged into ``meta`` (checkpoint, hashes, split ...).
    """
    x = _inputs(images, predictions, options)
    metrics = _headline(x, options.threshold)
    metrics.update({"ci": _confidence_intervals(x, options), "froc": _froc(x, options),
                    "operating_points": _operating_points(x, options), "calibration": _calibration(x, options),
                    "breast_level": _breast_level(x, options), "subgroups": _subgroups(x, options),
                    "meta": _meta(x, options, meta)})
    return EvaluationResult(metrics, x.images, x.predictions, _per_image(x))
