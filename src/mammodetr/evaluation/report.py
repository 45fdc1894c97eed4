"""Evaluation report: ``report.md`` (plots as PNG files beside it) and a self-contained ``report.html``
(the same plots embedded as base64 PNG). Plots use matplotlib's Agg backend, imported here only.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammodetr.atomic import write_bytes_atomic, write_text_atomic
from mammodetr.metrics.bootstrap import patient_weights
from mammodetr.metrics.classification import pr_curve, roc_curve

__all__ = ["Figure", "roc_band", "build_figures", "write_report", "fmt_pct"]


@dataclass
class Figure:
    """A rendered plot: file stem, caption and PNG bytes."""

    name: str
    caption: str
    png: bytes


def fmt_pct(v, digits: int = 2) -> str:
    """A fraction as a percentage string ("n/a" for None/NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * float(v):.{digits}f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def roc_band(y_true, scores, patient_ids, *, n_resamples: int = 200, level: float = 0.95, seed: int = 0,
             grid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise patient-bootstrap band of the TPR on an FPR grid.

    Returns:
        ``fpr_grid (G,)``, ``tpr_low (G,)``, ``tpr_high (G,)``.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    grid = np.linspace(0, 1, 101) if grid is None else grid
    w = patient_weights(patient_ids, n_resamples, np.random.default_rng(seed), y_true=y)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    ws = w[:, order]
    tp = np.cumsum(ws * y[order], axis=1)[:, last]
    fp = np.cumsum(ws * ~y[order], axis=1)[:, last]
    tpr = np.c_[np.zeros(len(w)), tp / tp[:, -1:]]
    fpr = np.c_[np.zeros(len(w)), fp / fp[:, -1:]]
    curves = np.stack([np.interp(grid, fpr[i], tpr[i]) for i in range(len(w))])
    a = (1 - level) / 2
    return grid, np.quantile(curves, a, axis=0), np.quantile(curves, 1 - a, axis=0)


def _draw_example(ax, pixels: np.ndarray, gt_xyxy, pred_xyxy, pred_scores, matched, title: str) -> None:
    from matplotlib.patches import Rectangle

    ax.imshow(pixels, cmap="gray", vmin=0, vmax=1)
    for b, hit in zip(np.asarray(gt_xyxy).reshape(-1, 4), matched):
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=1.5,
                               ec="lime" if hit else "magenta", ls="-" if hit else "--"))
    for b, sc in zip(np.asarray(pred_xyxy).reshape(-1, 4), pred_scores):
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=1.0, ec="orangered"))
        ax.text(b[0], b[1], f"{sc:.2f}", color="orangered", fontsize=6, va="bottom")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _roc_figures(plt, m: dict, y: np.ndarray, p: np.ndarray, pids: list, band_resamples: int) -> list[Figure]:
    fig, ax = plt.subplots(figsize=(4, 4))
    fpr, tpr, _ = roc_curve(y, p)
    if band_resamples > 0:
        g, lo, hi = roc_band(y, p, pids, n_resamples=band_resamples)
        ax.fill_between(g, lo, hi, color="C0", alpha=0.2, label="95% patient bootstrap band")
    ax.plot(fpr, tpr, color="C0", label=f"AUC {fmt_pct(m['auc'])}%")
    ax.plot([0, 1], [0, 1], ls=":", color="gray")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (image level)")
    ax.legend(loc="lower right", fontsize=7)
    roc = Figure("roc", "ROC curve with a pointwise 95% patient-bootstrap band.", _png(fig))

    fig, ax = plt.subplots(figsize=(4, 4))
    prec, rec, _ = pr_curve(y, p)
    ax.step(np.r_[0, rec], np.r_[1, prec], where="post")
    ax.axhline(y.mean(), ls=":", color="gray", label=f"prevalence {y.mean():.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall (image level)",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7)
    return [roc, Figure("pr", "Precision-recall curve of p_malignant.", _png(fig))]


