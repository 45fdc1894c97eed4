import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from mammodetr.metrics.detection import average_precision, detection_metrics, match_detections

from ._coco_reference import coco_ap_recall, random_case


@pytest.mark.parametrize("seed", range(12))
def test_map_and_recall_equal_pycocotools(seed):
    rng = np.random.default_rng(seed)
    gts, preds, scores = random_case(rng, int(rng.integers(1, 25)), round_scores=seed % 3 == 0)
    k = int(rng.integers(1, 5))
    m = detection_metrics(gts, preds, scores, max_dets=k)
    for thr, key in ((0.5, "map50"), (0.25, "map25")):
        ap, rec = coco_ap_recall(gts, preds, scores, thr, k)
        if ap < 0:  # no ground truth at all: COCO reports -1, we report NaN
            assert np.isnan(m[key])
            continue
        assert m[key] == pytest.approx(ap, abs=1e-6)
        if thr == 0.25:
            assert m["recall25"] == pytest.approx(rec, abs=1e-6)


def test_images_without_boxes_add_false_positives_only():
    gts = [np.array([[10, 10, 50, 50.0]]), np.zeros((0, 4))]
    preds = [np.array([[10, 10, 50, 50.0]]), np.array([[0, 0, 5, 5.0]])]
    # the empty image's FP outranks the TP: precision at recall 1 is 1/2
    m = detection_metrics(gts, preds, [np.array([0.5]), np.array([0.9])], max_dets=3)
    assert m["map50"] == pytest.approx(0.5)
    assert m["map50"] == pytest.approx(coco_ap_recall(gts, preds, [[0.5], [0.9]], 0.5, 3)[0], abs=1e-6)
    only = detection_metrics(gts, preds, [np.array([0.5]), np.array([0.9])], max_dets=3, images_with_boxes_only=True)
    assert only["map50"] == pytest.approx(1.0)


def test_several_boxes_and_max_dets_truncation():
    gts = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]])]
    preds = [np.array([[40, 40, 50, 50], [0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70.0]])]
    scores = [np.array([0.1, 0.9, 0.8, 0.95])]
    m2 = detection_metrics(gts, preds, scores, max_dets=2)  # keeps the FP (0.95) and one TP (0.9)
    assert m2["recall25"] == pytest.approx(1 / 3)
    assert m2["map25"] == pytest.approx(coco_ap_recall(gts, preds, scores, 0.25, 2)[0], abs=1e-6)
    m4 = detection_metrics(gts, preds, scores, max_dets=4)
    assert m4["recall25"] == pytest.approx(1.0)
    assert m4["map25"] == pytest.approx(coco_ap_recall(gts, preds, scores, 0.25, 4)[0], abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_iou_metrics_equal_naive_loop(seed):
    rng = np.random.default_rng(100 + seed)
    gts, preds, scores = random_case(rng, 20)
    k = 3
    m = detection_metrics(gts, preds, scores, max_dets=k)
    best, top1 = [], []
    for g, p, s in zip(gts, preds, scores):
        if len(g) == 0:
            continue
        keep = np.argsort(-s, kind="stable")[:k]
        if len(keep) == 0:
            best += [0.0] * len(g)
            top1.append(0.0)
            continue
        iou = box_iou(torch.tensor(p[keep], dtype=torch.float64), torch.tensor(g, dtype=torch.float64)).numpy()
        best += list(iou.max(axis=0))
        top1.append(iou[0].max())
    assert m["iou"] == pytest.approx(np.mean(best), abs=1e-12)
    assert m["iou_top1"] == pytest.approx(np.mean(top1), abs=1e-12)


def test_no_ground_truth_gives_nan_not_zero():
    m = detection_metrics([np.zeros((0, 4))], [np.array([[0, 0, 1, 1.0]])], [np.array([0.5])])
    assert np.isnan(m["map50"]) and np.isnan(m["recall25"]) and np.isnan(m["iou"])


def test_average_precision_helper_matches():
    rng = np.random.default_rng(5)
    gts, preds, scores = random_case(rng, 15)
    mt = match_detections(gts, preds, scores, max_dets=3)
    ap = average_precision(mt.scores[mt.det_valid], mt.det_matched[0.5][mt.det_valid], mt.n_gt.sum())
    assert ap == pytest.approx(detection_metrics(gts, preds, scores, max_dets=3)["map50"], abs=1e-12)


def test_rejects_mismatched_scores():
    with pytest.raises(ValueError, match="scores"):
        detection_metrics([np.zeros((0, 4))], [np.zeros((2, 4))], [np.zeros(1)])
