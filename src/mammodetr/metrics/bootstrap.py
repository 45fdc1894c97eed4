"""Patient-level bootstrap confidence intervals, vectorised with weight matrices.

A resample draws P patients with replacement; an image's weight is the number of times its patient was drawn.
Every metric is then a weighted statistic of fixed per-image quantities, so B resamples are computed together
as (B, N) matrix operations instead of B Python-level recomputations. Resamples containing a single class are
redrawn (AUC, sensitivity and specificity would be undefined), never counted as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .classification import metrics_from_counts
from .detection import DetectionMatch, detection_metrics_weighted

__all__ = ["patient_weights", "weighted_auc", "BootstrapResult", "bootstrap_metrics", "percentile_ci"]


def patient_weights(
    patient_ids: Sequence,
    n_resamples: int,
    rng: np.random.Generator,
    *,
    y_true: np.ndarray | None = None,
    max_redraws: int = 1000,
) -> np.ndarray:
    """Image weights of ``n_resamples`` patient-level bootstrap resamples.

    Args:
        patient_ids: (N,) patient of each image (any hashable values).
        n_resamples: B.
        rng: random generator.
        y_true: (N,) 0/1 labels; when given and both classes exist in the data, resamples holding one class only
            are redrawn.
        max_redraws: give up (RuntimeError) after this many redraw rounds.

    Returns:
        (B, N) float64 weights (non-negative integers).
    """
    _, patient_index = np.unique(np.asarray(patient_ids, dtype=object).astype(str), return_inverse=True)
    n_pat = int(patient_index.max()) + 1 if patient_index.size else 0
    if n_pat == 0:
        raise ValueError("no images to resample")

    def draw(b: int) -> np.ndarray:
        idx = rng.integers(0, n_pat, size=(b, n_pat))
        counts = np.bincount((np.arange(b)[:, None] * n_pat + idx).ravel(), minlength=b * n_pat)
        return counts.reshape(b, n_pat)[:, patient_index].astype(np.float64)

    w = draw(n_resamples)
    if y_true is not None:
        y = np.asarray(y_true, dtype=np.float64)
        if 0 < y.sum() < y.size:
            for _ in range(max_redraws):
                pos = w @ y
                bad = (pos == 0) | (pos == w.sum(axis=1))
                if not bad.any():
                    break
                w[bad] = draw(int(bad.sum()))
            else:
                raise RuntimeError("could not draw resamples holding both classes; too few patients of one class")
    return w


def weighted_auc(y_true, scores, weights: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Mann-Whitney AUC (ties 1/2) for B weightings of the same cases.

    Args:
        y_true: (N,) 0/1 labels.
        scores: (N,) scores.
        weights: (B, N) non-negative case weights.

    Returns:
        (B,) AUC, NaN where a class has zero weight.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    w_all = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]
    group = np.cumsum(np.r_[0, (np.diff(s_sorted) != 0).astype(np.int64)])
    out = np.empty(w_all.shape[0])
    for c in range(0, w_all.shape[0], chunk):
        w = w_all[c:c + chunk][:, order]
        neg_w = w * ~y_sorted
        pos_w = w * y_sorted
        neg_g = np.add.reduceat(neg_w, starts, axis=1)
        credit = np.cumsum(neg_g, axis=1) - 0.5 * neg_g  # negatives strictly below + half the tied ones
        num = (pos_w * credit[:, group]).sum(axis=1)
        den = pos_w.sum(axis=1) * neg_w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c:c + chunk] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap values (NaN, NaN when none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(v, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


@dataclass
class BootstrapResult:
    """Per-metric bootstrap distributions and their percentile intervals."""

    samples: dict[str, np.ndarray]
    level: float
    n_resamples: int
    n_patients: int

    def intervals(self) -> dict[str, dict[str, float]]:
        """``{metric: {"low", "high", "se"}}`` (se = standard deviation of the bootstrap distribution)."""
        out = {}
        for k, v in self.samples.items():
            lo, hi = percentile_ci(v, self.level)
            fin = v[np.isfinite(v)]
            out[k] = {"low": lo, "high": hi, "se": float(fin.std(ddof=1)) if fin.size > 1 else math.nan}
        return out


def bootstrap_metrics(
    y_true,
    p_malignant,
    patient_ids: Sequence,
    *,
    threshold: float = 0.5,
    match: DetectionMatch | None = None,
    detection_weights: np.ndarray | None = None,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Patient-level bootstrap of the classification metrics (and the localisation metrics when ``match`` given).

    Args:
        y_true: (N,) 0/1 image labels.
        p_malignant: (N,) probabilities.
        patient_ids: (N,) patient of each image.
        threshold: decision threshold for the threshold metrics.
        match: per-image detection matching of the same N images (same order).
        detection_weights: (N,) 0/1 mask of images that enter the localisation metrics (e.g. images with boxes
            only); default all.
        n_resamples: B.
        level: interval coverage.
        seed: random seed.
    """
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(p_malignant, dtype=np.float64)
    rng = np.random.default_rng(seed)
    w = patient_weights(patient_ids, n_resamples, rng, y_true=y)
    pred = p >= threshold
    tp = w @ (pred & y)
    fp = w @ (pred & ~y)
    tn = w @ (~pred & ~y)
    fn = w @ (~pred & y)
    samples = {k: np.asarray(v) for k, v in metrics_from_counts(tp, fp, tn, fn).items()}
    samples["auc"] = weighted_auc(y, p, w)
    if match is not None:
        wd = w if detection_weights is None else w * np.asarray(detection_weights, dtype=np.float64)[None, :]
        samples.update(detection_metrics_weighted(match, wd))
    n_pat = len(set(map(str, patient_ids)))
    return BootstrapResult(samples, level, n_resamples, n_pat)
