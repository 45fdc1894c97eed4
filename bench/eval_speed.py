"""Speed of the evaluation metrics on a synthetic test set (default 5,000 images x 3 predicted boxes).

Target (issue 6): detection metrics (map50, map25, recall25, iou, iou_top1) for 5,000 images in <= 1 s.
Also times FROC, DeLong, the 2,000-resample patient bootstrap and the pycocotools reference for comparison.

    python bench/eval_speed.py [--images 5000] [--repeats 5] [--no-coco]

Prints a table and writes bench/results/eval_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def synthetic(n_images: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gts, preds, scores = [], [], []
    for i in range(n_images):
        g = int(rng.integers(0, 3)) if i % 2 else 0  # half the images without lesions
        c = rng.uniform(100, 900, (g, 2))
        half = rng.uniform(10, 80, (g, 2))
        gts.append(np.c_[c - half, c + half])
        if g:  # predictions near the lesions, sizes within +-25%
            j = rng.integers(0, g, k)
            pc = c[j] + rng.normal(0, 8, (k, 2))
            ph = half[j] * rng.uniform(0.8, 1.25, (k, 2))
        else:
            pc, ph = rng.uniform(100, 900, (k, 2)), rng.uniform(10, 80, (k, 2))
        preds.append(np.c_[pc - ph, pc + ph])
        scores.append(rng.random(k))
    y = np.array([int(len(g) > 0) for g in gts])
    p = np.clip(0.5 * y + rng.uniform(0, 0.6, n_images), 0, 1)
    pids = np.arange(n_images) // 4
    return gts, preds, scores, y, p, pids


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--no-coco", action="store_true", help="skip timing pycocotools")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_speed.json"))
    args = ap.parse_args()

    from mammodetr.metrics.bootstrap import bootstrap_metrics
    from mammodetr.metrics.delong import delong_test
    from mammodetr.metrics.detection import detection_metrics, match_detections
    from mammodetr.metrics.froc import froc

    gts, preds, scores, y, p, pids = synthetic(args.images, args.k)
    rows = []
    t, det = best_of(lambda: detection_metrics(gts, preds, scores, max_dets=args.k), args.repeats)
    rows.append(("detection metrics (map50, map25, recall25, iou, iou_top1)", t, 1.0))
    t, _ = best_of(lambda: froc(gts, preds, scores, max_dets=args.k), args.repeats)
    rows.append(("FROC (IoU >= 0.25)", t, None))
    p2 = np.clip(p + np.random.default_rng(1).normal(0, 0.1, p.size), 0, 1)
    t, _ = best_of(lambda: delong_test(y, p, p2), args.repeats)
    rows.append(("DeLong paired test", t, None))
    match = match_detections(gts, preds, scores, max_dets=args.k)
    t, _ = best_of(lambda: bootstrap_metrics(y, p, pids, match=match, n_resamples=args.bootstrap),
                   max(1, args.repeats // 3))
    rows.append((f"patient bootstrap, {args.bootstrap} resamples, all 11 metrics", t, None))
    coco = None
    if not args.no_coco:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "evaluation"))
        from _coco_reference import coco_ap_recall

        t, coco = best_of(lambda: coco_ap_recall(gts, preds, scores, 0.5, args.k), 1)
        rows.append(("pycocotools COCOeval, one IoU threshold (reference)", t, None))

    print(f"{args.images} images x {args.k} boxes, {int(sum(len(g) for g in gts))} lesions "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
    print(f"{'step':<62} {'seconds':>9} {'target':>8}")
    for name, sec, target in rows:
        tgt = f"<= {target:g}" if target else ""
        print(f"{name:<62} {sec:>9.4f} {tgt:>8}")
    if coco is not None:
        print(f"map50 ours {det['map50']:.6f} vs pycocotools {coco[0]:.6f}")
    result = {
        "images": args.images, "k": args.k, "repeats": args.repeats, "cpus": os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__,
        "timings_s": {name: sec for name, sec, _ in rows},
        "target_detection_s": 1.0,
        "detection_within_target": rows[0][1] <= 1.0,
        "map50": det["map50"], "map50_pycocotools": None if coco is None else coco[0],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
