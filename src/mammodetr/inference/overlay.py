"""A picture of a prediction: the image with its boxes and scores drawn, for a quick look.

:class:`OverlayWriter` names each picture after its input, mirroring the inputs' folders (``a/case.dcm`` ->
``DIR/a/case.png``, ``b/case.dcm`` -> ``DIR/b/case.png``), so no overlay replaces another; the name is recorded
in the prediction (``"overlay"``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mammodetr.atomic import write_bytes_atomic
from mammodetr.outputs import mirrored_paths, write_error

from .inputs import IMAGE_SUFFIXES
from .predictions import Prediction

__all__ = ["draw_overlay", "OverlayWriter"]


def draw_overlay(pixels: np.ndarray, pred: Prediction, path: str | Path, max_side: int = 1024,
                 min_score: float = 0.0) -> Path:
    """Save the image with the predicted boxes and scores drawn (long side scaled to ``max_side``), atomically."""
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
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())


class OverlayWriter:
    """Draws the overlay of each prediction of ``files`` into ``out_dir`` (paths from :func:`mirrored_paths`).

    Args:
        out_dir: the overlay folder (checked beforehand to be new or empty: see :mod:`mammodetr.outputs`).
        files: every input file of the run, so the names are fixed before the first one is written.
    """

    def __init__(self, out_dir: str | Path, files: Sequence[Path]) -> None:
        self.out_dir = Path(out_dir)
        self.paths = dict(zip(files, mirrored_paths(files, self.out_dir, ".png", IMAGE_SUFFIXES)))
        self.written = 0

    def __call__(self, path: Path, original: np.ndarray, pred: Prediction) -> Path:
        """Write the overlay of ``pred`` (made on the input ``path``, whose pixels are ``original``).

        Raises:
            OutputWriteError: it cannot be written (disk full, read-only): the run stops, saying how many were saved.
        """
        target = self.paths[path]
        try:
            draw_overlay(original, pred, target)
        except OSError as exc:
            raise write_error(target, exc, f"stopped after {self.written} overlays were saved in "
                                           f"{self.out_dir}") from exc
        self.written += 1
        pred.extra["overlay"] = str(target)
        return target
