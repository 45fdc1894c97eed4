import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mammodetr.metrics.bootstrap import bootstrap_metrics, patient_weights, weighted_auc
from mammodetr.metrics.classification import roc_auc, threshold_metrics
from mammodetr.metrics.detection import detection_metrics, detection_metrics_weighted, match_detections

from ._coco_reference import random_case


def _data(n_patients, seed=0, views=2):
    rng = np.random.default_rng(seed)
    y_pat = rng.integers(0, 2, n_patients)
    y = np.repeat(y_pat, views)
    p = 1 / (1 + np.exp(-rng.normal(1.5 * (2 * y - 1), 1.5)))
    return y, p, np.repeat(np.arange(n_patients), views)


def test_weighted_auc_equals_sklearn_sample_weight():
    y, p, _ = _data(60)
    p = np.round(p, 1)
    w = np.random.default_rng(1).integers(0, 4, (4, y.size)).astype(float)
    np.testing.assert_allclose(weighted_auc(y, p, w), [roc_auc_score(y, p, sample_weight=wi) for wi in w], atol=1e-12)


def test_patient_weights_resample_whole_patients():
    pids = np.repeat(["a", "b", "c"], [1, 2, 3])
    w = patient_weights(pids, 50, np.random.default_rng(0))
    for row in w:  # all images of a patient share its draw count; P patients drawn in total
        assert len(set(row[pids == "b"])) == 1 and len(set(row[pids == "c"])) == 1
        assert row[0] + row[1] + row[3] == 3


def test_cis_contain_point_estimate_and_narrow_with_more_data():
    widths = []
    for n in (60, 960):
        y, p, pid = _data(n)
        r = bootstrap_metrics(y, p, pid, n_resamples=500, seed=1)
        ci = r.intervals()
        point = {**threshold_metrics(y, p, 0.5), "auc": roc_auc(y, p)}
        for k, v in point.items():
            assert ci[k]["low"] <= v <= ci[k]["high"], k
        widths.append(ci["auc"]["high"] - ci["auc"]["low"])
    assert widths[1] < widths[0] / 2  # 16x the patients: about 4x narrower


def test_single_class_resamples_are_redrawn_not_nan():
    y = np.zeros(40, dtype=int)
    y[0] = 1  # one malignant patient of 40: ~37% of plain resamples would hold no positive
    p = np.linspace(0.01, 0.99, 40)
    r = bootstrap_metrics(y, p, np.arange(40), n_resamples=300, seed=0)
    for k in ("auc", "sensitivity", "specificity"):
        assert np.isfinite(r.samples[k]).all(), k
    assert r.samples["auc"].size == 300


def test_weighted_detection_equals_duplicated_images():
    rng = np.random.default_rng(3)
    gts, preds, scores = random_case(rng, 12)
    match = match_detections(gts, preds, scores, max_dets=3)
    w = rng.integers(0, 3, 12)
    w[0] = max(w[0], 1)
    dup = np.repeat(np.arange(12), w)
    ref = detection_metrics([gts[i] for i in dup], [preds[i] for i in dup], [scores[i] for i in dup], max_dets=3)
    got = detection_metrics_weighted(match, w[None, :].astype(float))
    for k, v in ref.items():
        if np.isnan(v):
            assert np.isnan(got[k][0])
        else:
            assert got[k][0] == pytest.approx(v, abs=1e-9), k


def test_detection_cis_with_match():
    rng = np.random.default_rng(4)
    gts, preds, scores = random_case(rng, 40)
    y = np.array([int(len(g) > 0) for g in gts])
    p = rng.random(40)
    match = match_detections(gts, preds, scores, max_dets=3)
    r = bootstrap_metrics(y, p, np.arange(40) // 2, match=match, n_resamples=200)
    point = detection_metrics(gts, preds, scores, max_dets=3)
    ci = r.intervals()
    for k in ("map25", "map50", "recall25", "iou", "iou_top1"):
        assert ci[k]["low"] <= point[k] <= ci[k]["high"], k
