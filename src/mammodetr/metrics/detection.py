"""Lesion-localisation metrics for one class ("lesion"), vectorised over images.

``map50`` / ``map25`` reproduce pycocotools' ``COCOeval`` (bbox, one category, ``iouThrs=[t]``,
``maxDets=[K]``, area range "all", 101-point interpolated precision) exactly:

* per image, detections are stably sorted by score and truncated to K; each detection in turn is matched to the
  still-unmatched ground-truth box with the highest IoU >= t (on equal IoU the later box wins, as in COCO);
* all detections of all images are stably sorted by score (images in the given order, like COCO's sorted image
  ids), cumulative TP/FP give recall and precision, precision is made monotone from the right and read at the
  101 recall thresholds 0, 0.01, ..., 1 (0 beyond the last recall reached).

``recall25`` is COCO's recall at IoU 0.25 (matched ground-truth boxes / all ground-truth boxes). ``iou`` is the
mean over ground-truth boxes of the best IoU with any of the image's K predictions, ``iou_top1`` the mean over
images with boxes of the IoU between the top-scoring prediction and its best ground-truth box.

Matching does not depend on which images a bootstrap resample draws, so resamples only re-weight images:
:func:`detection_metrics_weighted` computes every metric for B resamples at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "COCO_RECALL_THRESHOLDS",
    "pad_boxes",
    "box_iou_batched",
    "DetectionMatch",
    "match_detections",
    "average_precision",
    "detection_metrics",
    "detection_metrics_weighted",
]

# Exactly COCOeval's Params.recThrs.
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


def pad_boxes(boxes_xyxy: Sequence, scores: Sequence | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack a ragged list of per-image boxes into a padded array.

    Args:
        boxes_xyxy: N arrays of shape (M_i, 4) (or empty).
        scores: optional N arrays (M_i,); padding gets -inf.

    Returns:
        ``boxes (N, M, 4) float64``, ``valid (N, M) bool``, ``scores (N, M) float64`` (zeros if not given).
    """
    arrays = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes_xyxy]
    counts = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    n = len(arrays)
    m = int(counts.max()) if n else 0
    valid = np.arange(m)[None, :] < counts[:, None]
    out = np.zeros((n, m, 4), dtype=np.float64)
    if m:
        out[valid] = np.concatenate(arrays, axis=0)
    sc = np.full((n, m), -np.inf)
    if scores is not None:
        flat = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores]
        for i, (s, c) in enumerate(zip(flat, counts)):
            if s.size != c:
                raise ValueError(f"image {i}: {c} boxes but {s.size} scores")
        if m:
            sc[valid] = np.concatenate(flat)
    else:
        sc[valid] = 0.0
    if not np.isfinite(out).all():
        raise ValueError("boxes contain NaN or infinite coordinates")
    return out, valid, sc