def _froc_figure(plt, froc_d: dict) -> Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for crit, d in froc_d.items():
        if not isinstance(d, dict) or not d.get("n_lesions"):
            continue
        label = f"IoU >= {d['iou_threshold']}" if crit == "iou" else "centre in box"
        ax.plot(d["curve"]["fp_per_image"], d["curve"]["sensitivity"], label=label, drawstyle="default")
    for r in (0.125, 0.25, 0.5, 1, 2):
        ax.axvline(r, color="gray", lw=0.5, ls=":")
    ax.set(xscale="symlog", xlabel="mean false positives per image", ylabel="lesion sensitivity",
           title="FROC", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    return Figure("froc", "FROC curves for both hit criteria.", _png(fig))


def _calibration_figure(plt, calibration: dict) -> Figure:
    rel = calibration["reliability"]
    fig, ax = plt.subplots(figsize=(4, 4))
    centers = [(a + b) / 2 for a, b in zip(rel["edges"][:-1], rel["edges"][1:])]
    widths = [0.9 * (b - a) for a, b in zip(rel["edges"][:-1], rel["edges"][1:])]
    xs = [mp for mp in rel["mean_predicted"] if mp is not None]
    ys = [fp for fp in rel["fraction_positive"] if fp is not None]
    ax.bar(centers, [fp if fp is not None else 0 for fp in rel["fraction_positive"]], width=widths, alpha=0.4,
           label="observed fraction malignant")
    ax.plot(xs, ys, "o-", color="C1", label="per bin")
    ax.plot([0, 1], [0, 1], ls=":", color="gray")
    ax.set(xlabel="mean predicted p_malignant", ylabel="fraction malignant",
           title=f"Reliability (ECE {fmt_pct(calibration['ece'])}%)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    n_bins = calibration.get("n_bins", len(centers))
    return Figure("calibration", f"Reliability diagram, {n_bins} equal-width bins.", _png(fig))


def _confusion_figure(plt, y: np.ndarray, p: np.ndarray, t: float) -> Figure:
    pred = p >= t
    cm = np.array([[np.sum(~pred & (y == 0)), np.sum(pred & (y == 0))],
                   [np.sum(~pred & (y == 1)), np.sum(pred & (y == 1))]])
    fig, ax = plt.subplots(figsize=(3.5, 3))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["pred benign", "pred malignant"],
           yticklabels=["benign/normal", "malignant"], title=f"Confusion matrix at t = {t:g}")
    return Figure("confusion", f"Confusion matrix at threshold {t:g}.", _png(fig))


def _examples_figure(plt, examples: list[dict]) -> Figure:
    fig, axes = plt.subplots(1, len(examples), figsize=(2.6 * len(examples), 3.2), squeeze=False)
    for ax, ex in zip(axes[0], examples):
        _draw_example(ax, ex["pixels"], ex["gt"], ex["pred"], ex["scores"], ex["matched"], ex["title"])
    return Figure("examples", "Examples: ground truth found (green) / missed (magenta, dashed); "
                  "predictions (orange) with objectness.", _png(fig))


def _gradcam_figure(plt, gradcams: list[dict]) -> Figure:
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(gradcams), figsize=(2.6 * len(gradcams), 3.2), squeeze=False)
    for ax, g in zip(axes[0], gradcams):
        ax.imshow(g["overlay"])
        for b in np.asarray(g.get("gt", [])).reshape(-1, 4):
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="lime", lw=1))
        ax.set_title(g["title"], fontsize=7)
        ax.axis("off")
    return Figure("gradcam", "Grad-CAM on the malignancy logit (ground truth in green).", _png(fig))


def build_figures(result, *, examples: list[dict] | None = None, gradcams: list[dict] | None = None,
                  band_resamples: int = 200) -> list[Figure]:
    """Render the report's plots.

    Args:
        result: an ``EvaluationResult``.
        examples: dicts with ``pixels`` (H, W) [0, 1], ``gt``, ``pred``, ``scores``, ``matched``, ``title``.
        gradcams: dicts with ``overlay`` (H, W, 3) uint8 and ``title``.
        band_resamples: bootstrap resamples for the ROC band.
    """
    plt = _plt()
    m = result.metrics
    y = np.array([im.label for im in result.images])
    p = np.array([pr.p_malignant for pr in result.predictions])
    figs: list[Figure] = []
    if 0 < y.sum() < y.size:
        figs += _roc_figures(plt, m, y, p, [im.patient_id for im in result.images], band_resamples)
    froc_d = m.get("froc", {})
    if any(isinstance(v, dict) and v.get("n_lesions") for v in froc_d.values()):
        figs.append(_froc_figure(plt, froc_d))
    figs.append(_calibration_figure(plt, m["calibration"]))
    figs.append(_confusion_figure(plt, y, p, m["meta"]["threshold"]))
    if examples:
        figs.append(_examples_figure(plt, examples))
    if gradcams:
        figs.append(_gradcam_figure(plt, gradcams))
    return figs


