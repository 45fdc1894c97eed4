"""cross_validate (cv/runner.py) end to end on tiny data: folds trained, interrupted and resumed, predictions pooled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from mammodetr.checkpoint import read_checkpoint
from mammodetr.cli import main as cli
from mammodetr.config import RunConfig, apply_overrides
from mammodetr.cv import CVOptions, cross_validate
from mammodetr.cv import runner as cv_module
from mammodetr.cv.runner import SUMMARY_FILE
from mammodetr.cv.summary import FOLD_KEYS
from mammodetr.training import trainer as trainer_module

OPTIONS = CVOptions(folds=3, val_fraction=0.25, n_bootstrap=20)


def _config(data: Path, out: Path) -> RunConfig:
    cfg = RunConfig()
    apply_overrides(cfg, {
        "model": {"backbone": "test_convnext", "pretrained": "none", "d_model": 32, "nheads": 4, "dec_layers": 2,
                  "dim_feedforward": 64},
        "data": {"path": str(data), "image_size": 64, "workers": 0},
        "optim": {"warmup_epochs": 0},
        "train": {"out": str(out), "epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "device": "cpu"},
    })
    return cfg


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """synth (PNG, artefacts on) -> prepare (masked) -> split: 12 patients, 3 of them in the test split."""
    root = tmp_path_factory.mktemp("cv")
    assert cli(["synth", "--out", str(root / "raw"), "--patients", "12", "--size", "96", "80", "--format", "png",
                "--seed", "3", "--no-progress"]) == 0
    assert cli(["prepare", "--source", "csv", "--input", str(root / "raw" / "table.csv"), "--out", str(root / "ds"),
                "--workers", "1", "--no-progress"]) == 0
    assert cli(["split", "--data", str(root / "ds"), "--fractions", "0.75", "0", "0.25", "--seed", "1"]) == 0
    return root / "ds"


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    """A cross-validation interrupted during fold 2, then run again: returns (out, summary, trains per call)."""
    out = tmp_path_factory.mktemp("cvrun") / "cv"
    calls: list[list[tuple[str, bool]]] = [[], [], []]
    real_train, real_epoch = cv_module.train, trainer_module.train_one_epoch
    mp = pytest.MonkeyPatch()
    epochs = {"n": 0}

    def spy(attempt):
        def train(cfg, *, resume=False, progress=True):
            calls[attempt].append((Path(cfg.train.out).parent.name, resume))  # fold_<i>/run
            return real_train(cfg, resume=resume, progress=progress)
        return train

    def interrupt_second(*args, **kwargs):
        epochs["n"] += 1
        if epochs["n"] == 2:  # fold 2's first epoch: as if Ctrl-C was pressed
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    try:
        mp.setattr(cv_module, "train", spy(0))
        mp.setattr(trainer_module, "train_one_epoch", interrupt_second)
        with pytest.raises(KeyboardInterrupt, match="fold_2.*run the same command again"):
            cross_validate(_config(dataset, out), OPTIONS, progress=False)
        assert not (out / SUMMARY_FILE).exists()
        fold1_last = out / "fold_1" / "run" / "checkpoints" / "last" / "model.safetensors"
        fold1_weights = fold1_last.stat().st_mtime_ns
        mp.setattr(trainer_module, "train_one_epoch", real_epoch)
        mp.setattr(cv_module, "train", spy(1))
        summary = cross_validate(_config(dataset, out), OPTIONS, progress=False)
        assert fold1_last.stat().st_mtime_ns == fold1_weights
        mp.setattr(cv_module, "train", spy(2))
        again = cross_validate(_config(dataset, out), progress=False, **OPTIONS.to_dict())
    finally:
        mp.undo()
    return out, summary, again, calls


def test_interrupted_fold_resumes_and_finished_folds_are_skipped(run):
    out, summary, again, calls = run
    assert calls[0] == [("fold_1", False), ("fold_2", False)]
    assert calls[1] == [("fold_2", True), ("fold_3", False)]  # fold 1 was done: not trained again
    assert calls[2] == []  # everything done: only the pooled evaluation is made again
    assert again["pooled"] == summary["pooled"] and again["per_fold"] == summary["per_fold"]


def test_folds_do_not_leak_patients_and_skip_the_test_split(run, dataset):
    out, summary, _, _ = run
    source = json.loads((dataset / "annotations.json").read_text())["images"]
    test_patients = {img["patient_id"] for img in source if img["split"] == "test"}
    held_out: list[set] = []
    for k in range(1, 4):
        fold = json.loads((out / f"fold_{k}" / "data" / "annotations.json").read_text())["images"]
        by_split = {s: {img["patient_id"] for img in fold if img["split"] == s} for s in ("train", "val", "test")}
        assert not by_split["test"] & (by_split["train"] | by_split["val"])
        assert not test_patients & set().union(*by_split.values())  # the test split is never touched
        held_out.append(by_split["test"])
        # The fold's model was trained on the masked dataset, and says so (predict repeats it on raw files).
        assert read_checkpoint(out / f"fold_{k}" / "run").config.data.prepare.mask_background is True
    assert sum(map(len, held_out)) == len(set().union(*held_out))  # each patient held out once
    non_test = {img["patient_id"] for img in source} - test_patients
    assert set().union(*held_out) == non_test
    # The pooled predictions hold every non-test image exactly once.
    lines = (out / "evaluation" / "predictions.jsonl").read_text().splitlines()
    names = [json.loads(line)["file_name"] for line in lines]
    assert sorted(names) == sorted(img["file_name"] for img in source if img["split"] != "test")
    assert summary["n_images"] == len(names) and summary["n_patients"] == len(non_test)


def test_pooled_report_and_summary(run):
    out, summary, _, _ = run
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert metrics["meta"]["split"] == "oof" and metrics["ci"]["unit"] == "patient"
    assert metrics["ci"]["n_resamples"] == 20
    # The pooled AUC against an independent reference (Mann-Whitney U over the pooled per-image scores).
    rows = [json.loads(line) for line in (out / "evaluation" / "per_image.jsonl").read_text().splitlines()]
    pos = [r["p_malignant"] for r in rows if r["label"] == 1]
    neg = [r["p_malignant"] for r in rows if r["label"] == 0]
    u = mannwhitneyu(pos, neg).statistic
    assert summary["pooled"]["auc"] == pytest.approx(u / (len(pos) * len(neg)), abs=1e-9)
    # Per fold: each fold's own metrics.json; mean and sd recomputed here.
    assert [r["fold"] for r in summary["per_fold"]] == [1, 2, 3]
    for key in FOLD_KEYS:
        values = [r["metrics"][key] for r in summary["per_fold"]
                  if r["metrics"][key] is not None and np.isfinite(r["metrics"][key])]
        if values:
            assert summary["mean"][key] == pytest.approx(np.mean(values))
    for r in summary["per_fold"]:
        fold_metrics = json.loads((Path(r["run"]) / "oof" / "metrics.json").read_text())
        assert r["metrics"]["auc"] == fold_metrics["auc"] and r["n_images"] == fold_metrics["meta"]["n_images"]
    report = (out / "evaluation" / "report.md").read_text()
    assert "## Cross-validation folds" in report and "| mean ± sd |" in report
    assert json.loads((out / SUMMARY_FILE).read_text())["pooled"] == summary["pooled"]


def test_other_settings_or_a_foreign_folder_are_refused(run, dataset, tmp_path):
    out, _, _, _ = run
    cfg = _config(dataset, out)
    cfg.train.epochs = 2
    with pytest.raises(ValueError, match=r"other settings \(recipe.train.epochs\)"):
        cross_validate(cfg, OPTIONS, progress=False)
    with pytest.raises(ValueError, match="other settings.*cv.folds.*fold plan"):
        cross_validate(_config(dataset, out), OPTIONS, progress=False, folds=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a cross-validation folder"):
        cross_validate(_config(dataset, tmp_path / "run"), OPTIONS, progress=False)