def box_iou_batched(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b``, per image.

    Args:
        a_xyxy: (N, K, 4).
        b_xyxy: (N, G, 4).

    Returns:
        (N, K, G) IoU, 0 where the union is empty.
    """
    a = a_xyxy[:, :, None, :]
    b = b_xyxy[:, None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _greedy_match(ious: np.ndarray, det_valid: np.ndarray, gt_valid: np.ndarray, thr: float):
    """COCO's greedy matching, vectorised over images; detections must be sorted by score already.

    Returns:
        ``det_matched (N, K) bool``, ``gt_matched (N, G) bool``.
    """
    n, k, g = ious.shape
    det_matched = np.zeros((n, k), dtype=bool)
    gt_matched = np.zeros((n, g), dtype=bool)
    if g == 0 or k == 0:
        return det_matched, gt_matched
    thr = min(thr, 1 - 1e-10)  # COCO's starting value
    rows = np.arange(n)
    for d in range(k):
        cand = np.where(gt_valid & ~gt_matched, ious[:, d, :], -1.0)
        # COCO keeps the LAST box among equal best IoUs (it replaces on >=): argmax over the reversed axis.
        best_rev = np.argmax(cand[:, ::-1], axis=1)
        best = g - 1 - best_rev
        best_iou = cand[rows, best]
        hit = det_valid[:, d] & (best_iou >= thr)
        det_matched[hit, d] = True
        gt_matched[rows[hit], best[hit]] = True
    return det_matched, gt_matched


@dataclass
class DetectionMatch:
    """Per-image matching results that every localisation metric (and its bootstrap) is computed from.

    Attributes:
        scores: (N, K) detection scores sorted descending per image (-inf = padding).
        det_valid: (N, K) real detections (after truncation to max_dets).
        det_matched: {iou_threshold: (N, K) bool} COCO TP flags.
        n_gt: (N,) ground-truth boxes per image.
        gt_matched: {iou_threshold: (N,) int} matched ground-truth boxes per image.
        best_iou_sum: (N,) sum over the image's ground-truth boxes of their best IoU with any prediction.
        top1_iou: (N,) IoU of the top prediction with its best ground-truth box (0 without predictions; NaN for
            images without ground truth).
        gt_valid: (N, G) real ground-truth boxes (padding False).
        gt_hit: {iou_threshold: (N, G) bool} which ground-truth boxes were matched.
        gt_best_iou: (N, G) best IoU of each ground-truth box with any kept prediction.
        gt_boxes: (N, G, 4) padded ground-truth boxes (x1 y1 x2 y2).
    """

    scores: np.ndarray
    det_valid: np.ndarray
    det_matched: dict[float, np.ndarray]
    n_gt: np.ndarray
    gt_matched: dict[float, np.ndarray]
    best_iou_sum: np.ndarray
    top1_iou: np.ndarray
    gt_valid: np.ndarray
    gt_hit: dict[float, np.ndarray]
    gt_best_iou: np.ndarray
    gt_boxes: np.ndarray


def match_detections(
    gt_boxes_xyxy: Sequence,
    pred_boxes_xyxy: Sequence,
    pred_scores: Sequence,
    *,
    max_dets: int | None = None,
    iou_thresholds: Sequence[float] = (0.5, 0.25),
) -> DetectionMatch:
    """Match predictions to ground truth in every image.

    Args:
        gt_boxes_xyxy: N arrays (G_i, 4) of ground-truth boxes (pixels, x1 y1 x2 y2).
        pred_boxes_xyxy: N arrays (K_i, 4) of predicted boxes in the same pixels.
        pred_scores: N arrays (K_i,) of objectness scores.
        max_dets: keep the top ``max_dets`` predictions per image (COCO maxDets); None keeps all.
        iou_thresholds: thresholds to match at.
    """
    if not (len(gt_boxes_xyxy) == len(pred_boxes_xyxy) == len(pred_scores)):
        raise ValueError("ground truth, boxes and scores must list the same images")
    gt, gt_valid, _ = pad_boxes(gt_boxes_xyxy)
    pred, det_valid, scores = pad_boxes(pred_boxes_xyxy, pred_scores)
    if pred.shape[1] and (~np.isfinite(scores[det_valid])).any():
        raise ValueError("prediction scores contain NaN or infinite values")
    # Stable per-image sort by score (COCO: np.argsort(-score, kind="mergesort")); padding sorts last.
    order = np.argsort(np.where(det_valid, -scores, np.inf), axis=1, kind="mergesort")
    pred = np.take_along_axis(pred, order[..., None], axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    det_valid = np.take_along_axis(det_valid, order, axis=1)
    if max_dets is not None:
        pred, scores, det_valid = pred[:, :max_dets], scores[:, :max_dets], det_valid[:, :max_dets]
    ious = box_iou_batched(pred, gt)
    ious = np.where(det_valid[:, :, None] & gt_valid[:, None, :], ious, 0.0)
    det_matched, gt_matched, gt_hit = {}, {}, {}
    for t in iou_thresholds:
        dm, gm = _greedy_match(ious, det_valid, gt_valid, float(t))
        det_matched[float(t)] = dm
        gt_hit[float(t)] = gm
        gt_matched[float(t)] = gm.sum(axis=1)
    n_gt = gt_valid.sum(axis=1)
    gt_best = ious.max(axis=1, initial=0.0) * gt_valid  # (N, G)
    best_iou_sum = gt_best.sum(axis=1)
    top1 = ious[:, 0, :].max(axis=1, initial=0.0) if pred.shape[1] and gt.shape[1] else np.zeros(len(n_gt))
    top1 = np.where(n_gt > 0, top1, np.nan)
    return DetectionMatch(scores, det_valid, det_matched, n_gt, gt_matched, best_iou_sum, top1,
                          gt_valid, gt_hit, gt_best, gt)


def average_precision(scores: np.ndarray, matched: np.ndarray, n_gt: float) -> float:
    """COCO 101-point interpolated AP from detections listed image by image (each image sorted by score).

    Args:
        scores: (D,) detection scores.
        matched: (D,) True for a true positive.
        n_gt: number of ground-truth boxes.

    Returns:
        AP, or NaN when there is no ground truth (COCO reports -1).
    """
    if n_gt <= 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    tp = matched[order]
    tp_sum = np.cumsum(tp, dtype=np.float64)
    fp_sum = np.cumsum(~tp, dtype=np.float64)
    if tp.size == 0:
        return 0.0
    rc = tp_sum / n_gt
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]
    idx = np.searchsorted(rc, COCO_RECALL_THRESHOLDS, side="left")
    q = np.where(idx < pr.size, pr[np.minimum(idx, pr.size - 1)], 0.0)
    return float(q.mean())


def detection_metrics(
    gt_boxes_xyxy: Sequence,
    pred_boxes_xyxy: Sequence,
    pred_scores: Sequence,
    *,
    max_dets: int | None = None,
    images_with_boxes_only: bool = False,
) -> dict[str, float]:
    """``map50, map25, recall25, iou, iou_top1`` over a set of images (see the module docstring).

    Args:
        gt_boxes_xyxy: N arrays (G_i, 4), images without lesions give an empty array.
        pred_boxes_xyxy: N arrays (K_i, 4).
        pred_scores: N arrays (K_i,).
        max_dets: predictions kept per image (K); None keeps all.
        images_with_boxes_only: evaluate only images with at least one ground-truth box.
    """
    match = match_detections(gt_boxes_xyxy, pred_boxes_xyxy, pred_scores, max_dets=max_dets)
    weights = (match.n_gt > 0).astype(np.float64) if images_with_boxes_only else np.ones(match.n_gt.size)
    out = detection_metrics_weighted(match, weights[None, :])
    return {k: float(v[0]) for k, v in out.items()}


def detection_metrics_weighted(match: DetectionMatch, weights: np.ndarray, chunk: int = 512) -> dict[str, np.ndarray]:
    """Localisation metrics for B image weightings at once (weight w = image drawn w times).

    An image drawn w times contributes w identical detections with equal score; the TP/FP counts simply scale,
    so weighted cumulative sums give exactly the AP of the resampled image set.

    Args:
        match: result of :func:`match_detections`.
        weights: (B, N) non-negative image weights.
        chunk: resamples processed together (bounds memory).

    Returns:
        dict of (B,) arrays: ``map50, map25, recall25, iou, iou_top1`` (NaN where undefined).
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n_img = match.n_gt.size
    if w.shape[1] != n_img:
        raise ValueError(f"weights cover {w.shape[1]} images, match has {n_img}")
    flat_valid = match.det_valid.reshape(-1)
    det_img = np.repeat(np.arange(n_img), match.det_valid.shape[1])[flat_valid]
    det_scores = match.scores.reshape(-1)[flat_valid]
    order = np.argsort(-det_scores, kind="mergesort")
    det_img = det_img[order]
    n_gt_w = w @ match.n_gt.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for t, name in ((0.5, "map50"), (0.25, "map25")):
        if t in match.det_matched:
            tp_flag = match.det_matched[t].reshape(-1)[flat_valid][order]
            out[name] = _weighted_ap(w, det_img, tp_flag, n_gt_w, chunk)
    with np.errstate(invalid="ignore", divide="ignore"):
        if 0.25 in match.gt_matched:
            out["recall25"] = np.where(n_gt_w > 0, (w @ match.gt_matched[0.25]) / n_gt_w, np.nan)
        out["iou"] = np.where(n_gt_w > 0, (w @ match.best_iou_sum) / n_gt_w, np.nan)
        has = match.n_gt > 0
        n_img_w = w[:, has].sum(axis=1)
        out["iou_top1"] = np.where(n_img_w > 0, (w[:, has] @ match.top1_iou[has]) / n_img_w, np.nan)
    return out


def _weighted_ap(w: np.ndarray, det_img: np.ndarray, tp_flag: np.ndarray, n_gt: np.ndarray,
                 chunk: int) -> np.ndarray:
    """Row-wise COCO AP for image weights ``w (B, N)``; detections in global score order.

    Only true-positive positions matter: recall rises only there, and precision's right-to-left maximum is
    always reached at a true positive (each false positive lowers it). So the cumulative count of all
    detections is needed only at the TP positions; it is a cumulative sum over the segments between them,
    and a segment's weight is a sparse (segments x images) count matrix times the weights, which avoids any
    (B x all detections) array.

    Args:
        w: (B, N) image weights.
        det_img: (D,) image index of each detection, detections sorted by score (stable, as COCO).
        tp_flag: (D,) true-positive flags in the same order.
        n_gt: (B,) weighted ground-truth count.
    """
    from scipy.sparse import csr_matrix

    bsz, n_img = w.shape
    ap = np.full(bsz, np.nan)
    tp_pos = np.nonzero(tp_flag)[0]
    if tp_pos.size == 0:
        return np.where(n_gt > 0, 0.0, np.nan)
    seg = np.searchsorted(tp_pos, np.arange(det_img.size), side="left")  # detection -> TP it precedes (or is)
    keep = seg < tp_pos.size  # detections after the last TP change neither recall nor the envelope
    counts = csr_matrix((np.ones(int(keep.sum())), (seg[keep], det_img[keep])), shape=(tp_pos.size, n_img))
    tp_img = det_img[tp_pos]
    for s in range(0, bsz, chunk):
        ws = w[s:s + chunk]
        all_cum = np.cumsum(np.asarray(counts @ ws.T).T, axis=1)  # (b, T) detections up to each TP
        tp_w = ws[:, tp_img]
        tp_cum = np.cumsum(tp_w, axis=1)
        pr = tp_cum / (all_cum + np.spacing(1))
        pr[tp_w == 0] = 0.0  # a TP of an image not drawn is not a detection of this resample
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        ng = n_gt[s:s + chunk]
        for i in range(ws.shape[0]):
            if not ng[i] > 0:
                continue
            idx = np.searchsorted(tp_cum[i] / ng[i], COCO_RECALL_THRESHOLDS, side="left")
            ap[s + i] = np.where(idx < tp_pos.size, pr[i, np.minimum(idx, tp_pos.size - 1)], 0.0).mean()
    return ap
