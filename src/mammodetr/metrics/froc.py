"""Free-response ROC: lesion sensitivity against mean false positives per image as the score threshold sweeps.

A prediction *hits* a lesion when IoU >= ``iou_threshold`` (default 0.25) or, with ``criterion="center"``, when
its centre lies inside the lesion box. At threshold tau (predictions with score >= tau are kept):

* a lesion is found when any kept prediction hits it (each lesion counts once);
* a kept prediction that hits no lesion is a false positive; extra hits on a found lesion are neither TP nor FP.

So a lesion's detection score is the highest score of the predictions hitting it, and the curve is exact at
every distinct score. Sensitivity at a fixed FP rate is interpolated linearly between curve points (the curve
starts at (0, 0)); beyond the last point (all predictions kept) the sensitivity stays at its final value,
because lowering the threshold further adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .detection import box_iou_batched, pad_boxes

__all__ = ["FROC_FP_RATES", "FrocResult", "froc"]

FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0)


@dataclass
class FrocResult:
    """FROC curve and its read-outs.

    Attributes:
        fp_per_image: (M+1,) curve abscissae, increasing, starting at 0.
        sensitivity: (M+1,) lesion sensitivity at each point.
        thresholds: (M+1,) score thresholds (first is +inf).
        sensitivity_at: {fp_rate: sensitivity} at ``FROC_FP_RATES`` (interpolated).
        mean_sensitivity: mean of ``sensitivity_at`` (the CPM-style summary).
    """

    fp_per_image: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    sensitivity_at: dict[float, float]
    mean_sensitivity: float
    n_images: int
    n_lesions: int
    criterion: str = "iou"
    iou_threshold: float = 0.25
    extra: dict = field(default_factory=dict)

    def to_dict(self, max_points: int = 200) -> dict:
        """JSON-friendly form; the curve is thinned to at most ``max_points`` points."""
        idx = np.unique(np.linspace(0, self.fp_per_image.size - 1, min(max_points, self.fp_per_image.size)).astype(int))
        return {
            "criterion": self.criterion,
            "iou_threshold": self.iou_threshold if self.criterion == "iou" else None,
            "n_images": self.n_images,
            "n_lesions": self.n_lesions,
            "sensitivity_at": {str(k): v for k, v in self.sensitivity_at.items()},
            "mean_sensitivity": self.mean_sensitivity,
            "curve": {
                "fp_per_image": self.fp_per_image[idx].tolist(),
                "sensitivity": self.sensitivity[idx].tolist(),
            },
        }


def froc(
    gt_boxes_xyxy: Sequence,
    pred_boxes_xyxy: Sequence,
    pred_scores: Sequence,
    *,
    criterion: str = "iou",
    iou_threshold: float = 0.25,
    fp_rates: Sequence[float] = FROC_FP_RATES,
    max_dets: int | None = None,
) -> FrocResult:
    """FROC over N images.

    Args:
        gt_boxes_xyxy: N arrays (G_i, 4) lesion boxes.
        pred_boxes_xyxy: N arrays (K_i, 4) predicted boxes.
        pred_scores: N arrays (K_i,) scores.
        criterion: "iou" (IoU >= iou_threshold) or "center" (prediction centre inside the lesion box).
        iou_threshold: used with criterion "iou".
        fp_rates: FP-per-image rates to read sensitivity at.
        max_dets: keep only the top ``max_dets`` predictions per image.
    """
    if criterion not in ("iou", "center"):
        raise ValueError(f"criterion must be 'iou' or 'center', got {criterion!r}")
    n_images = len(gt_boxes_xyxy)
    if not (n_images == len(pred_boxes_xyxy) == len(pred_scores)):
        raise ValueError("ground truth, boxes and scores must list the same images")
    gt, gt_valid, _ = pad_boxes(gt_boxes_xyxy)
    pred, det_valid, scores = pad_boxes(pred_boxes_xyxy, pred_scores)
    if max_dets is not None and pred.shape[1] > max_dets:
        order = np.argsort(np.where(det_valid, -scores, np.inf), axis=1, kind="mergesort")[:, :max_dets]
        pred = np.take_along_axis(pred, order[..., None], axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        det_valid = np.take_along_axis(det_valid, order, axis=1)
    if criterion == "iou":
        hit = box_iou_batched(pred, gt) >= iou_threshold
    else:
        cx = (pred[..., 0] + pred[..., 2]) / 2
        cy = (pred[..., 1] + pred[..., 3]) / 2
        hit = ((cx[:, :, None] >= gt[:, None, :, 0]) & (cx[:, :, None] <= gt[:, None, :, 2])
               & (cy[:, :, None] >= gt[:, None, :, 1]) & (cy[:, :, None] <= gt[:, None, :, 3]))
    hit &= det_valid[:, :, None] & gt_valid[:, None, :]
    lesion_score = np.where(hit, scores[:, :, None], -np.inf).max(axis=1, initial=-np.inf)[gt_valid]  # (L,)
    fp_scores = scores[det_valid & ~hit.any(axis=2)]
    n_lesions = int(gt_valid.sum())

    thresholds = np.unique(np.concatenate([lesion_score[np.isfinite(lesion_score)], fp_scores]))[::-1]
    # Counts of scores >= each threshold via sorted search.
    found = np.searchsorted(-np.sort(lesion_score)[::-1], -thresholds, side="right")
    fps = np.searchsorted(-np.sort(fp_scores)[::-1], -thresholds, side="right")
    sens = np.r_[0.0, found / n_lesions] if n_lesions else np.r_[0.0, np.full(thresholds.size, np.nan)]
    fppi = np.r_[0.0, fps / max(n_images, 1)]
    thresholds = np.r_[np.inf, thresholds]
    at = {}
    for r in fp_rates:
        at[float(r)] = float(_interp_sensitivity(fppi, sens, float(r))) if n_lesions else float("nan")
    mean_s = float(np.mean(list(at.values()))) if at else float("nan")
    return FrocResult(fppi, sens, thresholds, at, mean_s, n_images, n_lesions, criterion, iou_threshold)


def _interp_sensitivity(fppi: np.ndarray, sens: np.ndarray, rate: float) -> float:
    """Linear interpolation in FP/image between the last point at or below ``rate`` and the next one.

    Several points can share one FP rate (sensitivity rising while no FP is added); the last of them, the
    highest sensitivity reached at that rate, is the one used.
    """
    if rate >= fppi[-1]:
        return float(sens[-1])
    j = int(np.searchsorted(fppi, rate, side="right"))  # first point strictly beyond rate (fppi[0] = 0 <= rate)
    x0, y0, x1, y1 = fppi[j - 1], sens[j - 1], fppi[j], sens[j]
    return float(y0 + (y1 - y0) * (rate - x0) / (x1 - x0))
