"""Breast-level aggregation: one score per (patient, study, laterality) from its views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mammodetr.inference.aggregate import AGGREGATES, group_scores

__all__ = ["BreastLevel", "aggregate_breasts"]


@dataclass
class BreastLevel:
    """Breast-level scores and labels.

    Attributes:
        keys: (M,) "patient|study|laterality" strings.
        scores: (M,) aggregated ``p_malignant``.
        labels: (M,) max of the views' labels.
        patient_ids: (M,) patient of each breast (for patient-level bootstrap).
        n_views: (M,) views per breast.
    """

    keys: list[str]
    scores: np.ndarray
    labels: np.ndarray
    patient_ids: list[str]
    n_views: np.ndarray


def aggregate_breasts(
    p_malignant,
    y_true,
    patient_ids: Sequence,
    study_ids: Sequence,
    lateralities: Sequence,
    how: str = "max",
) -> BreastLevel | None:
    """Aggregate image scores into breast scores.

    Images without laterality are left out. The study id may be missing (None): the patient's images of that
    side then form one breast.

    Args:
        p_malignant: (N,) image probabilities.
        y_true: (N,) image labels 0/1.
        patient_ids, study_ids, lateralities: (N,) metadata.
        how: "max" (default) or "mean".

    Returns:
        BreastLevel, or None when no image has a laterality.
    """
    if how not in AGGREGATES:
        raise ValueError(f"breast aggregation must be 'max' or 'mean', got {how!r}")
    p = np.asarray(p_malignant, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    keep = np.array([lat in ("L", "R") for lat in lateralities], dtype=bool)
    if not keep.any():
        return None
    keys = np.array([f"{pid}|{sid if sid is not None else ''}|{lat}"
                     for pid, sid, lat in zip(patient_ids, study_ids, lateralities)], dtype=object)[keep]
    uniq_list, scores, n_views = group_scores(p[keep], keys.astype(str), how)
    uniq, inv = np.unique(keys.astype(str), return_inverse=True)
    m = uniq.size
    labels = np.zeros(m, dtype=np.int64)
    np.maximum.at(labels, inv, y[keep])
    pids = [""] * m
    for k, pid in zip(inv, np.asarray(patient_ids, dtype=object)[keep]):
        pids[k] = str(pid)
    return BreastLevel(uniq_list, scores, labels, pids, n_views)
