"""pycocotools COCOeval as the independent reference for the localisation metrics (test helper)."""

from __future__ import annotations

import contextlib
import io

import numpy as np


def coco_ap_recall(gts, preds, scores, iou_thr: float, max_dets: int) -> tuple[float, float]:
    """COCOeval bbox, one category, iouThrs=[iou_thr], maxDets=[max_dets], area 'all': (AP, recall)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1, "width": 1000, "height": 1000} for i in range(len(gts))]
    anns = []
    for i, g in enumerate(gts):
        for b in np.asarray(g).reshape(-1, 4):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "bbox": [float(b[0]), float(b[1]), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
    res = [{"image_id": i + 1, "category_id": 1, "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]),
                                                          float(b[3] - b[1])], "score": float(s)}
           for i, (p, sc) in enumerate(zip(preds, scores)) for b, s in zip(np.asarray(p).reshape(-1, 4), sc)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(res) if res else COCO()
        if not res:
            dt.dataset = {"images": images, "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.array([iou_thr])
        ev.params.maxDets = [max_dets]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][0, :, 0, 0, 0]
    ap = float(np.mean(prec[prec > -1])) if (prec > -1).any() else -1.0
    return ap, float(ev.eval["recall"][0, 0, 0, 0])


def random_case(rng, n_images: int, max_gt: int = 4, max_pred: int = 6, round_scores: bool = False):
    """Random lesion boxes and predictions near them (and elsewhere); some images without boxes."""
    gts, preds, scores = [], [], []
    for _ in range(n_images):
        g = int(rng.integers(0, max_gt + 1))
        k = int(rng.integers(0, max_pred + 1))
        c = rng.uniform(20, 180, (g, 2))
        half = rng.uniform(3, 25, (g, 2))
        gts.append(np.c_[c - half, c + half])
        if g and rng.random() < 0.8:
            pc = c[rng.integers(0, g, k)] + rng.normal(0, 6, (k, 2))
        else:
            pc = rng.uniform(20, 180, (k, 2))
        ph = rng.uniform(3, 25, (k, 2))
        preds.append(np.c_[pc - ph, pc + ph])
        s = rng.random(k)
        scores.append(np.round(s, 1) if round_scores else s)
    return gts, preds, scores
