"""The fold plan: every non-test patient held out exactly once, stratified, validation from the other folds only."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from mammodetr.cv.plan import CVOptions, fold_counts, plan_folds
from mammodetr.data.records import worst_label


def _dataset(tmp_path, n_patients=40, split=True, seed=0):
    rng = np.random.default_rng(seed)
    images, next_id = [], 1
    for p in range(n_patients):
        kind = str(rng.choice(["normal", "benign", "malignant"], p=[0.5, 0.25, 0.25]))
        for v in range(4):
            images.append({"id": next_id, "patient_id": f"pid{p:03d}", "file_name": f"images/{next_id}.png",
                           "label": kind if v < 2 else "normal", "source": f"raw/{p:03d}_{v}.png",
                           "split": (["train", "val", "test"][p % 3] if split else None),
                           "official_split": "test" if p % 4 == 0 else "train"})
            next_id += 1
    (tmp_path / "annotations.json").write_text(json.dumps({"images": images, "annotations": []}))
    return images


def _patients(images, ids):
    return {img["patient_id"] for img in images if img["id"] in ids}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_hold_every_non_test_patient_out_once_and_never_leak(tmp_path, k):
    images = _dataset(tmp_path)
    plan = plan_folds(tmp_path, CVOptions(folds=k, val_fraction=0.2))
    test_ids = {img["id"] for img in images if img["split"] == "test"}
    assert plan.excluded == test_ids and not set(plan.fold_of) & test_ids
    assert set(plan.fold_of) == {img["id"] for img in images} - test_ids
    held_out = [_patients(images, {i for i, f in plan.fold_of.items() if f == fold}) for fold in range(k)]
    assert sum(len(h) for h in held_out) == len(set.union(*held_out))  # each patient in one fold only
    for fold in range(k):
        splits = plan.splits(fold)
        by_split = {s: _patients(images, {i for i, v in splits.items() if v == s}) for s in ("train", "val", "test")}
        assert by_split["test"] == held_out[fold]
        assert not by_split["test"] & (by_split["train"] | by_split["val"])  # no leak into the fold's model
        assert not by_split["train"] & by_split["val"] and by_split["val"] and by_split["train"]
        assert set(splits) == set(plan.fold_of)
    # Stratified: malignant patients spread over the folds within one of each other.
    worst = {pid: worst_label(img["label"] for img in images if img["patient_id"] == pid)
             for pid in set.union(*held_out)}
    per_fold = [sum(worst[p] == "malignant" for p in h) for h in held_out]
    assert max(per_fold) - min(per_fold) <= 1 and min(per_fold) > 0


def test_plan_is_deterministic_and_follows_the_seed(tmp_path):
    _dataset(tmp_path)
    a, b = plan_folds(tmp_path, CVOptions(folds=4)), plan_folds(tmp_path, CVOptions(folds=4))
    assert a == b
    assert plan_folds(tmp_path, CVOptions(folds=4, fold_seed=1)).fold_of != a.fold_of


def test_without_a_split_the_official_test_images_stay_out(tmp_path):
    images = _dataset(tmp_path, split=False)
    plan = plan_folds(tmp_path, CVOptions(folds=3))
    assert plan.excluded == {img["id"] for img in images if img["official_split"] == "test"}
    assert "no split assigned" in plan.note


def test_too_few_patients_is_a_user_error(tmp_path):
    _dataset(tmp_path, n_patients=6)
    with pytest.raises(ValueError, match="non-test patients cannot make 5 folds"):
        plan_folds(tmp_path, CVOptions(folds=5))
    with pytest.raises(ValueError, match="too few to keep"):
        plan_folds(tmp_path, CVOptions(folds=2, val_fraction=0.05))
    for bad in ({"folds": 1}, {"val_fraction": 1.0}, {"checkpoint": "first"}, {"n_bootstrap": -1}):
        with pytest.raises(ValueError):
            CVOptions(**bad)


def test_fold_counts(tmp_path):
    images = _dataset(tmp_path, n_patients=5)
    ids = {img["id"] for img in images[:8]}
    c = fold_counts(images, ids)
    assert c["patients"] == 2 and c["images"] == 8
    assert sum(c[lab] for lab in ("normal", "benign", "malignant")) == 8
    assert c["malignant_patients"] == sum(Counter(img["label"] for img in images[:8] if img["patient_id"] == p)
                                          ["malignant"] > 0 for p in {img["patient_id"] for img in images[:8]})
