"""Patient-level, label-stratified train/val/test split of a prepared dataset, k-fold groups, and the leakage check.

All images of a patient land in one split. Patients are stratified by their worst image label (malignant >
benign > normal) and each stratum is divided by the fractions (largest-remainder rounding), so every split
gets about the same share of malignant, benign and normal patients. When the dataset has an official test
split (``official_split == "test"``, e.g. CBIS-DDSM, VinDr), it is kept as the test split and validation is
carved out of the remaining patients by patient, with ``val / (train + val)`` of them.

:func:`stratified_groups` is the same stratification for any number of groups (``mammodetr cv`` draws its folds
and each fold's validation patients with it).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mammodetr.atomic import write_json
from mammodetr.data.prepare import ANNOTATIONS_FILE
from mammodetr.data.records import LABELS, SPLITS, worst_label

__all__ = ["LeakageError", "check_no_leakage", "assign_splits", "stratified_groups", "split_dataset",
           "split_counts"]


class LeakageError(ValueError):
    """Images of one patient are in two splits. ``patients`` holds the (opaque) patient ids."""

    def __init__(self, message: str, patients: list[str]):
        super().__init__(message)
        self.patients = patients


def check_no_leakage(images: Iterable[dict], where: str = "dataset") -> None:
    """Raise :class:`LeakageError` when a patient has images in more than one split.

    Args:
        images: image dicts with ``patient_id`` (opaque, as written by ``prepare``) and ``split`` (None =
            unassigned, ignored) and ideally ``file_name``.
        where: what is checked (the annotations file), used in the message.
    """
    splits: dict[str, set] = defaultdict(set)
    files: dict[str, list] = defaultdict(list)
    for img in images:
        split = img.get("split")
        if split is None:
            continue
        pid = str(img.get("patient_id"))
        splits[pid].add(split)
        files[pid].append(f"{img.get('file_name', img.get('id'))} ({split})")
    leaked = sorted(pid for pid, s in splits.items() if len(s) > 1)
    if leaked:
        shown = "; ".join(f"patient {pid} in {', '.join(sorted(splits[pid]))}: {', '.join(files[pid][:4])}"
                          for pid in leaked[:5])
        more = f" and {len(leaked) - 5} more" if len(leaked) > 5 else ""
        raise LeakageError(f"{where}: {len(leaked)} patient(s) found in two splits (patient-level leakage): "
                           f"{shown}{more}; re-run `mammodetr split`", leaked)


def _allocate(n: int, fractions: Sequence[float], carry: list[float]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions + carry`` (ties go to the earlier split).

    ``carry`` (updated in place) holds what earlier strata were given too much or too little, so small strata
    do not all round the same way (three strata of one patient become train, val, test rather than 3 x train).
    """
    raw = [n * f + c for f, c in zip(fractions, carry, strict=True)]
    counts = [max(0, int(np.floor(r))) if f > 0 else 0 for r, f in zip(raw, fractions, strict=True)]
    while sum(counts) > n:  # only when a negative carry was clamped at zero
        i = max(range(len(counts)), key=lambda k: counts[k] - raw[k])
        counts[i] -= 1
    order = sorted((i for i in range(len(raw)) if fractions[i] > 0), key=lambda i: (-(raw[i] - counts[i]), i))
    for k in range(n - sum(counts)):
        counts[order[k % len(order)]] += 1
    for i in range(len(carry)):
        carry[i] = raw[i] - counts[i]
    return counts


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"expected three fractions (train val test), got {list(fractions)}")
    f = tuple(float(v) for v in fractions)
    if any(v < 0 for v in f) or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fractions)} (sum {sum(f):g})")
    return f  # type: ignore[return-value]


def _by_patient(images: Sequence[dict]) -> dict[str, list[dict]]:
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for img in images:
        by_patient[str(img["patient_id"])].append(img)
    return by_patient


def _patient_order(by_patient: dict[str, list[dict]]) -> list[str]:
    """Patients ordered by their source files' digests, not by id: ids are keyed hashes, and a split must neither
    change when the same source is prepared under another id key nor depend on the order of the records.
    (Datasets of older versions have no digest; their ``source`` was the path.)"""
    def source_key(pid: str) -> tuple[str, str]:
        return min(str(img.get("source_digest") or img.get("source") or "") for img in by_patient[pid]), pid

    return sorted(by_patient, key=source_key)


def _stratified(by_patient: dict[str, list[dict]], pids: Sequence[str], fractions: Sequence[float], seed: int
                ) -> dict[str, int]:
    """Patient -> group index: each worst-label stratum shuffled and divided by ``fractions``."""
    rng = np.random.default_rng(seed)
    strata: dict[str, list[str]] = defaultdict(list)
    for pid in pids:
        strata[worst_label(img["label"] for img in by_patient[pid]) or "normal"].append(pid)
    carry = [0.0] * len(fractions)
    groups: dict[str, int] = {}
    for label in reversed(LABELS):  # the rarest, most important stratum (malignant) is rounded first
        members = strata.get(label, [])
        order = rng.permutation(len(members))
        bounds = np.cumsum([0] + _allocate(len(members), fractions, carry))
        for k in range(len(fractions)):
            for j in order[bounds[k]: bounds[k + 1]]:
                groups[members[j]] = k
    return groups