_ROWS = [("Accuracy", "accuracy"), ("AUC", "auc"), ("Sensitivity", "sensitivity"), ("Specificity", "specificity"),
         ("F1 (malignant)", "f1"), ("F1 (weighted)", "f1_weighted"), ("IoU (mean best per lesion)", "iou"),
         ("IoU (top-1 box)", "iou_top1"), ("mAP@.5", "map50"), ("mAP@.25", "map25"), ("R@.25", "recall25")]


def _metric_table(m: dict) -> list[str]:
    lines = ["| Metric | Value (%) | 95% CI (%) |", "|---|---:|---|"]
    for label, key in _ROWS:
        ci = m.get("ci", {}).get(key)
        ci_s = f"{fmt_pct(ci['low'])} - {fmt_pct(ci['high'])}" if ci else "-"
        lines.append(f"| {label} | {fmt_pct(m.get(key))} | {ci_s} |")
    return lines


def markdown_report(result, figures: list[Figure], *, extra_sections: list[str] | None = None) -> str:
    """The Markdown report text (figures referenced as ``plots/<name>.png``)."""
    m = result.metrics
    meta = m["meta"]
    out = ["# mammodetr evaluation report", ""]
    out += [f"- split: `{meta.get('split', '?')}`, images: {meta['n_images']}, patients: {meta['n_patients']}, "
            f"malignant images: {meta['n_malignant']}, lesions: {meta['n_lesions']} "
            f"(in {meta['n_images_with_boxes']} images)",
            f"- threshold t = {meta['threshold']:g} ({meta['threshold_source']}); K = {meta['max_dets']} boxes "
            f"per image; detection evaluated on {meta['detection_images']} images",
            f"- source: {meta.get('checkpoint') or meta.get('predictions') or '?'}",
            f"- CIs: {m['ci'].get('n_resamples', 0)} patient-level bootstrap resamples, percentile intervals"
            if m.get("ci") else "- CIs: not computed", ""]
    out += ["## Metrics", ""] + _metric_table(m) + [""]
    out += ["The paper's single \"IoU\" column is compared with `iou_top1` (IoU of the top-scoring box).", ""]
    ops = m.get("operating_points", {})
    if ops:
        out += ["## Operating points", "", "| Point | Value (%) | Threshold | Sens (%) | Spec (%) |",
                "|---|---:|---:|---:|---:|"]
        for k, d in ops.items():
            if k == "val_threshold":
                continue
            out.append(f"| {k} | {fmt_pct(d['value'])} | {d['threshold']:.4g} | {fmt_pct(d['sensitivity'])} | "
                       f"{fmt_pct(d['specificity'])} |")
        if "val_threshold" in ops:
            v = ops["val_threshold"]
            out += ["", f"Threshold chosen on validation ({v['source']}): t = {v['threshold']:.4g} -> accuracy "
                    f"{fmt_pct(v['accuracy'])}%, sensitivity {fmt_pct(v['sensitivity'])}%, specificity "
                    f"{fmt_pct(v['specificity'])}%, F1 {fmt_pct(v['f1'])}%"]
        out.append("")
    fr = m.get("froc", {})
    if fr:
        out += ["## FROC", "", "| Hit criterion | " + " | ".join(f"{r} FP/img" for r in (0.125, 0.25, 0.5, 1, 2))
                + " | mean |", "|---|" + "---:|" * 6]
        for crit, d in fr.items():
            if isinstance(d, dict):
                vals = [fmt_pct(d["sensitivity_at"].get(str(float(r)))) for r in (0.125, 0.25, 0.5, 1, 2)]
                out.append(f"| {crit} | " + " | ".join(vals) + f" | {fmt_pct(d['mean_sensitivity'])} |")
        out.append("")
    cal = m["calibration"]
    ece_line = f"Expected calibration error ({cal.get('n_bins', 10)} bins): {fmt_pct(cal['ece'])}%"
    out += ["## Calibration", "", ece_line, ""]
    bl = m.get("breast_level")
    if bl:
        ci = bl.get("ci", {}).get("auc")
        out += ["## Breast level", "", f"{bl['n_breasts']} breasts ({bl['n_malignant']} malignant), score = "
                f"{bl['aggregate']} over views: AUC {fmt_pct(bl['auc'])}%"
                + (f" (95% CI {fmt_pct(ci['low'])} - {fmt_pct(ci['high'])})" if ci else "")
                + f", sensitivity {fmt_pct(bl['sensitivity'])}%, specificity {fmt_pct(bl['specificity'])}%", ""]
    sg = m.get("subgroups", {})
    for name in ("view", "density"):
        if sg.get(name):
            out += [f"## Subgroups: {name}", "", "| Group | Images | Malignant | AUC | Sens | Spec | mAP@.25 | R@.25 |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for g, d in sg[name].items():
                out.append(f"| {g} | {d['n_images']} | {d['n_malignant']} | {fmt_pct(d['auc'])} | "
                           f"{fmt_pct(d['sensitivity'])} | {fmt_pct(d['specificity'])} | {fmt_pct(d['map25'])} | "
                           f"{fmt_pct(d['recall25'])} |")
            out.append("")
    ls = sg.get("lesion_size")
    if ls and any(k in ls for k in ("small", "medium", "large")):
        out += ["## Subgroups: lesion size", "", f"({ls['basis']})", "",
                "| Size | Lesions | px range | R@.25 | mean best IoU |", "|---|---:|---|---:|---:|"]
        for k in ("small", "medium", "large"):
            if k in ls:
                d = ls[k]
                out.append(f"| {k} | {d['n_lesions']} | {d['size_px_min']:.0f} - {d['size_px_max']:.0f} | "
                           f"{fmt_pct(d['recall25'])} | {fmt_pct(d['iou'])} |")
        out.append("")
    for sec in extra_sections or []:
        out += [sec, ""]
    if figures:
        out += ["## Plots", ""]
        for f in figures:
            out += [f"![{f.caption}](plots/{f.name}.png)", "", f"*{f.caption}*", ""]
    return "\n".join(out)


def _md_to_html(md: str, figures: dict[str, Figure]) -> str:
    """Minimal Markdown -> HTML for the report's own constructs (headings, lists, tables, images)."""
    body: list[str] = []
    lines = md.splitlines()
    i = 0

    def inline(s: str) -> str:
        s = html.escape(s)
        import re

        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
        s = re.sub(r"(?<!\*)\*(?!\*)(.+?)\*", r"<i>\1</i>", s)
        return s

    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            i -= 1
            body.append("<table>")
            for r_i, row in enumerate(rows):
                if r_i == 1:
                    continue
                tag = "th" if r_i == 0 else "td"
                body.append("<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in row) + "</tr>")
            body.append("</table>")
        elif line.startswith("- "):
            body.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                body.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            i -= 1
            body.append("</ul>")
        elif line.startswith("![") and "](plots/" in line:
            name = line.split("](plots/")[1].split(".png")[0]
            f = figures.get(name)
            if f is not None:
                b64 = base64.b64encode(f.png).decode("ascii")
                body.append(f'<img alt="{html.escape(f.caption)}" src="data:image/png;base64,{b64}"/>')
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse;}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;}td:first-child{text-align:left;}"
             "img{max-width:100%;}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>mammodetr evaluation</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(result, out_dir: str | Path, *, examples=None, gradcams=None, extra_sections=None,
                 band_resamples: int = 200) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``plots/*.png``) and self-contained ``report.html``; returns both paths."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    figures = build_figures(result, examples=examples, gradcams=gradcams, band_resamples=band_resamples)
    for f in figures:
        write_bytes_atomic(out / "plots" / f"{f.name}.png", f.png)
    md = markdown_report(result, figures, extra_sections=extra_sections)
    md_path = out / "report.md"
    write_text_atomic(md_path, md + "\n")
    html_path = out / "report.html"
    write_text_atomic(html_path, _md_to_html(md, {f.name: f for f in figures}))
    return md_path, html_path
