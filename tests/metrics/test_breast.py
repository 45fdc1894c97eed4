import numpy as np
import pytest

from mammodetr.metrics.breast import aggregate_breasts


def test_max_and_mean_aggregation_against_dict_loop():
    rng = np.random.default_rng(0)
    n = 40
    pids = [f"P{i // 4}" for i in range(n)]
    studies = [f"S{i // 4}" for i in range(n)]
    lats = ["L" if (i // 2) % 2 == 0 else "R" for i in range(n)]
    lats[5] = None  # an image without laterality is left out
    p = rng.random(n)
    y = rng.integers(0, 2, n)
    for how in ("max", "mean"):
        b = aggregate_breasts(p, y, pids, studies, lats, how=how)
        groups: dict[str, list[int]] = {}
        for i in range(n):
            if lats[i]:
                groups.setdefault(f"{pids[i]}|{studies[i]}|{lats[i]}", []).append(i)
        assert sorted(b.keys) == sorted(groups)
        for k, s, lab, npat in zip(b.keys, b.scores, b.labels, b.patient_ids):
            idx = groups[k]
            ref = max(p[idx]) if how == "max" else np.mean(p[idx])
            assert s == pytest.approx(ref) and lab == max(y[idx]) and npat == pids[idx[0]]


def test_no_laterality_gives_none_and_bad_mode_raises():
    assert aggregate_breasts([0.1], [0], ["a"], [None], [None]) is None
    with pytest.raises(ValueError):
        aggregate_breasts([0.1], [0], ["a"], [None], ["L"], how="median")
