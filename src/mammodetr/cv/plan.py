"""Which patients each fold trains on, validates on and holds out: the plan of a cross-validation.

The non-test images of a prepared dataset (every image whose ``split`` is not ``test``; with no split yet, every
image outside the official test split) are divided into k folds by patient, stratified by the patient's worst
label (:func:`~mammodetr.data.split.stratified_groups`, the same stratification as ``mammodetr split``). Fold i
holds out its own patients; of the other folds' patients, ``val_fraction`` are drawn the same way for validation
(best checkpoint, early stopping) and the rest train. So every non-test patient is held out exactly once, never
validates or trains the model that predicts it, and the test split is never touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from mammodetr.data.ground_truth import read_annotations
from mammodetr.data.records import LABELS, worst_label
from mammodetr.data.split import stratified_groups

__all__ = ["CVOptions", "FoldPlan", "plan_folds", "fold_counts"]


@dataclass(frozen=True)
class CVOptions:
    """How ``mammodetr cv`` divides and scores a dataset.

    Attributes:
        folds: number of folds (k); every non-test patient is held out by exactly one fold.
        val_fraction: share of each fold's training patients kept for validation (best checkpoint, early stopping).
        fold_seed: seed of the fold and validation draws (the patients' order comes from their source files).
        checkpoint: which checkpoint of each fold predicts its held-out patients ("best" or "last").
        n_bootstrap: patient bootstrap resamples for the confidence intervals of the pooled report.
    """

    folds: int = 5
    val_fraction: float = 0.15
    fold_seed: int = 0
    checkpoint: Literal["best", "last"] = "best"
    n_bootstrap: int = 2000

    def __post_init__(self) -> None:
        if int(self.folds) < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be best or last, got {self.checkpoint!r}")
        if int(self.n_bootstrap) < 0:
            raise ValueError(f"n_bootstrap must be >= 0, got {self.n_bootstrap}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FoldPlan:
    """The folds of one dataset.

    Attributes:
        fold_of: image id -> the fold (0-based) that holds it out, for every non-test image.
        val_of: per fold, the ids of its validation images (drawn from the other folds' images).
        excluded: ids of the test images, which no fold uses.
        note: how the non-test images were chosen (said once by the caller).
    """

    fold_of: dict[int, int]
    val_of: list[frozenset[int]]
    excluded: frozenset[int]
    note: str

    @property
    def k(self) -> int:
        return len(self.val_of)

    def splits(self, fold: int) -> dict[int, str]:
        """image id -> "train" | "val" | "test" (held out) for one fold."""
        return {i: "test" if f == fold else "val" if i in self.val_of[fold] else "train"
                for i, f in self.fold_of.items()}

    def to_dict(self, names: dict[int, str]) -> dict:
        """The plan by file name (what ``cv_plan.json`` stores and a re-run compares)."""
        return {"folds": [sorted(names[i] for i, f in self.fold_of.items() if f == k) for k in range(self.k)],
                "val": [sorted(names[i] for i in v) for v in self.val_of],
                "excluded_test_images": len(self.excluded)}


def _non_test(images: list[dict]) -> tuple[list[dict], str]:
    if any(img.get("split") for img in images):
        kept = [img for img in images if img.get("split") != "test"]
        return kept, f"{len(images) - len(kept)} test-split images left out, {len(kept)} images in the folds"
    kept = [img for img in images if img.get("official_split") != "test"]
    return kept, (f"no split assigned: {len(kept)} images in the folds ({len(images) - len(kept)} official test "
                  f"images left out; run `mammodetr split` first to keep a test split apart)")


def plan_folds(data_dir, options: CVOptions) -> FoldPlan:
    """The folds of a prepared dataset (see the module docstring).

    Raises:
        ValueError: fewer patients than folds, or a fold whose training patients are too few for a validation set.
    """
    every = read_annotations(data_dir).get("images", [])
    images, note = _non_test(every)
    k = int(options.folds)
    patients = {str(img["patient_id"]) for img in images}
    if len(patients) < k:
        raise ValueError(f"{data_dir}: {len(patients)} non-test patients cannot make {k} folds")
    fold_of = {int(i): f for i, f in stratified_groups(images, [1.0 / k] * k, options.fold_seed).items()}
    val_of = []
    for fold in range(k):
        rest = [img for img in images if fold_of[int(img["id"])] != fold]
        v = float(options.val_fraction)
        groups = stratified_groups(rest, [1.0 - v, v], options.fold_seed + 1 + fold)
        val = frozenset(int(i) for i, g in groups.items() if g == 1)
        if not val or len(val) == len(rest):
            raise ValueError(f"{data_dir}: fold {fold + 1} has {len({str(i['patient_id']) for i in rest})} "
                             f"training patients, too few to keep {v:.0%} for validation; use fewer folds or "
                             f"another --val-fraction")
        val_of.append(val)
    excluded = frozenset(int(img["id"]) for img in every) - set(fold_of)
    return FoldPlan(fold_of, val_of, excluded, note)


def fold_counts(images: list[dict], ids) -> dict:
    """Patients, images and images per label among ``ids``."""
    chosen = [img for img in images if int(img["id"]) in ids]
    by_patient: dict[str, list[str]] = {}
    for img in chosen:
        by_patient.setdefault(str(img["patient_id"]), []).append(img["label"])
    return {"patients": len(by_patient), "images": len(chosen),
            **{lab: sum(img["label"] == lab for img in chosen) for lab in LABELS},
            "malignant_patients": sum(worst_label(labels) == "malignant" for labels in by_patient.values())}
