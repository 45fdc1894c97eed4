"""Image-level classification metrics (positive class = malignant), vectorised numpy.

Definitions follow ``metrics.md``: ``accuracy``, ``sensitivity``, ``specificity``, ``f1`` (malignant class),
``f1_weighted`` (support-weighted over both classes) at a threshold ``t`` (``p >= t`` is positive), the ROC AUC
(Mann-Whitney statistic with ties counted 1/2) and operating points read off the empirical ROC curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ConfusionCounts",
    "confusion_counts",
    "threshold_metrics",
    "roc_auc",
    "roc_curve",
    "pr_curve",
    "operating_points",
]


@dataclass(frozen=True)
class ConfusionCounts:
    """Counts of a binary decision; fields may be floats when the samples are weighted."""

    tp: float
    fp: float
    tn: float
    fn: float


def _as_binary(y_true) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (benign/normal) or 1 (malignant)")
    return y.astype(bool)


def _as_scores(scores, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"scores must have shape ({n},), got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s


def _safe_div(a, b):
    """a / b with NaN where b == 0 (a metric with no support is undefined, not 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def confusion_counts(y_true, p_malignant, threshold: float = 0.5) -> ConfusionCounts:
    """Confusion counts with ``p >= threshold`` predicted malignant.

    Args:
        y_true: (N,) 0/1 labels.
        p_malignant: (N,) scores.
        threshold: decision threshold.
    """
    y = _as_binary(y_true)
    pred = _as_scores(p_malignant, y.size) >= threshold
    return ConfusionCounts(
        tp=float(np.sum(pred & y)), fp=float(np.sum(pred & ~y)),
        tn=float(np.sum(~pred & ~y)), fn=float(np.sum(~pred & y)),
    )


def metrics_from_counts(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """Threshold metrics from (possibly weighted, possibly batched) confusion counts.

    All arguments broadcast together (e.g. shape (B,) for B bootstrap resamples).

    Returns:
        dict with ``accuracy``, ``sensitivity``, ``specificity``, ``f1``, ``f1_weighted`` (arrays, NaN when a
        denominator is zero).
    """
    tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))
    n = tp + fp + tn + fn
    pos = tp + fn
    neg = tn + fp
    f1_pos = _safe_div(2 * tp, 2 * tp + fp + fn)
    f1_neg = _safe_div(2 * tn, 2 * tn + fn + fp)
    # sklearn's convention: a class with zero precision and recall denominators scores F1 = 0, not NaN.
    f1_pos = np.where(2 * tp + fp + fn > 0, f1_pos, 0.0)
    f1_neg = np.where(2 * tn + fn + fp > 0, f1_neg, 0.0)
    return {
        "accuracy": _safe_div(tp + tn, n),
        "sensitivity": _safe_div(tp, pos),
        "specificity": _safe_div(tn, neg),
        "f1": f1_pos,
        "f1_weighted": _safe_div(pos * f1_pos + neg * f1_neg, n),
    }


def threshold_metrics(y_true, p_malignant, threshold: float = 0.5) -> dict[str, float]:
    """``accuracy, sensitivity, specificity, f1, f1_weighted`` at ``p >= threshold``.

    Args:
        y_true: (N,) 0/1 labels (1 = malignant).
        p_malignant: (N,) predicted malignancy probabilities.
        threshold: decision threshold.
    """
    c = confusion_counts(y_true, p_malignant, threshold)
    return {k: float(v) for k, v in metrics_from_counts(c.tp, c.fp, c.tn, c.fn).items()}


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties between classes count 1/2).

    Args:
        y_true: (N,) 0/1 labels.
        scores: (N,) scores, higher = more malignant.

    Returns:
        AUC, or NaN when only one class is present.
    """
    y = _as_binary(y_true)
    s = _as_scores(scores, y.size)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(s)  # midranks handle ties exactly
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve, one point per distinct score (descending), starting at (0, 0).

    Returns:
        ``fpr (M+1,)``, ``tpr (M+1,)``, ``thresholds (M+1,)`` where ``thresholds[0] = +inf`` and point i is the
        decision ``score >= thresholds[i]``.
    """
    y = _as_binary(y_true)
    s = _as_scores(scores, y.size)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1] if s.size else np.array([], int)
    tps = np.cumsum(y_sorted)[last_of_group]
    fps = np.cumsum(~y_sorted)[last_of_group]
    n_pos, n_neg = max(int(y.sum()), 0), int((~y).sum())
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.r_[0.0, np.full(tps.size, np.nan)]
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.r_[0.0, np.full(fps.size, np.nan)]
    return fpr, tpr, np.r_[np.inf, s_sorted[last_of_group]]


def pr_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall points, one per distinct score (descending).

    Returns:
        ``precision (M,)``, ``recall (M,)``, ``thresholds (M,)``.
    """
    y = _as_binary(y_true)
    s = _as_scores(scores, y.size)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1] if s.size else np.array([], int)
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    fps = np.cumsum(~y_sorted)[last].astype(np.float64)
    n_pos = max(int(y.sum()), 1)
    return tps / np.maximum(tps + fps, 1), tps / n_pos, s_sorted[last]


def operating_points(
    y_true,
    scores,
    *,
    target_sensitivities=(0.90, 0.95),
    target_specificities=(0.90,),
) -> dict[str, dict[str, float]]:
    """Best specificity reachable at sensitivity >= each target, and best sensitivity at specificity >= target.

    Each entry also gives the threshold achieving it (``score >= threshold`` positive), so a threshold chosen on
    validation data can be applied to test data.

    Returns:
        ``{"spec_at_sens_0.90": {"value", "threshold", "sensitivity", "specificity"}, ...,
        "sens_at_spec_0.90": {...}}``; values are NaN when a class is missing.
    """
    fpr, tpr, thr = roc_curve(y_true, scores)
    spec = 1.0 - fpr
    out: dict[str, dict[str, float]] = {}
    for target in target_sensitivities:
        ok = np.nonzero(tpr >= target - 1e-12)[0]
        key = f"spec_at_sens_{target:.2f}"
        if ok.size == 0 or np.isnan(tpr).all() or np.isnan(fpr).all():
            out[key] = {"value": math.nan, "threshold": math.nan, "sensitivity": math.nan, "specificity": math.nan}
            continue
        i = ok[np.argmax(spec[ok])]
        out[key] = {"value": float(spec[i]), "threshold": float(thr[i]),
                    "sensitivity": float(tpr[i]), "specificity": float(spec[i])}
    for target in target_specificities:
        ok = np.nonzero(spec >= target - 1e-12)[0]
        key = f"sens_at_spec_{target:.2f}"
        if ok.size == 0 or np.isnan(tpr).all() or np.isnan(fpr).all():
            out[key] = {"value": math.nan, "threshold": math.nan, "sensitivity": math.nan, "specificity": math.nan}
            continue
        i = ok[np.argmax(tpr[ok])]
        out[key] = {"value": float(tpr[i]), "threshold": float(thr[i]),
                    "sensitivity": float(tpr[i]), "specificity": float(spec[i])}
    return out


def threshold_at_sensitivity(y_true, scores, target: float) -> float:
    """Largest threshold whose sensitivity is >= ``target`` (for choosing a threshold on validation data)."""
    fpr, tpr, thr = roc_curve(y_true, scores)
    ok = np.nonzero(tpr >= target - 1e-12)[0]
    if ok.size == 0:
        return math.nan
    return float(thr[ok[0]])
