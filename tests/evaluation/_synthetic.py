"""A tiny prepared dataset folder (annotations.json + 16-bit PNGs) written in tmp_path (test helper)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_prepared_dataset(root: Path, n_patients: int = 12, size_hw=(64, 48), seed: int = 0,
                          split: str = "test") -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    h, w = size_hw
    for p in range(n_patients):
        malignant = p % 3 == 0
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                iid = len(images) + 1
                name = f"images/p{p}_{lat}_{view}.png"
                pix = (rng.random((h, w)) * 20000).astype(np.uint16)
                Image.fromarray(pix).save(root / name)
                label = "malignant" if (malignant and lat == "L") else ("benign" if p % 3 == 1 else "normal")
                images.append({"id": iid, "file_name": name, "width": w, "height": h, "patient_id": f"P{p}",
                               "label": label, "laterality": lat, "view": view, "study_id": f"S{p}",
                               "split": split, "density": "AB"[p % 2]})
                if label != "normal":
                    for _ in range(1 + (iid % 2)):
                        x, y = rng.uniform(2, w - 20), rng.uniform(2, h - 20)
                        bw, bh = rng.uniform(5, 15, 2)
                        anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": 1,
                                     "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0, "pathology": label})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def ground_truth_predictions(root: Path, rng, noise: float = 0.0) -> list[dict]:
    """Predictions that copy the ground-truth boxes (+ noise) and a label-correlated p_malignant."""
    coco = json.loads((root / "annotations.json").read_text())
    by_img: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        by_img.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    rows = []
    for im in coco["images"]:
        true_boxes = by_img.get(im["id"], [])
        boxes = np.asarray(true_boxes, dtype=float).reshape(-1, 4) + rng.normal(0, noise, (len(true_boxes), 4))
        # noise larger than a box may swap its corners: keep [x1, y1, x2, y2] (evaluate refuses inverted boxes)
        boxes = np.c_[np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])]
        extra = rng.uniform(0, 30, (1, 2))
        boxes = np.r_[boxes, np.c_[extra, extra + 5]][:3]
        scores = np.r_[rng.uniform(0.6, 1.0, len(boxes) - 1), rng.uniform(0, 0.5, 1)]
        y = im["label"] == "malignant"
        rows.append({"file_name": im["file_name"], "p_malignant": float(np.clip(0.7 * y + rng.uniform(0, 0.5), 0, 1)),
                     "boxes": boxes.tolist(), "scores": scores.tolist()})
    return rows
