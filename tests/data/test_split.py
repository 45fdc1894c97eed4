"""Patient-level, label-stratified split; official test kept; leakage is an error wherever data is loaded."""

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from mammodetr.data.records import worst_label
from mammodetr.data.split import LeakageError, assign_splits, check_no_leakage, split_dataset


def _images(n_patients=90, seed=0, official=False):
    rng = np.random.default_rng(seed)
    images, next_id = [], 1
    for p in range(n_patients):
        kind = rng.choice(["normal", "benign", "malignant"], p=[0.5, 0.3, 0.2])
        for k in range(int(rng.integers(1, 5))):
            label = kind if k == 0 else rng.choice(["normal", kind])
            img = {"id": next_id, "patient_id": f"p_{p:04d}", "label": str(label), "file_name": f"images/{next_id}.png"}
            if official:
                img["official_split"] = "test" if p % 5 == 0 else "train"
            images.append(img)
            next_id += 1
    return images


def _patients_by_split(images, splits):
    out = defaultdict(set)
    for img in images:
        out[splits[img["id"]]].add(img["patient_id"])
    return out


def test_grouping_and_stratification():
    images = _images()
    fractions = (0.6, 0.2, 0.2)
    splits, info = assign_splits(images, fractions, seed=1)
    assert not info["official_test_kept"]
    by_patient = defaultdict(set)
    for img in images:
        by_patient[img["patient_id"]].add(splits[img["id"]])
    assert all(len(s) == 1 for s in by_patient.values())  # grouping
    worst = {pid: worst_label(i["label"] for i in images if i["patient_id"] == pid) for pid in by_patient}
    strata = Counter(worst.values())
    # each stratum is divided by the fractions; rounding with carry-over stays within 2 patients per stratum
    # and within 1 patient overall
    for label, n in strata.items():
        per_split = Counter(next(iter(by_patient[pid])) for pid in worst if worst[pid] == label)
        for split, f in zip(("train", "val", "test"), fractions, strict=True):
            assert abs(per_split.get(split, 0) - n * f) < 2, (label, split, per_split)
    total = Counter(next(iter(s)) for s in by_patient.values())
    for split, f in zip(("train", "val", "test"), fractions, strict=True):
        assert abs(total[split] - len(by_patient) * f) <= 1


def test_seed_determinism():
    images = _images()
    assert assign_splits(images, seed=5)[0] == assign_splits(list(reversed(images)), seed=5)[0]
    assert assign_splits(images, seed=5)[0] != assign_splits(images, seed=6)[0]


def test_tiny_strata_do_not_all_round_to_train():
    images = [{"id": i, "patient_id": f"p{i}", "label": lab} for i, lab in enumerate(["normal", "benign", "malignant"])]
    splits, _ = assign_splits(images, (0.7, 0.15, 0.15), seed=0)
    assert sorted(Counter(splits.values()).items()) == [("train", 2), ("val", 1)]


def test_official_test_split_is_kept_and_val_carved_from_train():
    images = _images(official=True)
    images[1]["official_split"] = "test" if images[0]["official_split"] == "train" else "train"
    mixed_patient = images[1]["patient_id"]
    splits, info = assign_splits(images, (0.7, 0.15, 0.15), seed=0)
    assert info["official_test_kept"] and info["patients_moved_to_test"] == 1
    by = _patients_by_split(images, splits)
    official_test = {i["patient_id"] for i in images if i["official_split"] == "test"}
    assert by["test"] == official_test and mixed_patient in by["test"]
    n_free = len({i["patient_id"] for i in images}) - len(official_test)
    assert abs(len(by["val"]) - n_free * 0.15 / 0.85) <= 2
    assert not (by["train"] & by["val"])


