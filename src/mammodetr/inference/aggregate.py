"""The one rule that turns view scores into a breast score: the max or the mean of its views' ``p_malignant``.

Exam-level prediction (:mod:`mammodetr.inference.exam`) and breast-level evaluation
(:mod:`mammodetr.metrics.breast`) both call :func:`group_scores`, so a breast scored by ``predict --exam`` gets
exactly the score ``evaluate`` gives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["AGGREGATES", "Aggregate", "group_scores"]

Aggregate = Literal["max", "mean"]
AGGREGATES = ("max", "mean")


def group_scores(scores, groups: Sequence[str], how: str = "max") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Aggregate scores per group.

    Args:
        scores: (N,) probabilities.
        groups: (N,) group key of each score.
        how: ``"max"`` or ``"mean"``.

    Returns:
        ``(keys, aggregated (M,) float64, n_members (M,) int64)``, keys sorted.

    Raises:
        ValueError: an unknown ``how``.
    """
    if how not in AGGREGATES:
        raise ValueError(f"breast aggregation must be 'max' or 'mean', got {how!r}")
    p = np.asarray(scores, dtype=np.float64).reshape(-1)
    uniq, inv = np.unique(np.asarray([str(g) for g in groups], dtype=str), return_inverse=True)
    m = uniq.size
    counts = np.bincount(inv, minlength=m)
    if how == "max":
        out = np.full(m, -np.inf)
        np.maximum.at(out, inv, p)
    else:
        out = np.bincount(inv, weights=p, minlength=m) / np.maximum(counts, 1)
    return uniq.tolist(), out, counts
