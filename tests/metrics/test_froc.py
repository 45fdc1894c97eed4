import numpy as np
import pytest

from mammodetr.metrics.froc import froc


def _b(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def test_iou_criterion_hand_made_curve():
    # Lesion L1 (image A, best hit 0.9), L2 (image C, hit 0.5); FPs at 0.8 (A), 0.6 (B), 0.5 (C); D is empty.
    # A's second hit on L1 (0.7) is neither TP nor FP. 4 images ->
    # points (0,0) (0,.5)@.9 (.25,.5)@.8 (.5,.5)@.6 (.75,1)@.5
    gts = [_b([0, 0, 10, 10]), _b(), _b([20, 20, 30, 30]), _b()]
    preds = [_b([0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 10, 10]), _b([5, 5, 9, 9]),
             _b([20, 20, 30, 30], [0, 0, 5, 5]), _b()]
    scores = [np.array([0.9, 0.8, 0.7]), np.array([0.6]), np.array([0.5, 0.5]), np.array([])]
    r = froc(gts, preds, scores, fp_rates=(0.125, 0.25, 0.5, 0.625, 1.0, 2.0))
    np.testing.assert_allclose(r.fp_per_image, [0, 0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(r.sensitivity, [0, 0.5, 0.5, 0.5, 1.0])
    assert r.sensitivity_at == pytest.approx({0.125: 0.5, 0.25: 0.5, 0.5: 0.5, 0.625: 0.75, 1.0: 1.0, 2.0: 1.0})
    assert r.n_lesions == 2 and r.n_images == 4


def test_iou_and_centre_criteria_differ_as_designed():
    # a: IoU 0.04 with A but centre inside A; b: IoU 0.33 with B but centre outside B.
    gts = [_b([0, 0, 100, 100], [200, 200, 210, 210])]
    preds = [_b([40, 40, 60, 60], [202, 202, 222, 210])]
    scores = [np.array([0.9, 0.8])]
    by_iou = froc(gts, preds, scores, criterion="iou")
    np.testing.assert_allclose(by_iou.fp_per_image, [0, 1, 1])
    np.testing.assert_allclose(by_iou.sensitivity, [0, 0, 0.5])
    assert by_iou.sensitivity_at[0.5] == pytest.approx(0.0)
    assert by_iou.sensitivity_at[1.0] == pytest.approx(0.5)
    by_centre = froc(gts, preds, scores, criterion="center")
    np.testing.assert_allclose(by_centre.fp_per_image, [0, 0, 1])
    np.testing.assert_allclose(by_centre.sensitivity, [0, 0.5, 0.5])
    assert by_centre.sensitivity_at[0.125] == pytest.approx(0.5)


def test_max_dets_and_no_lesions():
    gts = [_b([0, 0, 10, 10])]
    preds = [_b([50, 50, 60, 60], [0, 0, 10, 10])]
    assert froc(gts, preds, [np.array([0.9, 0.1])], max_dets=1).sensitivity[-1] == 0.0
    assert froc(gts, preds, [np.array([0.9, 0.1])]).sensitivity[-1] == 1.0
    r = froc([_b()], [_b([0, 0, 1, 1])], [np.array([0.3])])
    assert np.isnan(r.mean_sensitivity)
    with pytest.raises(ValueError):
        froc(gts, preds, [np.array([0.9, 0.1])], criterion="dice")
