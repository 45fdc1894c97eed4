"""``cross_validate(config)``: k-fold cross-validation of one training recipe on one prepared dataset.

Output folder (``config.train.out``)::

    cv_setup.json           the options, the recipe and the fold plan (a re-run must match them to resume)
    fold_<i>/
        data/               its dataset: the source's images linked, splits train/val/test (test = held out)
        run/                its training run (config.json, checkpoints/, metrics.jsonl, summary.json); beside
                            the data, never around it (``train`` refuses a run folder that holds its dataset)
        oof/                its held-out patients: predictions.jsonl, metrics.json, per_image.jsonl
    oof_data/               every held-out image once (split "oof"): the ground truth of the pooled report
    evaluation/             the pooled out-of-fold evaluation: metrics.json (patient-bootstrap CIs),
                            per_image.jsonl, predictions.jsonl, report.md/.html with the per-fold table
    cv_summary.json         per-fold metrics, their mean and sd, the pooled metrics and CIs

Resumable: a fold whose ``oof/metrics.json`` exists is skipped, a fold whose training was interrupted resumes
from its last checkpoint, and the pooled evaluation is made again from the folds' files. The pooled AUC ranks
the scores of k different models together; the per-fold mean ± sd shows whether they agree.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from mammodetr.atomic import write_json
from mammodetr.checkpoint import MODEL_FILE, file_sha256
from mammodetr.config import RunConfig
from mammodetr.cv.plan import CVOptions, FoldPlan, fold_counts, plan_folds
from mammodetr.cv.summary import FOLD_KEYS, fold_table, mean_sd
from mammodetr.data.ground_truth import read_annotations
from mammodetr.data.subset import write_subset
from mammodetr.evaluation.evaluate import evaluate_split
from mammodetr.inference.predictions import PredictionSet, read_predictions, write_predictions
from mammodetr.inference.predictor import Predictor
from mammodetr.metrics.scoring import TOP_LEVEL_KEYS, EvaluationOptions
from mammodetr.training.trainer import train

__all__ = ["cross_validate", "SETUP_FILE", "SUMMARY_FILE", "OOF_SPLIT"]

log = logging.getLogger("mammodetr.cv")

SETUP_FILE = "cv_setup.json"
SUMMARY_FILE = "cv_summary.json"
OOF_SPLIT = "oof"
# Settings that change how a run goes, not what it computes: a resumed cross-validation may change them.
_HOW_NOT_WHAT = (("train", "device"), ("train", "tensorboard"), ("data", "workers"), ("train", "out"),
                 ("data", "path"), ("data", "prepare"))


@dataclasses.dataclass
class _CV:
    """One :func:`cross_validate` call: the recipe, the options, the dataset and its fold plan."""

    config: RunConfig
    options: CVOptions
    out: Path
    data: Path
    images: list[dict]
    plan: FoldPlan
    progress: bool


def cross_validate(config: RunConfig, options: CVOptions | None = None, *, progress: bool = True,
                   **option_overrides) -> dict:
    """Train one run per fold, predict each fold's held-out patients, and evaluate the pooled predictions.

    Args:
        config: the training recipe; ``config.data.path`` is the prepared (and usually split) dataset and
            ``config.train.out`` the cross-validation folder (see the module docstring).
        options: folds, validation share, seed, checkpoint, bootstrap size (default ``CVOptions()``).
        progress: progress bars in training.
        **option_overrides: fields of :class:`CVOptions`, e.g. ``cross_validate(cfg, folds=10)``.

    Returns:
        The summary also written to ``cv_summary.json``.

    Raises:
        ValueError: no dataset, too few patients for the folds, or an output folder holding something else
            (another run, or a cross-validation with other settings).
        KeyboardInterrupt: a fold's training was interrupted (its last checkpoint is saved; run again to resume).
    """
    config.validate()
    if not config.data.path:
        raise ValueError("no dataset: set data.path (a folder written by mammodetr prepare + split)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("cross-validation runs in one process; launch it without torchrun (each fold then uses "
                         "the one device), or run each fold_<i>/run with `torchrun ... mammodetr train --resume`")
    options = dataclasses.replace(options or CVOptions(), **option_overrides)
    data = Path(config.data.path)
    cv = _CV(config, options, Path(config.train.out), data, read_annotations(data).get("images", []),
             plan_folds(data, options), progress)
    log.info("cross-validation of %s in %d folds: %s", data, cv.plan.k, cv.plan.note)
    _claim_folder(cv)
    records = [_run_fold(cv, k) for k in range(cv.plan.k)]
    return _pooled(cv, records)


def _recipe(config: RunConfig) -> dict:
    d = config.to_dict()
    for section, key in _HOW_NOT_WHAT:
        d.get(section, {}).pop(key, None)
    return d


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new))
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _claim_folder(cv: _CV) -> None:
    """Write ``cv_setup.json``, or check that the one already there describes this cross-validation."""
    names = {int(img["id"]): img["file_name"] for img in cv.images}
    setup = {"cv": cv.options.to_dict(), "recipe": _recipe(cv.config), "data": str(cv.data.resolve()),
             "plan": cv.plan.to_dict(names)}
    path = cv.out / SETUP_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [("the fold plan (the dataset's images or splits changed)" if c.startswith("plan") else c)
                   for c in _differences({k: old.get(k) for k in setup}, setup)]
        if changed:
            shown = ", ".join(dict.fromkeys(changed))
            raise ValueError(f"{cv.out}: holds a cross-validation with other settings ({shown}); run it with "
                             f"the same ones to resume it, or pass a new --out")
        log.info("resuming the cross-validation in %s", cv.out)
        return
    if cv.out.exists() and any(cv.out.iterdir()):
        raise ValueError(f"{cv.out}: exists and is not a cross-validation folder; pass a new --out")
    cv.out.mkdir(parents=True, exist_ok=True)
    write_json(path, setup, indent=1)


def _fold_config(cv: _CV, fold_dir: Path) -> RunConfig:
    cfg = RunConfig.from_dict(cv.config.to_dict())
    cfg.data.path, cfg.train.out = str(fold_dir / "data"), str(fold_dir / "run")
    cfg.data.train_split, cfg.data.val_split = "train", "val"
    return cfg


def _run_fold(cv: _CV, k: int) -> dict:
    """Train fold ``k`` (or resume it, or skip it when done) and score its held-out patients."""
    fold_dir = cv.out / f"fold_{k + 1}"
    splits = cv.plan.splits(k)
    if (fold_dir / "oof" / "metrics.json").is_file():
        log.info("fold %d/%d: done earlier, skipped", k + 1, cv.plan.k)
        return _fold_record(cv, k, fold_dir)
    counts = {s: fold_counts(cv.images, {i for i, v in splits.items() if v == s}) for s in ("train", "val", "test")}
    log.info("fold %d/%d: training on %d images (%d patients), validating on %d, holding out %d images of %d "
             "patients (%d malignant)", k + 1, cv.plan.k, counts["train"]["images"], counts["train"]["patients"],
             counts["val"]["images"], counts["test"]["images"], counts["test"]["patients"],
             counts["test"]["malignant_patients"])
    write_subset(cv.data, fold_dir / "data", splits, info={"cv_fold": k + 1, "folds": cv.plan.k})
    cfg = _fold_config(cv, fold_dir)
    _train_fold(cfg, fold_dir, cv.progress)
    _score_held_out(cv, cfg, fold_dir)
    return _fold_record(cv, k, fold_dir)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _train_fold(cfg: RunConfig, fold_dir: Path, progress: bool) -> None:
    done = _read(fold_dir / "run" / "summary.json")
    if done and not str(done.get("stopped", "")).startswith("interrupted"):
        return  # trained earlier; only the scoring was missing
    resume = (fold_dir / "run" / "checkpoints" / "last" / MODEL_FILE).is_file()
    summary = train(cfg, resume=resume, progress=progress)
    if summary["stopped"].startswith("interrupted"):
        raise KeyboardInterrupt(f"{fold_dir}: {summary['stopped']}; run the same command again to resume")


def _score_held_out(cv: _CV, cfg: RunConfig, fold_dir: Path) -> None:
    """Predict the fold's held-out images with its chosen checkpoint and score them (``oof/``, no bootstrap)."""
    checkpoint = fold_dir / "run" / "checkpoints" / cv.options.checkpoint
    t = cfg.train
    predictor = Predictor.from_checkpoint(checkpoint, device=t.device, precision=t.precision,
                                          batch_size=max(1, t.batch_size // t.accum_steps))
    preds = predictor.predict_prepared(fold_dir / "data", "test")
    oof = fold_dir / "oof"
    oof.mkdir(parents=True, exist_ok=True)
    pred_path = write_predictions(oof / "predictions.jsonl", [*preds.by_name.values(), *preds.errors])
    options = EvaluationOptions(n_bootstrap=0, max_dets=cfg.model.num_queries)
    source = {"checkpoint": str(checkpoint), "predictions_hash": file_sha256(pred_path)}
    # metrics.json is written last: its presence marks the fold as done.
    evaluate_split(fold_dir / "data", oof, preds, options, split="test", source=source, report=False)


def _fold_record(cv: _CV, k: int, fold_dir: Path) -> dict:
    metrics = json.loads((fold_dir / "oof" / "metrics.json").read_text(encoding="utf-8"))
    summary = _read(fold_dir / "run" / "summary.json") or {}
    meta = metrics.get("meta", {})
    return {"fold": k + 1, "run": str(fold_dir), "n_images": meta.get("n_images"),
            "n_patients": meta.get("n_patients"), "n_malignant": meta.get("n_malignant"),
            "best_epoch": summary.get("best_epoch"), "epochs_run": summary.get("epochs_run"),
            "metrics": {key: metrics.get(key) for key in TOP_LEVEL_KEYS}}


def _pooled_predictions(cv: _CV) -> PredictionSet:
    """Every fold's held-out predictions in one set (each image is held out by exactly one fold)."""
    by_name, errors = {}, []
    for k in range(cv.plan.k):
        part = read_predictions(cv.out / f"fold_{k + 1}" / "oof" / "predictions.jsonl")
        overlap = set(part.by_name) & set(by_name)
        if overlap:
            raise RuntimeError(f"fold {k + 1} predicted images another fold held out, e.g. {sorted(overlap)[:3]}")
        by_name.update(part.by_name)
        errors += part.errors
    return PredictionSet(by_name, errors)


def _pooled(cv: _CV, records: list[dict]) -> dict:
    """The pooled out-of-fold evaluation (patient-bootstrap CIs, report with the per-fold table) and the summary."""
    oof_data = cv.out / "oof_data"
    write_subset(cv.data, oof_data, {i: OOF_SPLIT for i in cv.plan.fold_of},
                 info={"cv": f"every image held out by one of {cv.plan.k} folds"})
    preds = _pooled_predictions(cv)
    evaluation = cv.out / "evaluation"
    evaluation.mkdir(parents=True, exist_ok=True)
    pred_path = write_predictions(evaluation / "predictions.jsonl", [*preds.by_name.values(), *preds.errors])
    options = EvaluationOptions(n_bootstrap=cv.options.n_bootstrap, max_dets=cv.config.model.num_queries)
    source = {"predictions": f"out-of-fold predictions of {cv.plan.k} folds ({cv.out})",
              "predictions_hash": file_sha256(pred_path), "cv": cv.options.to_dict()}
    result = evaluate_split(oof_data, evaluation, preds, options, split=OOF_SPLIT, source=source,
                            extra_sections=[fold_table(records)])
    mean, sd = mean_sd(records)
    m = result.metrics
    summary = {"folds": cv.plan.k, "options": cv.options.to_dict(), "data": str(cv.data), "note": cv.plan.note,
               "n_images": m["meta"]["n_images"], "n_patients": m["meta"]["n_patients"],
               "n_malignant": m["meta"]["n_malignant"], "per_fold": records,
               "mean": mean, "sd": sd, "pooled": {key: m.get(key) for key in TOP_LEVEL_KEYS},
               "pooled_ci": {key: v for key, v in m.get("ci", {}).items() if key in FOLD_KEYS},
               "report": str(evaluation / "report.html"), "metrics": str(evaluation / "metrics.json")}
    write_json(cv.out / SUMMARY_FILE, summary, indent=1)
    return summary
