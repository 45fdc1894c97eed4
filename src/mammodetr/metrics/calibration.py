"""Calibration of ``p_malignant``: expected calibration error (equal-width bins) and reliability-diagram data."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["reliability_data", "expected_calibration_error"]


def reliability_data(y_true, p_malignant, n_bins: int = 10) -> dict[str, list]:
    """Per-bin counts, mean confidence and observed malignant fraction, ``n_bins`` equal-width bins on [0, 1].

    Bin i holds ``edges[i] <= p < edges[i+1]``; the last bin also holds ``p == 1``.

    Returns:
        dict with ``edges (n_bins+1)``, ``count``, ``mean_predicted``, ``fraction_positive`` (None for empty bins).
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(p_malignant, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must be matching 1-D arrays")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = sum_p / count
        frac = sum_y / count
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "mean_predicted": [None if c == 0 else float(v) for c, v in zip(count, mean_p)],
        "fraction_positive": [None if c == 0 else float(v) for c, v in zip(count, frac)],
    }


def expected_calibration_error(y_true, p_malignant, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) * |mean(p in b) - mean(y in b)| over ``n_bins`` equal-width bins.

    Args:
        y_true: (N,) 0/1 labels.
        p_malignant: (N,) probabilities in [0, 1].
        n_bins: number of equal-width bins.
    """
    rel = reliability_data(y_true, p_malignant, n_bins)
    n = sum(rel["count"])
    if n == 0:
        return math.nan
    return float(sum(c / n * abs(mp - fp) for c, mp, fp in
                     zip(rel["count"], rel["mean_predicted"], rel["fraction_positive"]) if c))
