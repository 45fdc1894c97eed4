"""Does the model look at the lesion? Grad-CAM localisation scores over the images that have boxes.

For each image with ground-truth boxes: the pointing game (the CAM's maximum falls inside a box) and the share
of the CAM's energy inside the boxes (``metrics.md``, "Grad-CAM localization score"). Pictures alone are not
evidence; these numbers are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mammodetr.data.dataset import MammoDataset
from mammodetr.data.ground_truth import LabelledImage
from mammodetr.data.png16 import read_png16
from mammodetr.explain.gradcam import DEFAULT_TARGET_LAYER, gradcam
from mammodetr.explain.heatmap import cam_to_image, overlay_heatmap
from mammodetr.inference.predictor import Predictor

__all__ = ["pointing_game_hit", "energy_in_boxes", "LocalisationScores", "localisation_scores"]


def pointing_game_hit(cam: np.ndarray, boxes_xyxy: np.ndarray) -> bool:
    """True when the CAM's maximum (pixel centre) lies inside any box."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    cx, cy = x + 0.5, y + 0.5
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return bool(((cx >= b[:, 0]) & (cx <= b[:, 2]) & (cy >= b[:, 1]) & (cy <= b[:, 3])).any())


def box_mask(shape_hw: tuple[int, int], boxes_xyxy: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in any of the boxes."""
    h, w = shape_hw
    ys = np.arange(h)[:, None] + 0.5
    xs = np.arange(w)[None, :] + 0.5
    mask = np.zeros((h, w), dtype=bool)
    for x1, y1, x2, y2 in np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4):
        mask |= (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    return mask


def energy_in_boxes(cam: np.ndarray, boxes_xyxy: np.ndarray) -> float:
    """Fraction of the CAM's total (non-negative) energy on pixels whose centre lies in a box."""
    c = np.clip(cam, 0, None)
    total = float(c.sum())
    if total <= 0:
        return math.nan
    return float(c[box_mask(c.shape, boxes_xyxy)].sum() / total)


@dataclass
class LocalisationScores:
    """Grad-CAM localisation over images with boxes: ``summary`` (JSON) and a few overlay panels."""

    summary: dict
    overlays: list[dict] = field(default_factory=list)


@dataclass
class _Tally:
    hits: list = field(default_factory=list)
    energies: list = field(default_factory=list)
    area_fracs: list = field(default_factory=list)
    overlays: list = field(default_factory=list)

    def add(self, cam: np.ndarray, im: LabelledImage, hw: tuple[int, int]) -> None:
        self.hits.append(pointing_game_hit(cam, im.boxes_xyxy_px))
        self.energies.append(energy_in_boxes(cam, im.boxes_xyxy_px))
        self.area_fracs.append(float(box_mask(hw, im.boxes_xyxy_px).mean()))

    def summary(self, n_images: int, n_with_boxes: int, layer: str) -> dict:
        e = np.array(self.energies, dtype=np.float64)
        return {
            "n_images": n_images, "n_images_with_boxes": n_with_boxes, "target_layer": layer,
            "class": "malignant logit",
            "pointing_game": float(np.mean(self.hits)) if self.hits else math.nan,
            "energy_in_box": float(np.nanmean(e)) if np.isfinite(e).any() else math.nan,
            "box_area_fraction": float(np.mean(self.area_fracs)) if self.area_fracs else math.nan,
        }


def localisation_scores(predictor: Predictor, data_dir: str | Path, images: Sequence[LabelledImage], *,
                        n_overlays: int = 4, batch_size: int = 4, max_images: int | None = 500,
                        target_layer: str | None = None) -> LocalisationScores:
    """Pointing-game hit rate and in-box CAM energy over the images that have ground-truth boxes.

    Args:
        predictor: the model and its input geometry.
        data_dir: prepared dataset folder.
        images: ground truth (boxes in prepared pixels).
        n_overlays: overlay panels returned for the report.
        max_images: cap on the images scored (None = all); the summary states how many were used.
    """
    geometry = predictor.geometry
    ds = MammoDataset(data_dir, split=None, image_size=geometry.image_size, augment="none",
                      letterbox=geometry.letterbox, cache=False)
    index = {img["file_name"]: i for i, img in enumerate(ds.images)}
    todo = [im for im in images if len(im.boxes_xyxy_px) and im.file_name in index]
    n_with_boxes = len(todo)
    todo = todo if max_images is None else todo[:max_images]
    tally, used_layer = _Tally(), target_layer or DEFAULT_TARGET_LAYER
    for s in tqdm(range(0, len(todo), batch_size), desc="grad-cam", unit="batch", leave=False):
        chunk = todo[s:s + batch_size]
        items = [ds[index[im.file_name]] for im in chunk]
        res = gradcam(predictor.model, torch.stack([x for x, _ in items]).to(predictor.device),
                      target_layer=target_layer)
        used_layer = res.target_layer
        for j, im in enumerate(chunk):
            hw = (im.height, im.width) if im.height and im.width else tuple(items[j][1]["orig_size_hw"].tolist())
            cam = cam_to_image(res.cams[j], hw, geometry)
            tally.add(cam, im, hw)
            if len(tally.overlays) < n_overlays:
                pixels = read_png16(Path(data_dir) / im.file_name).astype(np.float32) / 65535.0
                tally.overlays.append({"overlay": overlay_heatmap(pixels, cam), "gt": im.boxes_xyxy_px,
                                       "title": f"{Path(im.file_name).name} ({im.label_name})"})
    return LocalisationScores(tally.summary(len(todo), n_with_boxes, used_layer), tally.overlays)
