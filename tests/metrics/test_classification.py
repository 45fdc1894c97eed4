import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from mammodetr.metrics.classification import (
    operating_points,
    roc_auc,
    roc_curve,
    threshold_at_sensitivity,
    threshold_metrics,
)


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(y * 0.7, 1.0), 1)  # rounding creates many ties across classes
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_single_class_is_nan():
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


@pytest.mark.parametrize("t", [0.3, 0.5, 0.8])
def test_threshold_metrics_equal_sklearn(t):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 150)
    p = rng.random(150)
    m = threshold_metrics(y, p, t)
    pred = (p >= t).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=1))
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))


def test_threshold_is_inclusive():
    m = threshold_metrics([1, 0], [0.5, 0.49], 0.5)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0


def test_operating_points_match_brute_force():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    s = rng.normal(y, 1.0)
    ops = operating_points(y, s)
    best_spec = max((np.mean(s[y == 0] < t) for t in np.r_[s, np.inf] if np.mean(s[y == 1] >= t) >= 0.9))
    best_sens = max((np.mean(s[y == 1] >= t) for t in np.r_[s, np.inf] if np.mean(s[y == 0] < t) >= 0.9))
    assert ops["spec_at_sens_0.90"]["value"] == pytest.approx(best_spec)
    assert ops["sens_at_spec_0.90"]["value"] == pytest.approx(best_sens)
    thr = ops["spec_at_sens_0.90"]["threshold"]
    assert np.mean(s[y == 1] >= thr) >= 0.9
    t = threshold_at_sensitivity(y, s, 0.9)
    assert np.mean(s[y == 1] >= t) >= 0.9


def test_roc_curve_endpoints_and_trapezoid_equals_auc():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.random(80), 1)
    fpr, tpr, thr = roc_curve(y, s)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s))
