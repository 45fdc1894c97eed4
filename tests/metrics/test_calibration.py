import numpy as np
import pytest

from mammodetr.metrics.calibration import expected_calibration_error, reliability_data


def test_ece_equals_naive_loop():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    p[:5] = [0.0, 1.0, 0.1, 0.2, 0.9999]
    y = (rng.random(500) < p**2).astype(int)
    ece = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        m = (p >= lo) & ((p < hi) if b < 9 else (p <= hi))
        if m.any():
            ece += m.mean() * abs(p[m].mean() - y[m].mean())
    assert expected_calibration_error(y, p) == pytest.approx(ece, abs=1e-12)
    rel = reliability_data(y, p)
    assert sum(rel["count"]) == 500


def test_perfectly_calibrated_bins_give_zero():
    p = np.repeat([0.25, 0.75], 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(y, p) == pytest.approx(0.0)


def test_rejects_out_of_range():
    with pytest.raises(ValueError):
        expected_calibration_error([0, 1], [0.2, 1.2])
