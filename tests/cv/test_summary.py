"""The per-fold table: mean and sample sd over the folds where a metric is defined."""

import math

import numpy as np

from mammodetr.cv.summary import FOLD_KEYS, fold_table, format_cv_summary, mean_sd


def _records():
    return [{"fold": i + 1, "n_images": 10, "n_patients": 3, "n_malignant": m,
             "metrics": {k: v for k, v in zip(FOLD_KEYS, vals, strict=True)}}
            for i, (m, vals) in enumerate([
                (2, [0.8, 0.5, 0.9, 0.8, 0.4, 0.6, 0.7, 0.5]),
                (0, [None, 0.0, 0.8, 0.8, 0.2, 0.3, 0.5, 0.4]),  # no malignant image: AUC undefined
                (1, [0.6, 1.0, 0.7, 0.7, float("nan"), 0.5, 0.6, 0.3])])]


def test_mean_and_sd_leave_undefined_values_out():
    mean, sd = mean_sd(_records())
    assert math.isclose(mean["auc"], 0.7) and math.isclose(sd["auc"], np.std([0.8, 0.6], ddof=1))
    assert math.isclose(mean["sensitivity"], 0.5) and math.isclose(sd["sensitivity"], 0.5)
    assert math.isclose(mean["map50"], 0.3) and math.isclose(sd["map50"], np.std([0.4, 0.2], ddof=1))
    one = mean_sd(_records()[:1])
    assert one[0]["auc"] == 0.8 and one[1]["auc"] is None  # one fold: no spread


def test_fold_table_rows():
    table = fold_table(_records())
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert len(rows) == 1 + 3 + 1  # header, folds, mean ± sd
    assert rows[2].startswith("| 2 | 10 | 3 | 0 | n/a |")
    assert "70.0 ± 14.1" in rows[-1]
    summary = {"folds": 3, "n_images": 30, "n_patients": 9, "pooled": {"auc": 0.71, "recall25": 0.5, "map25": 0.4},
               "pooled_ci": {"auc": {"low": 0.5, "high": 0.9}}, "report": "r.html", **dict(zip(
                   ("mean", "sd"), mean_sd(_records())))}
    text = format_cv_summary(summary)
    assert "AUC 71.0 (50.0-90.0)" in text and "AUC 70.0 ± 14.1" in text