def test_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(_images(5), (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="three fractions"):
        assign_splits(_images(5), (0.5, 0.5))


def test_leakage_error_names_patient_and_files():
    images = [{"id": 1, "patient_id": "p_aa", "split": "train", "file_name": "images/1.png"},
              {"id": 2, "patient_id": "p_aa", "split": "test", "file_name": "images/2.png"},
              {"id": 3, "patient_id": "p_bb", "split": "test", "file_name": "images/3.png"},
              {"id": 4, "patient_id": "p_cc", "split": None, "file_name": "images/4.png"}]
    with pytest.raises(LeakageError) as err:
        check_no_leakage(images, "ann.json")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("ann.json: 1 patient(s) found in two splits")
    assert "p_aa in test, train" in msg and "images/1.png (train)" in msg and "p_bb" not in msg
    assert err.value.patients == ["p_aa"]
    check_no_leakage(images[1:])


def test_split_dataset_writes_annotations(tmp_path):
    images = _images(30)
    for img in images:
        img["split"] = None
    (tmp_path / "annotations.json").write_text(json.dumps({"images": images, "annotations": []}))
    summary = split_dataset(tmp_path, (0.7, 0.15, 0.15), seed=2)
    data = json.loads((tmp_path / "annotations.json").read_text())
    assert data["info"]["split"] == summary == json.loads((tmp_path / "split_report.json").read_text())
    counts = Counter(img["split"] for img in data["images"])
    assert sum(c["images"] for c in summary["counts"].values()) == len(images)
    assert {s: c["images"] for s, c in summary["counts"].items() if c["images"]} == dict(counts)
    check_no_leakage(data["images"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file
    with pytest.raises(ValueError, match="run `mammodetr prepare` first"):
        split_dataset(tmp_path / "nowhere")


def test_assignment_does_not_depend_on_the_salted_ids():
    """Datasets of older versions: ``source`` is the path, the ids salted hashes."""
    images = _images()
    for i, img in enumerate(images):
        img["source"] = f"raw/{img['patient_id']}_{i}.dcm"
    resalted = [{**img, "patient_id": "p_" + str(hash(("new-salt", img["patient_id"])) % 10**12)} for img in images]
    assert assign_splits(images, seed=5)[0] == assign_splits(resalted, seed=5)[0]


def test_assignment_does_not_depend_on_the_id_key():
    """Ids and sources are keyed hashes: another key changes both, the source files' digests stay."""
    images = _images()
    for i, img in enumerate(images):
        img["source_digest"] = f"{hash(('file', img['patient_id'], i)) % 10**16:016x}"

    def rekeyed(key):
        return [{**img, "patient_id": "p_" + str(hash((key, img["patient_id"])) % 10**12),
                 "source": "src_" + str(hash((key, img["source_digest"])) % 10**12)} for img in images]

    assert assign_splits(rekeyed("key-a"), seed=5)[0] == assign_splits(rekeyed("key-b"), seed=5)[0]
@pytest.mark.parametrize("k", [2, 5, 7])
def test_stratified_groups_make_patient_level_folds(k):
    from mammodetr.data.split import stratified_groups

    images = _images(n_patients=70, seed=3)
    groups = stratified_groups(images, [1 / k] * k, seed=2)
    assert set(groups) == {img["id"] for img in images} and set(groups.values()) == set(range(k))
    by_patient = defaultdict(set)
    for img in images:
        by_patient[img["patient_id"]].add(groups[img["id"]])
    assert all(len(s) == 1 for s in by_patient.values())  # a patient's images stay together
    worst = {pid: worst_label(i["label"] for i in images if i["patient_id"] == pid) for pid in by_patient}
    for label in ("normal", "benign", "malignant"):
        per_group = Counter(next(iter(by_patient[pid])) for pid in worst if worst[pid] == label)
        counts = [per_group.get(g, 0) for g in range(k)]
        assert max(counts) - min(counts) <= 1, (label, counts)  # every fold gets its share of each stratum
    sizes = Counter(next(iter(s)) for s in by_patient.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1
    # Deterministic, independent of record order; another seed gives other folds.
    assert stratified_groups(list(reversed(images)), [1 / k] * k, seed=2) == groups
    assert stratified_groups(images, [1 / k] * k, seed=3) != groups


def test_stratified_groups_with_three_fractions_is_the_split():
    from mammodetr.data.split import stratified_groups

    images = _images(n_patients=40, seed=4)
    splits, _ = assign_splits(images, (0.6, 0.2, 0.2), seed=9)
    groups = stratified_groups(images, (0.6, 0.2, 0.2), seed=9)
    assert {i: ("train", "val", "test")[g] for i, g in groups.items()} == splits
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_groups(images, (0.5, 0.2), seed=0)
