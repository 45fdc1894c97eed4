"""A picture of a prediction: the image with its boxes and scores drawn, for a quick look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .predictions import Prediction

__all__ = ["draw_overlay"]


def draw_overlay(pixels: np.ndarray, pred: Prediction, path: str | Path, max_side: int = 1024,
                 min_score: float = 0.0) -> Path:
    """Save the image with the predicted boxes and scores drawn (long side scaled to ``max_side``)."""
    h, w = pixels.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for b, s in zip(pred.boxes_xyxy_px, pred.scores):
        if s < min_score:
            continue
        x1, y1, x2, y2 = (float(v) * scale for v in b)
        draw.rectangle([x1, y1, x2, y2], outline=(255, 80, 0), width=2)
        draw.text((x1 + 2, max(0.0, y1 - 12)), f"{s:.2f}", fill=(255, 80, 0))
    draw.text((4, 4), f"p_malignant {pred.p_malignant:.2f}", fill=(255, 255, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