def stratified_groups(images: Sequence[dict], fractions: Sequence[float], seed: int = 0) -> dict:
    """Divide images into groups by patient, each worst-label stratum in the proportions ``fractions``.

    The split's stratification for any number of groups (official splits are not looked at): k equal
    fractions give k folds with about the same share of malignant, benign and normal patients each.

    Args:
        images: image dicts with ``id``, ``patient_id``, ``label`` and ideally ``source``.
        fractions: one non-negative share per group, summing to 1.
        seed: shuffling seed (the result depends only on it and the set of patients, labels and sources).

    Returns:
        image id -> group index (0-based).
    """
    f = [float(v) for v in fractions]
    if not f or any(v < 0 for v in f) or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
    by_patient = _by_patient(images)
    groups = _stratified(by_patient, _patient_order(by_patient), f, seed)
    return {img["id"]: groups[str(img["patient_id"])] for img in images}


def assign_splits(images: Sequence[dict], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
                  ) -> tuple[dict, dict]:
    """Assign each image a split by patient, stratified by the patient's worst label.

    Args:
        images: image dicts with ``id``, ``patient_id``, ``label`` and optionally ``official_split``.
        fractions: (train, val, test), summing to 1.
        seed: shuffling seed (the result depends only on the seed and the set of patients/labels).

    Returns:
        ``(splits, info)``: image id -> "train" | "val" | "test", and a dict saying how the split was made
        (``official_test_kept``, ``patients_moved_to_test`` for patients found in both official splits).
    """
    f = _check_fractions(fractions)
    by_patient = _by_patient(images)
    official = {pid: {img.get("official_split") for img in imgs} - {None} for pid, imgs in by_patient.items()}
    has_official_test = any("test" in s for s in official.values())
    info = {"fractions": list(f), "seed": int(seed), "official_test_kept": has_official_test,
            "patients_moved_to_test": 0}

    assignment: dict[str, str] = {}
    free: list[str] = []
    for pid in _patient_order(by_patient):
        s = official[pid]
        if has_official_test and "test" in s:
            assignment[pid] = "test"
            info["patients_moved_to_test"] += len(s) > 1  # a patient in both official splits
        elif has_official_test and s == {"val"}:
            assignment[pid] = "val"
        else:
            free.append(pid)
    if has_official_test:
        train_val = f[0] + f[1]
        target = (f[0] / train_val, f[1] / train_val, 0.0) if train_val > 0 else (1.0, 0.0, 0.0)
    else:
        target = f

    for pid, k in _stratified(by_patient, free, target, seed).items():
        assignment[pid] = SPLITS[k]
    splits = {img["id"]: assignment[str(img["patient_id"])] for img in images}
    return splits, info


def split_counts(images: Sequence[dict]) -> dict:
    """Per split: patients, images, images per label."""
    out = {}
    for split in SPLITS:
        imgs = [img for img in images if img.get("split") == split]
        labels = Counter(img["label"] for img in imgs)
        out[split] = {"patients": len({img["patient_id"] for img in imgs}), "images": len(imgs),
                      **{lab: labels.get(lab, 0) for lab in LABELS}}
    return out


def split_dataset(data_dir: str | Path, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> dict:
    """Split a prepared dataset in place: writes ``split`` into each image of ``annotations.json``.

    Returns:
        The split summary (also stored as ``info.split`` in annotations.json and in ``split_report.json``).

    Raises:
        ValueError: no annotations.json, or bad fractions.
    """
    path = Path(data_dir) / ANNOTATIONS_FILE
    if not path.is_file():
        raise ValueError(f"{path}: not found; run `mammodetr prepare` first")
    data = json.loads(path.read_text(encoding="utf-8"))
    images = data.get("images", [])
    if not images:
        raise ValueError(f"{path}: no images to split")
    splits, info = assign_splits(images, fractions, seed)
    for img in images:
        img["split"] = splits[img["id"]]
    check_no_leakage(images, str(path))  # cannot fail by construction; guards future edits
    summary = {**info, "counts": split_counts(images)}
    data.setdefault("info", {})["split"] = summary
    write_json(path, data, indent=1)
    write_json(Path(data_dir) / "split_report.json", summary, indent=1)
    return summary


def format_counts(counts: dict) -> str:
    """A small text table of :func:`split_counts`."""
    header = f"{'split':<6} {'patients':>8} {'images':>7} " + " ".join(f"{lab:>9}" for lab in LABELS)
    lines = [header]
    for split, c in counts.items():
        lines.append(f"{split:<6} {c['patients']:>8} {c['images']:>7} "
                     + " ".join(f"{c[lab]:>9}" for lab in LABELS))
    return "\n".join(lines)
