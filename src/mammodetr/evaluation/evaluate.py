"""Evaluation of one split: ground truth from a prepared dataset folder + predictions -> ``metrics.json``.

The top-level keys of ``metrics.json`` are exactly those of ``metrics.md`` (``accuracy, auc, sensitivity,
specificity, f1, f1_weighted, iou, iou_top1, map50, map25, recall25``) plus the nested ``ci``, ``froc``,
``operating_points``, ``calibration``, ``breast_level``, ``subgroups`` and ``meta``. Values are fractions;
undefined values (e.g. AUC of a single-class subgroup) are ``null``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .bootstrap import bootstrap_metrics
from .breast import aggregate_breasts
from .calibration import expected_calibration_error, reliability_data
from .classification import operating_points, roc_auc, threshold_metrics
from .detection import detection_metrics_weighted, match_detections
from .froc import froc
from .predictions import Prediction, PredictionSet
from .report import write_report

__all__ = [
    "TOP_LEVEL_KEYS",
    "EvalImage",
    "EvaluationOptions",
    "EvaluationResult",
    "load_split",
    "compute_metrics",
    "write_metrics",
    "to_jsonable",
    "load_prepared_pixels",
    "select_examples",
    "evaluate_split",
]

log = logging.getLogger(__name__)

TOP_LEVEL_KEYS = ("accuracy", "auc", "sensitivity", "specificity", "f1", "f1_weighted",
                  "iou", "iou_top1", "map50", "map25", "recall25")
CLASSIFICATION_KEYS = ("accuracy", "auc", "sensitivity", "specificity", "f1", "f1_weighted")
DETECTION_KEYS = ("iou", "iou_top1", "map50", "map25", "recall25")
DENSITY_FIELDS = ("density", "breast_density", "acr_density")


@dataclass
class EvalImage:
    """Ground truth of one dataset image.

    Attributes:
        boxes_xyxy_px: (G, 4) lesion boxes in prepared-image pixels.
    """

    file_name: str
    image_id: int
    patient_id: str
    label: int
    label_name: str
    laterality: str | None
    view: str | None
    study_id: str | None
    density: str | None
    width: int
    height: int
    boxes_xyxy_px: np.ndarray


@dataclass
class EvaluationOptions:
    """How a split is scored (every field is recorded in ``meta``)."""

    threshold: float = 0.5
    threshold_source: str = "default"
    val_threshold: float | None = None
    val_threshold_source: str | None = None
    n_bootstrap: int = 2000
    level: float = 0.95
    seed: int = 0
    max_dets: int | None = None
    images_with_boxes_only: bool = False
    froc_iou: float = 0.25
    breast_aggregate: str = "max"
    calibration_bins: int = 10


@dataclass
class EvaluationResult:
    """Metrics plus the aligned per-image arrays the report and ``compare`` need."""

    metrics: dict
    images: list[EvalImage]
    predictions: list[Prediction]
    per_image: list[dict] = field(default_factory=list)


def _label_to_int(label, file_name: str) -> tuple[int, str]:
    if isinstance(label, str):
        name = label.strip().lower()
        if name not in ("normal", "benign", "malignant"):
            raise ValueError(f"{file_name}: label {label!r} is not normal|benign|malignant")
        return int(name == "malignant"), name
    if label in (0, 1):
        return int(label), "malignant" if label == 1 else "benign"
    raise ValueError(f"{file_name}: label {label!r} is not normal|benign|malignant")


def load_split(data_dir: str | Path, split: str | None) -> list[EvalImage]:
    """Ground truth of a split of a prepared dataset folder (``annotations.json``).

    Args:
        data_dir: prepared dataset folder.
        split: image ``split`` value to keep ("test", "val", ...); None keeps all images.

    Raises:
        ValueError: missing file, unknown split, or malformed entries (naming the image).
    """
    path = Path(data_dir) / "annotations.json"
    if not path.is_file():
        raise ValueError(f"{path}: not found (expected a prepared dataset folder)")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
    boxes: dict[int, list] = {}
    for ann in coco.get("annotations", []):
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes.setdefault(int(ann["image_id"]), []).append([x, y, x + w, y + h])
    images = []
    splits_seen = set()
    for im in coco.get("images", []):
        splits_seen.add(im.get("split"))
        if split is not None and im.get("split") != split:
            continue
        name = im["file_name"]
        if "label" not in im or "patient_id" not in im:
            raise ValueError(f"{path}: image {name!r} lacks 'label' or 'patient_id'")
        label, label_name = _label_to_int(im["label"], name)
        density = next((str(im[k]) for k in DENSITY_FIELDS if im.get(k) not in (None, "")), None)
        images.append(EvalImage(
            file_name=name, image_id=int(im["id"]), patient_id=str(im["patient_id"]), label=label,
            label_name=label_name, laterality=im.get("laterality"), view=im.get("view"),
            study_id=None if im.get("study_id") is None else str(im["study_id"]), density=density,
            width=int(im.get("width", 0)), height=int(im.get("height", 0)),
            boxes_xyxy_px=np.asarray(boxes.get(int(im["id"]), []), dtype=np.float64).reshape(-1, 4),
        ))
    if not images:
        raise ValueError(f"{path}: no images in split {split!r} (splits present: "
                         f"{sorted(str(s) for s in splits_seen)})")
    return images


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def align_predictions(images: list[EvalImage], preds: PredictionSet) -> tuple[list[EvalImage], list[Prediction], list[str]]:
    """Pair dataset images with predictions by ``file_name``.

    Images whose prediction failed are dropped and listed; a dataset image with no line at all is an error.

    Returns:
        kept images, their predictions (same order), names of images dropped because prediction failed.
    """
    failed = {e.file_name for e in preds.errors}
    missing = [im.file_name for im in images if im.file_name not in preds.by_name and im.file_name not in failed]
    if missing:
        raise ValueError(f"predictions lack {len(missing)} of {len(images)} images of the split, e.g. "
                         f"{missing[:3]} (file_name must match the dataset's image file_name)")
    kept = [im for im in images if im.file_name in preds.by_name]
    dropped = [im.file_name for im in images if im.file_name in failed]
    if dropped:
        log.warning("%d images failed in prediction and are left out of the metrics, e.g. %s", len(dropped), dropped[:3])
    return kept, [preds.by_name[im.file_name] for im in kept], dropped


def _subgroup_metrics(mask: np.ndarray, y, p, threshold, match, det_weights) -> dict:
    y_s, p_s = y[mask], p[mask]
    out = {"n_images": int(mask.sum()), "n_malignant": int(y_s.sum())}
    tm = threshold_metrics(y_s, p_s, threshold) if mask.any() else {}
    out.update({k: tm.get(k, math.nan) for k in ("accuracy", "sensitivity", "specificity")})
    out["auc"] = roc_auc(y_s, p_s) if mask.any() else math.nan
    dm = detection_metrics_weighted(match, (det_weights * mask)[None, :])
    out["n_lesions"] = int(match.n_gt[mask].sum())
    out.update({k: float(dm[k][0]) for k in ("map25", "map50", "recall25", "iou_top1")})
    return out


def compute_metrics(
    images: Sequence[EvalImage],
    predictions: Sequence[Prediction],
    options: EvaluationOptions,
    *,
    meta: dict | None = None,
) -> EvaluationResult:
    """All metrics of ``metrics.md`` for aligned images and predictions.

    Args:
        images: ground truth, N images.
        predictions: predictions for the same N images, same order (boxes in the images' pixels).
        options: thresholds, bootstrap size, K, ...
        meta: extra entries merged into ``meta`` (checkpoint, hashes, split ...).
    """
    images, predictions = list(images), list(predictions)
    if len(images) != len(predictions):
        raise ValueError("images and predictions must align one to one")
    y = np.array([im.label for im in images], dtype=np.int64)
    p = np.array([pr.p_malignant for pr in predictions], dtype=np.float64)
    pids = [im.patient_id for im in images]
    gt = [im.boxes_xyxy_px for im in images]
    boxes = [pr.boxes_xyxy_px for pr in predictions]
    scores = [pr.scores for pr in predictions]
    k = options.max_dets if options.max_dets is not None else max((len(s) for s in scores), default=0)
    t = options.threshold

    metrics: dict = {}
    metrics.update(threshold_metrics(y, p, t))
    metrics["auc"] = roc_auc(y, p)
    match = match_detections(gt, boxes, scores, max_dets=k)
    n_gt = match.n_gt
    det_w = (n_gt > 0).astype(np.float64) if options.images_with_boxes_only else np.ones(len(images))
    det = detection_metrics_weighted(match, det_w[None, :])
    metrics.update({key: float(det[key][0]) for key in DETECTION_KEYS})
    metrics = {key: metrics[key] for key in TOP_LEVEL_KEYS}

    # --- confidence intervals (patient-level bootstrap) ---
    ci: dict = {}
    if options.n_bootstrap > 0:
        boot = bootstrap_metrics(y, p, pids, threshold=t, match=match, detection_weights=det_w,
                                 n_resamples=options.n_bootstrap, level=options.level, seed=options.seed)
        ci = {key: val for key, val in boot.intervals().items() if key in TOP_LEVEL_KEYS}
        ci["level"] = options.level
        ci["n_resamples"] = options.n_bootstrap
        ci["unit"] = "patient"

    # --- FROC ---
    det_mask = det_w > 0
    sel = [i for i in range(len(images)) if det_mask[i]]
    froc_out = {}
    for crit in ("iou", "center"):
        fr = froc([gt[i] for i in sel], [boxes[i] for i in sel], [scores[i] for i in sel],
                  criterion=crit, iou_threshold=options.froc_iou, max_dets=k)
        froc_out[crit] = fr.to_dict()
    froc_out["primary"] = "iou"

    # --- operating points ---
    ops = operating_points(y, p) if 0 < y.sum() < y.size else {}
    if options.val_threshold is not None:
        vt = threshold_metrics(y, p, options.val_threshold)
        ops["val_threshold"] = {"threshold": options.val_threshold, "source": options.val_threshold_source, **vt}

    # --- calibration ---
    calibration = {
        "ece": expected_calibration_error(y, p, options.calibration_bins),
        "n_bins": options.calibration_bins,
        "reliability": reliability_data(y, p, options.calibration_bins),
    }

    # --- breast level ---
    breast = aggregate_breasts(p, y, pids, [im.study_id for im in images], [im.laterality for im in images],
                               how=options.breast_aggregate)
    breast_level = None
    if breast is not None:
        breast_level = {"aggregate": options.breast_aggregate, "n_breasts": len(breast.keys),
                        "n_malignant": int(breast.labels.sum()), "auc": roc_auc(breast.labels, breast.scores),
                        **{k2: v for k2, v in threshold_metrics(breast.labels, breast.scores, t).items()}}
        if options.n_bootstrap > 0 and 0 < breast.labels.sum() < breast.labels.size:
            bb = bootstrap_metrics(breast.labels, breast.scores, breast.patient_ids, threshold=t,
                                   n_resamples=options.n_bootstrap, level=options.level, seed=options.seed)
            breast_level["ci"] = {"auc": bb.intervals()["auc"]}

    # --- subgroups ---
    subgroups: dict = {}
    for attr, name in (("view", "view"), ("density", "density")):
        values = [getattr(im, attr) for im in images]
        uniq = sorted({v for v in values if v not in (None, "")})
        if uniq:
            arr = np.array([v if v is not None else "" for v in values], dtype=object)
            subgroups[name] = {v: _subgroup_metrics(arr == v, y, p, t, match, det_w) for v in uniq}
    subgroups["lesion_size"] = _lesion_size_table(match, det_mask)

    counts = {
        "n_images": len(images), "n_patients": len(set(pids)), "n_malignant": int(y.sum()),
        "n_benign_or_normal": int((1 - y).sum()), "n_lesions": int(n_gt.sum()),
        "n_images_with_boxes": int((n_gt > 0).sum()),
    }
    meta_out = {
        **counts,
        "threshold": t, "threshold_source": options.threshold_source, "max_dets": k,
        "detection_images": "with_boxes" if options.images_with_boxes_only else "all",
        "froc_iou": options.froc_iou, "breast_aggregate": options.breast_aggregate,
        "paper_iou_compared_with": "iou_top1",
        "options": asdict(options),
    }
    if meta:
        meta_out.update(meta)
    metrics.update({"ci": ci, "froc": froc_out, "operating_points": ops, "calibration": calibration,
                    "breast_level": breast_level, "subgroups": subgroups, "meta": meta_out})

    per_image = []
    for i, (im, pr) in enumerate(zip(images, predictions)):
        per_image.append({
            "file_name": im.file_name, "patient_id": im.patient_id, "label": int(im.label),
            "p_malignant": float(pr.p_malignant), "n_gt": int(n_gt[i]),
            "top1_iou": None if n_gt[i] == 0 else float(match.top1_iou[i]),
            "matched25": int(match.gt_matched[0.25][i]),
        })
    return EvaluationResult(metrics, images, predictions, per_image)


def _lesion_size_table(match, det_mask) -> dict:
    """Lesion-level recall@0.25 and best IoU by lesion size (tertiles of sqrt(box area) in pixels)."""
    valid = match.gt_valid & det_mask[:, None]
    if not valid.any():
        return {}
    b = match.gt_boxes[valid]
    size = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
    hit = match.gt_hit[0.25][valid]
    best = match.gt_best_iou[valid]
    edges = np.quantile(size, [1 / 3, 2 / 3]) if size.size >= 3 else np.array([np.inf, np.inf])
    groups = np.digitize(size, edges, right=True)
    out = {"edges_px": [float(e) for e in edges if np.isfinite(e)], "basis": "tertiles of sqrt(box area), pixels"}
    for gi, name in enumerate(("small", "medium", "large")):
        m = groups == gi
        if m.any():
            out[name] = {"n_lesions": int(m.sum()), "recall25": float(hit[m].mean()), "iou": float(best[m].mean()),
                         "size_px_min": float(size[m].min()), "size_px_max": float(size[m].max())}
    return out


def to_jsonable(obj):
    """Convert numpy scalars/arrays to Python and NaN/inf to None, recursively."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_metrics(result: EvaluationResult, out_dir: str | Path) -> Path:
    """Write ``metrics.json`` and ``per_image.jsonl`` (for paired comparisons) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    path.write_text(json.dumps(to_jsonable(result.metrics), indent=2) + "\n", encoding="utf-8")
    with (out / "per_image.jsonl").open("w", encoding="utf-8") as f:
        for row in result.per_image:
            f.write(json.dumps(to_jsonable(row)) + "\n")
    return path


def load_prepared_pixels(data_dir: str | Path, file_name: str) -> np.ndarray:
    """A prepared dataset image as float32 (H, W) in [0, 1] (8- or 16-bit PNG)."""
    from PIL import Image

    root = Path(data_dir)
    for cand in (root / file_name, root / "images" / file_name):
        if cand.is_file():
            with Image.open(cand) as im:
                arr = np.asarray(im)
            if arr.ndim == 3:
                arr = arr[..., :3].mean(axis=2)
            maxv = 65535.0 if arr.dtype == np.uint16 or arr.max() > 255 else 255.0
            return (arr.astype(np.float32) / maxv).clip(0, 1)
    raise ValueError(f"{root / file_name}: image not found in the dataset folder")


def select_examples(result: EvaluationResult, n_per_kind: int = 2) -> list[tuple[int, str]]:
    """Indices of example images: found lesions (TP), missed lesions, false positives on lesion-free images.

    Returns:
        list of ``(image index, kind)`` with kind in ``"TP"``, ``"missed"``, ``"FP"``.
    """
    rows = result.per_image
    top = np.array([float(pr.scores.max()) if pr.scores.size else -1.0 for pr in result.predictions])
    tp = [i for i, r in enumerate(rows) if r["n_gt"] and r["matched25"] == r["n_gt"]]
    missed = [i for i, r in enumerate(rows) if r["n_gt"] and r["matched25"] < r["n_gt"]]
    fp = [i for i, r in enumerate(rows) if not r["n_gt"] and top[i] >= 0]
    tp.sort(key=lambda i: -top[i])
    missed.sort(key=lambda i: -rows[i]["p_malignant"])
    fp.sort(key=lambda i: -top[i])
    return ([(i, "TP") for i in tp[:n_per_kind]] + [(i, "missed") for i in missed[:n_per_kind]]
            + [(i, "FP") for i in fp[:n_per_kind]])


def _example_panels(result: EvaluationResult, data_dir, picks) -> list[dict]:
    panels = []
    k = result.metrics["meta"]["max_dets"]
    for i, kind in picks:
        im, pr = result.images[i], result.predictions[i]
        try:
            pixels = load_prepared_pixels(data_dir, im.file_name)
        except (ValueError, OSError) as e:
            log.warning("example image skipped: %s", e)
            continue
        order = np.argsort(-pr.scores, kind="mergesort")[:k]
        from .detection import match_detections as _md

        mt = _md([im.boxes_xyxy_px], [pr.boxes_xyxy_px], [pr.scores], max_dets=k, iou_thresholds=(0.25,))
        panels.append({"pixels": pixels, "gt": im.boxes_xyxy_px, "pred": pr.boxes_xyxy_px[order],
                       "scores": pr.scores[order], "matched": mt.gt_hit[0.25][0][: len(im.boxes_xyxy_px)],
                       "title": f"{kind}: {Path(im.file_name).name}\np={pr.p_malignant:.2f} label={im.label_name}"})
    return panels


def evaluate_split(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = "test",
    predictions_path: str | Path | None = None,
    checkpoint: str | Path | None = None,
    options: EvaluationOptions | None = None,
    batch_size: int = 8,
    report: bool = True,
    n_gradcam: int = 4,
    device: str = "cpu",
    model=None,
    config: dict | None = None,
) -> EvaluationResult:
    """Score one split and write ``metrics.json``, ``per_image.jsonl`` and the report into ``out_dir``.

    Exactly one source is given: ``predictions_path``, ``checkpoint``, or an in-memory ``model`` with its
    run ``config`` (as ``load_model`` returns them). With a model the split is predicted first
    (``predictions.jsonl`` is written too) and Grad-CAM localisation scores are added (``gradcam.json``).
    """
    if sum(x is not None for x in (predictions_path, checkpoint, model)) != 1:
        raise ValueError("give exactly one of a predictions file, a checkpoint or a model")
    if model is not None and config is None:
        raise ValueError("a model needs its run config (config['data'] holds the input geometry)")
    options = options or EvaluationOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = load_split(data_dir, split)
    meta = {"split": split, "data_dir": str(data_dir),
            "data_hash": file_sha256(Path(data_dir) / "annotations.json")}
    if checkpoint is not None or model is not None:
        from .predict import predict_prepared
        from .predictions import write_predictions

        if checkpoint is not None:
            from mammodetr.checkpoint import load_model

            model, config = load_model(checkpoint, map_location=device)
        preds = predict_prepared(model, config, data_dir, [im.file_name for im in images],
                                 batch_size=batch_size, device=device)
        pred_path = write_predictions(out / "predictions.jsonl", list(preds.by_name.values()) + preds.errors)
        meta["checkpoint"] = str(checkpoint) if checkpoint is not None else "in-memory model"
        if options.max_dets is None:
            options.max_dets = int(config.get("model", {}).get("num_queries", 3))
    else:
        from .predictions import read_predictions

        pred_path = Path(predictions_path)
        preds = read_predictions(pred_path)
        meta["predictions"] = str(pred_path)
    meta["predictions_hash"] = file_sha256(pred_path)
    kept, aligned, dropped = align_predictions(images, preds)
    meta["n_failed_predictions"] = len(dropped)
    meta["failed_predictions"] = dropped[:20]
    result = compute_metrics(kept, aligned, options, meta=meta)
    gradcam_panels, extra = [], []
    if model is not None:
        from .gradcam import localisation_scores

        try:
            loc = localisation_scores(model, config, data_dir, kept, device=device, n_overlays=n_gradcam)
        except ImportError as e:  # the metrics do not need Grad-CAM; say how to get it
            e = RuntimeError(f"the grad-cam package is not installed (pip install 'mammodetr[gradcam]'): {e}")
            log.warning("Grad-CAM localisation skipped: %s", e)
            loc = None
            extra.append(f"## Grad-CAM localisation\n\nNot computed: {e}")
        except (ValueError, RuntimeError) as e:  # e.g. a model without the default target layer
            log.warning("Grad-CAM localisation skipped: %s", e)
            loc = None
            extra.append(f"## Grad-CAM localisation\n\nNot computed: {e}")
    if model is not None and loc is not None:
        (out / "gradcam.json").write_text(json.dumps(to_jsonable(loc.summary), indent=2) + "\n", encoding="utf-8")
        result.metrics["meta"]["gradcam"] = {**loc.summary, "file": "gradcam.json"}
        gradcam_panels = loc.overlays
        s = loc.summary
        extra.append(f"## Grad-CAM localisation\n\nOver {s['n_images']} images with boxes: pointing-game hit "
                     f"rate {100 * s['pointing_game']:.1f}%, CAM energy inside the boxes "
                     f"{100 * s['energy_in_box']:.1f}% (boxes cover {100 * s['box_area_fraction']:.1f}% of the "
                     f"image area on average; a CAM spread uniformly would put that much energy inside). "
                     f"Target layer: `{s['target_layer']}`.")
    write_metrics(result, out)
    if report:
        picks = select_examples(result)
        write_report(result, out, examples=_example_panels(result, data_dir, picks), gradcams=gradcam_panels,
                     extra_sections=extra)
    return result
