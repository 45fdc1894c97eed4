"""The per-fold table of a cross-validation: each fold's headline metrics, their mean and standard deviation."""

from __future__ import annotations

import math

import numpy as np

from mammodetr.evaluation.report import fmt_pct

__all__ = ["FOLD_KEYS", "mean_sd", "fold_table", "format_cv_summary"]

# Headline metrics of the per-fold table, with their column titles.
FOLD_KEYS = {"auc": "AUC", "sensitivity": "Sens", "specificity": "Spec", "accuracy": "Acc", "map50": "mAP@.5",
             "map25": "mAP@.25", "recall25": "R@.25", "iou_top1": "IoU top-1"}


def _finite(values) -> np.ndarray:
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def mean_sd(records: list[dict]) -> tuple[dict, dict]:
    """Per metric, the mean and the sample standard deviation (ddof 1) over the folds where it is defined.

    A metric undefined in a fold (e.g. the AUC of a fold without a malignant image) is left out of both; with
    fewer than two defined values the standard deviation is None.
    """
    mean, sd = {}, {}
    for key in FOLD_KEYS:
        v = _finite(r["metrics"].get(key) for r in records)
        mean[key] = float(v.mean()) if v.size else None
        sd[key] = float(v.std(ddof=1)) if v.size >= 2 else None
    return mean, sd


def _pm(m, s) -> str:
    if m is None:
        return "n/a"
    return f"{fmt_pct(m, 1)} ± {fmt_pct(s, 1)}" if s is not None and math.isfinite(s) else fmt_pct(m, 1)


def fold_table(records: list[dict]) -> str:
    """A Markdown section: one row per fold (its held-out images), then mean ± sd over the folds (in %)."""
    head = "| Fold | Images | Patients | Malignant images | " + " | ".join(FOLD_KEYS.values()) + " |"
    lines = ["## Cross-validation folds", "",
             "Each fold's model scored on the patients it held out (no bootstrap); the metrics above pool every "
             "fold's held-out predictions into one set.", "", head, "|---" * (4 + len(FOLD_KEYS)) + "|"]
    for r in records:
        cells = [fmt_pct(r["metrics"].get(k), 1) for k in FOLD_KEYS]
        lines.append(f"| {r['fold']} | {r['n_images']} | {r['n_patients']} | {r['n_malignant']} | "
                     + " | ".join(cells) + " |")
    mean, sd = mean_sd(records)
    lines.append("| mean ± sd | | | | " + " | ".join(_pm(mean[k], sd[k]) for k in FOLD_KEYS) + " |")
    return "\n".join(lines)


def format_cv_summary(summary: dict) -> str:
    """A few lines for the terminal: pooled metrics with CIs, then the per-fold mean ± sd."""
    ci = summary.get("pooled_ci", {})

    def pooled(key: str) -> str:
        v, c = summary["pooled"].get(key), ci.get(key)
        interval = f" ({fmt_pct(c['low'], 1)}-{fmt_pct(c['high'], 1)})" if c else ""
        return f"{FOLD_KEYS[key]} {fmt_pct(v, 1)}{interval}"

    lines = [f"cross-validation: {summary['folds']} folds, {summary['n_images']} images of "
             f"{summary['n_patients']} patients held out once each",
             "pooled (95% patient-bootstrap CI): " + ", ".join(pooled(k) for k in ("auc", "recall25", "map25")),
             "per fold, mean ± sd: " + ", ".join(f"{FOLD_KEYS[k]} {_pm(summary['mean'][k], summary['sd'][k])}"
                                                   for k in ("auc", "recall25", "map25")),
             f"report: {summary['report']}"]
    return "\n".join(lines)
