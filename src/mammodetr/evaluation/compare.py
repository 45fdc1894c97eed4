"""Compare evaluated runs: a Table-1-style table and paired DeLong tests of AUC against a reference run.

Each run is an evaluation folder written by ``mammodetr evaluate`` (``metrics.json`` + ``per_image.jsonl``), a
``metrics.json`` file, or a folder holding one of those one level down. DeLong tests need the per-image scores of
both runs on the same images (paired by ``file_name``, labels must agree).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammodetr.atomic import write_json
from mammodetr.metrics.bootstrap import patient_weights, percentile_ci, weighted_auc
from mammodetr.metrics.delong import delong_test

from .report import fmt_pct

__all__ = ["RunMetrics", "load_run", "compare_runs", "comparison_markdown", "TABLE_ROWS"]

log = logging.getLogger(__name__)

# (label, key path in metrics.json, higher is better); the first block mirrors the paper's Table 1.
TABLE_ROWS: list[tuple[str, tuple[str, ...], bool]] = [
    ("Acc", ("accuracy",), True),
    ("AUC", ("auc",), True),
    ("Sens", ("sensitivity",), True),
    ("Spec", ("specificity",), True),
    ("F1", ("f1",), True),
    ("F1 (weighted)", ("f1_weighted",), True),
    ("IoU (top-1)", ("iou_top1",), True),
    ("IoU (best per lesion)", ("iou",), True),
    ("mAP@.5", ("map50",), True),
    ("mAP@.25", ("map25",), True),
    ("R@.25", ("recall25",), True),
    ("FROC mean sens (IoU>=.25)", ("froc", "iou", "mean_sensitivity"), True),
    ("ECE", ("calibration", "ece"), False),
    ("Breast-level AUC", ("breast_level", "auc"), True),
]


@dataclass
class RunMetrics:
    """One evaluated run."""

    name: str
    path: Path
    metrics: dict
    per_image: dict[str, tuple[int, float, str]] | None  # file_name -> (label, p_malignant, patient_id)


def _find_metrics(path: Path) -> Path:
    if path.is_file():
        return path
    for cand in (path / "metrics.json", path / "eval" / "metrics.json", path / "evaluation" / "metrics.json"):
        if cand.is_file():
            return cand
    found = sorted(path.glob("*/metrics.json"))
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{path}: several metrics.json one level down ({[str(f) for f in found[:4]]}); name one")
    raise ValueError(f"{path}: no metrics.json found (run `mammodetr evaluate` first)")


def load_run(path: str | Path, name: str | None = None) -> RunMetrics:
    """Load ``metrics.json`` (and ``per_image.jsonl`` beside it when present)."""
    mpath = _find_metrics(Path(path))
    try:
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{mpath}: not valid JSON ({e.msg})") from None
    if "auc" not in metrics:
        raise ValueError(f"{mpath}: not a mammodetr metrics.json (no 'auc')")
    per_image = None
    pi = mpath.parent / "per_image.jsonl"
    if pi.is_file():
        per_image = {}
        for line in pi.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                per_image[r["file_name"]] = (int(r["label"]), float(r["p_malignant"]), str(r.get("patient_id", "")))
    if name is None:
        name = mpath.parent.name if mpath.parent.name not in ("eval", "evaluation") else mpath.parent.parent.name
    return RunMetrics(name, mpath, metrics, per_image)


def _get(m: dict, keys: tuple[str, ...]):
    for k in keys:
        if not isinstance(m, dict) or k not in m:
            return None
        m = m[k]
    return m


def compare_runs(runs: list[RunMetrics], reference: str | None = None, *, n_bootstrap: int = 2000,
                 seed: int = 0) -> dict:
    """Table values and DeLong tests of every run against the reference (default: the first run).

    Returns:
        ``{"runs": [...], "reference": name, "rows": [{"metric", "values": {run: v}, "ci": {run: [lo, hi]},
        "best": [runs]}], "delong": {run: {...} | {"skipped": reason}}}``.
    """
    if not runs:
        raise ValueError("no runs to compare")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}; pass --names")
    ref_name = reference or names[0]
    if ref_name not in names:
        raise ValueError(f"reference {ref_name!r} is not one of {names}")
    rows = []
    for label, keys, higher in TABLE_ROWS:
        vals = {r.name: _get(r.metrics, keys) for r in runs}
        if all(v is None for v in vals.values()):
            continue
        ci = {}
        for r in runs:
            c = _get(r.metrics, ("ci", keys[0])) if len(keys) == 1 else None
            if len(keys) == 2 and keys[0] == "breast_level":
                c = _get(r.metrics, ("breast_level", "ci", "auc"))
            if isinstance(c, dict) and c.get("low") is not None:
                ci[r.name] = [c["low"], c["high"]]
        finite = {k: v for k, v in vals.items() if v is not None and math.isfinite(v)}
        best = []
        if finite:
            target = max(finite.values()) if higher else min(finite.values())
            best = [k for k, v in finite.items() if v == target]
        rows.append({"metric": label, "key": ".".join(keys), "higher_is_better": higher, "values": vals,
                     "ci": ci, "best": best})
    ref = next(r for r in runs if r.name == ref_name)
    tests: dict[str, dict] = {}
    for r in runs:
        if r.name == ref_name:
            continue
        tests[r.name] = _paired_delong(ref, r, n_bootstrap, seed)
    hashes = {r.name: _get(r.metrics, ("meta", "data_hash")) for r in runs}
    return {"runs": names, "reference": ref_name, "rows": rows, "delong": tests, "data_hash": hashes}


def _paired_delong(ref: RunMetrics, other: RunMetrics, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    if ref.per_image is None or other.per_image is None:
        return {"skipped": "per_image.jsonl missing (re-run `mammodetr evaluate`)"}
    if set(ref.per_image) != set(other.per_image):
        common = set(ref.per_image) & set(other.per_image)
        return {"skipped": f"different test sets ({len(common)} images in common of "
                           f"{len(ref.per_image)} / {len(other.per_image)})"}
    names = sorted(ref.per_image)
    y = np.array([ref.per_image[n][0] for n in names])
    if any(other.per_image[n][0] != ref.per_image[n][0] for n in names):
        return {"skipped": "labels differ between the runs for the same images"}
    if not 0 < y.sum() < y.size:
        return {"skipped": "test set holds one class only"}
    a = np.array([other.per_image[n][1] for n in names])
    b = np.array([ref.per_image[n][1] for n in names])
    res = delong_test(y, a, b).to_dict()
    res["ci_difference"] = [res["difference"] - 1.959963984540054 * res["se"],
                            res["difference"] + 1.959963984540054 * res["se"]]
    res["n_images"] = len(names)
    res["note"] = "image-level paired DeLong; images of one patient are treated as independent"
    if n_bootstrap > 0:
        # Views of one patient are correlated; resampling whole patients gives an interval that respects it.
        pids = [ref.per_image[n][2] or n for n in names]
        w = patient_weights(pids, n_bootstrap, np.random.default_rng(seed), y_true=y)
        diffs = weighted_auc(y, a, w) - weighted_auc(y, b, w)
        lo, hi = percentile_ci(diffs)
        frac_le0 = float(np.mean(diffs <= 0))
        res["patient_bootstrap"] = {"n_resamples": n_bootstrap, "ci_difference": [lo, hi],
                                    "se": float(np.std(diffs, ddof=1)),
                                    "p_value": float(min(1.0, 2 * min(frac_le0, 1 - frac_le0 + np.mean(diffs == 0))))}
    return res


def comparison_markdown(result: dict) -> str:
    """The comparison as Markdown: metrics x runs (percent, 95% CI), best in bold, then the DeLong table."""
    runs = result["runs"]
    out = ["# Run comparison", "", "Values in %, patient-bootstrap 95% CI in brackets; best per row in **bold**.", "",
           "| Metric | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for row in result["rows"]:
        cells = []
        for r in runs:
            v = row["values"].get(r)
            s = fmt_pct(v)
            if r in row["best"]:
                s = f"**{s}**"
            if r in row["ci"]:
                lo, hi = row["ci"][r]
                s += f" [{fmt_pct(lo)}, {fmt_pct(hi)}]"
            cells.append(s)
        out.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    out += ["", "ECE: lower is better. IoU (top-1) is the one compared with the paper's IoU column.", ""]
    if result["delong"]:
        out += [f"## DeLong paired test of AUC against `{result['reference']}`", "",
                "| Run | AUC run (%) | AUC ref (%) | Difference (%) | SE (%) | 95% CI of difference (%) | z | p | "
                "patient-bootstrap 95% CI (%) | bootstrap p |",
                "|---|---:|---:|---:|---:|---|---:|---:|---|---:|"]
        for name, t in result["delong"].items():
            if "skipped" in t:
                out.append(f"| {name} | | | | | skipped: {t['skipped']} | | |")
                continue
            lo, hi = t["ci_difference"]
            pb = t.get("patient_bootstrap")
            pb_s = (f"{fmt_pct(pb['ci_difference'][0])}, {fmt_pct(pb['ci_difference'][1])} | {pb['p_value']:.4g}"
                    if pb else " | ")
            out.append(f"| {name} | {fmt_pct(t['auc_a'])} | {fmt_pct(t['auc_b'])} | {fmt_pct(t['difference'])} | "
                       f"{fmt_pct(t['se'])} | {fmt_pct(lo)}, {fmt_pct(hi)} | {t['z']:.3f} | {t['p_value']:.4g} | "
                       f"{pb_s} |")
        out += ["", "DeLong treats images as independent; the patient-bootstrap interval of the difference keeps a "
                "patient's views together (prefer it when patients contribute several views).", ""]
    hashes = {v for v in result.get("data_hash", {}).values() if v}
    if len(hashes) > 1:
        out += ["Note: the runs were evaluated on different dataset files (data_hash differs).", ""]
    return "\n".join(out)


def write_comparison(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``comparison.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "comparison.md"
    md.write_text(comparison_markdown(result) + "\n", encoding="utf-8")
    js = out / "comparison.json"
    write_json(js, result)
    return md, js
