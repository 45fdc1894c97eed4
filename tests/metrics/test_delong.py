import math

import numpy as np
import pytest

from mammodetr.metrics.bootstrap import patient_weights, weighted_auc
from mammodetr.metrics.delong import auc_ci_delong, delong_covariance, delong_test


def _naive_delong(y, scores):
    """DeLong et al. (1988) structural components by explicit O(m n) loops, float64."""
    y = np.asarray(y).astype(bool)
    out_v10, out_v01, aucs = [], [], []
    for s in scores:
        x, z = s[y], s[~y]
        psi = np.array([[1.0 if a > b else 0.5 if a == b else 0.0 for b in z] for a in x])
        out_v10.append(psi.mean(axis=1))
        out_v01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    v10, v01 = np.array(out_v10), np.array(out_v01)
    m, n = v10.shape[1], v01.shape[1]
    return np.array(aucs), np.cov(v10) / m + np.cov(v01) / n


def test_hand_computed_small_case():
    # A: positives .9 .6 .4, negatives .7 .2 -> V10 = (1, 1/2, 1/2), V01 = (1/3, 1), AUC 2/3.
    # B: positives .8 .5 .5, negatives .5 .1 (a tie) -> V10 = (1, 3/4, 3/4), V01 = (2/3, 1), AUC 5/6.
    # S10 = [[1/12, 1/24], [1/24, 1/48]], S01 = [[2/9, 1/9], [1/9, 1/18]], m = 3, n = 2
    # var A = 5/36, var B = 5/144, cov = 5/72 -> var(A - B) = 5/144, z = (-1/6) / (sqrt(5)/12) = -2/sqrt(5).
    y = np.array([1, 1, 1, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.7, 0.2])
    b = np.array([0.8, 0.5, 0.5, 0.5, 0.1])
    auc, cov = delong_covariance(y, np.stack([a, b]))
    np.testing.assert_allclose(auc, [2 / 3, 5 / 6], atol=1e-12)
    np.testing.assert_allclose(cov, [[5 / 36, 5 / 72], [5 / 72, 5 / 144]], atol=1e-12)
    r = delong_test(y, a, b)
    assert r.difference == pytest.approx(-1 / 6)
    assert r.se == pytest.approx(math.sqrt(5) / 12)
    assert r.z == pytest.approx(-2 / math.sqrt(5))
    assert r.p_value == pytest.approx(math.erfc((2 / math.sqrt(5)) / math.sqrt(2)))  # 0.3711


@pytest.mark.parametrize("seed", range(3))
def test_fast_midrank_equals_naive_structural_components(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    s = np.round(np.stack([rng.normal(y, 1), rng.normal(0.5 * y, 1), rng.normal(y, 2)]), 1)
    auc, cov = delong_covariance(y, s)
    auc_ref, cov_ref = _naive_delong(y, s)
    np.testing.assert_allclose(auc, auc_ref, atol=1e-12)
    np.testing.assert_allclose(cov, cov_ref, atol=1e-12)


def test_hanley_mcneil_ct_ratings():
    # Hanley & McNeil (1982, Radiology 143:29) CT example: 5-point ratings of 58 normal and 51 abnormal cases.
    # Published: area 0.893; SE 0.032 (their exponential approximation, which DeLong's estimator should be near).
    neg = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    pos = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58), np.ones(51)]
    auc, se, lo, hi = auc_ci_delong(y, np.r_[neg, pos])
    assert round(auc, 3) == 0.893
    assert se == pytest.approx(0.032, abs=0.003)
    assert lo < auc < hi


def test_se_of_difference_agrees_with_bootstrap():
    rng = np.random.default_rng(7)
    n = 400
    y = rng.integers(0, 2, n)
    latent = rng.normal(y, 1.0)
    a = latent + rng.normal(0, 0.7, n)
    b = latent + rng.normal(0, 1.2, n)
    r = delong_test(y, a, b)
    w = patient_weights(np.arange(n), 2000, np.random.default_rng(0), y_true=y)
    diffs = weighted_auc(y, a, w) - weighted_auc(y, b, w)
    assert r.se == pytest.approx(diffs.std(ddof=1), rel=0.12)
    assert np.mean(diffs) == pytest.approx(r.difference, abs=0.01)


def test_identical_models_give_p_one():
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.9, 0.3, 0.8, 0.4, 0.5])
    r = delong_test(y, s, s)
    assert r.difference == 0 and r.z == 0 and r.p_value == 1.0


def test_null_p_values_are_not_anticonservative():
    rng = np.random.default_rng(11)
    ps = []
    for _ in range(200):
        y = rng.integers(0, 2, 80)
        base = rng.normal(y, 1)
        ps.append(delong_test(y, base + rng.normal(0, 1, 80), base + rng.normal(0, 1, 80)).p_value)
    assert 0.0 <= np.mean(np.array(ps) < 0.05) <= 0.10
