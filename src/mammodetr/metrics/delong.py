"""DeLong's test for two correlated ROC AUCs (DeLong, DeLong & Clarke-Pearson 1988), fast midrank form.

The structural components are computed with the O(N log N) midrank algorithm of Sun & Xu (2014, IEEE Signal
Processing Letters 21(11)): for each score set, midranks over positives, negatives and all samples give the
placement values V10 (per positive) and V01 (per negative) without the O(m n) pair loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DeLongResult", "delong_placements", "delong_covariance", "delong_test", "auc_ci_delong"]


@dataclass(frozen=True)
class DeLongResult:
    """Paired comparison of AUC_a and AUC_b on the same cases (difference = auc_a - auc_b)."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def _midrank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1)


def delong_placements(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong placement values for one or more score sets on the same cases.

    Args:
        y_true: (N,) 0/1 labels.
        scores: (N,) or (S, N) scores (S score sets, e.g. two models).

    Returns:
        ``auc (S,)``, ``v10 (S, m)`` (one per positive), ``v01 (S, n)`` (one per negative).
    """
    y = np.asarray(y_true).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != y.size:
        raise ValueError(f"scores have {s.shape[1]} cases, labels {y.size}")
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both positive and negative cases")
    tx, ty = _midrank(pos), _midrank(neg)
    tz = _midrank(np.concatenate([pos, neg], axis=1))
    auc = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n  # fraction of negatives below each positive (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # fraction of positives above each negative (ties 1/2)
    return auc, v10, v01


def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix S = S10/m + S01/n.

    Returns:
        ``auc (S,)``, ``cov (S, S)``.
    """
    auc, v10, v01 = delong_placements(y_true, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((auc.size, auc.size))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((auc.size, auc.size))
    return auc, s10 / m + s01 / n


def delong_test(y_true, scores_a, scores_b) -> DeLongResult:
    """Two-sided DeLong test of AUC_a == AUC_b for two models scored on the same cases.

    Args:
        y_true: (N,) 0/1 labels.
        scores_a: (N,) scores of model A.
        scores_b: (N,) scores of model B, same case order.
    """
    from scipy.stats import norm

    y = np.asarray(y_true).astype(bool)
    auc, cov = delong_covariance(y, np.stack([np.asarray(scores_a, float), np.asarray(scores_b, float)]))
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se > 0:
        z = diff / se
    else:  # identical rankings: no evidence of a difference (pROC's convention)
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    p = float(2 * norm.sf(abs(z)))
    return DeLongResult(float(auc[0]), float(auc[1]), diff, se, float(z), p, int(y.sum()), int((~y).sum()))


def auc_ci_delong(y_true, scores, level: float = 0.95) -> tuple[float, float, float, float]:
    """AUC with its DeLong standard error and a normal-approximation interval clipped to [0, 1].

    Returns:
        ``(auc, se, low, high)``.
    """
    from scipy.stats import norm

    auc, cov = delong_covariance(y_true, np.asarray(scores, float)[None])
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    q = norm.ppf(0.5 + level / 2)
    a = float(auc[0])
    return a, se, max(0.0, a - q * se), min(1.0, a + q * se)
