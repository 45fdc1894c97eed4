"""Named augmentation presets for training (the model-input geometry itself is :mod:`mammodetr.data.model_input`).

Augmentation runs on the ``S x S`` tensor (cheap): one affine resample (flip, scale, rotation, translation
combined) through ``grid_sample``, the same affine applied to the boxes' corners, then intensity changes.
Presets are named; an unknown name raises ``ValueError`` listing the known ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AugmentPreset", "PRESETS", "get_preset", "augment"]


@dataclass(frozen=True)
class AugmentPreset:
    """Ranges of the random changes; zero/one-width ranges switch a change off.

    Attributes:
        hflip_p: probability of a left-right flip.
        scale: zoom range (>1 zooms in) about the image centre.
        translate: maximal shift as a fraction of the image size (each axis).
        rotate_deg: maximal rotation in degrees (boxes become the box around the rotated box).
        brightness: maximal additive brightness change.
        contrast: maximal relative contrast change (factor in [1 - c, 1 + c], about the image mean).
        gamma: range of the gamma exponent.
        noise_std: standard deviation of additive Gaussian noise.
        min_box_visible: a box keeping less than this fraction of its (transformed) area inside the image is
            dropped.
    """

    name: str
    hflip_p: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    rotate_deg: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    noise_std: float = 0.0
    min_box_visible: float = 0.3

    @property
    def geometric(self) -> bool:
        return self.hflip_p > 0 or self.scale != (1.0, 1.0) or self.translate > 0 or self.rotate_deg > 0


PRESETS: dict[str, AugmentPreset] = {
    "none": AugmentPreset("none"),
    "light": AugmentPreset("light", hflip_p=0.5, scale=(0.9, 1.1), translate=0.05, brightness=0.05,
                           contrast=0.1, gamma=(0.85, 1.15)),
    "strong": AugmentPreset("strong", hflip_p=0.5, scale=(0.75, 1.25), translate=0.1, rotate_deg=10.0,
                            brightness=0.1, contrast=0.25, gamma=(0.7, 1.4), noise_std=0.01),
}


def get_preset(name: str | AugmentPreset) -> AugmentPreset:
    """The preset called ``name`` (an :class:`AugmentPreset` passes through)."""
    if isinstance(name, AugmentPreset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _affine_matrix(preset: AugmentPreset, rng: np.random.Generator) -> np.ndarray:
    """Forward 2x3 affine in normalised coordinates ([-1, 1], centre 0): input point -> output point."""
    flip = -1.0 if rng.random() < preset.hflip_p else 1.0
    s = float(rng.uniform(*preset.scale)) if preset.scale != (1.0, 1.0) else 1.0
    a = math.radians(float(rng.uniform(-preset.rotate_deg, preset.rotate_deg))) if preset.rotate_deg else 0.0
    tx, ty = (rng.uniform(-preset.translate, preset.translate, size=2) * 2.0) if preset.translate else (0.0, 0.0)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    lin = s * rot @ np.diag([flip, 1.0])
    return np.concatenate([lin, np.array([[tx], [ty]])], axis=1)


def augment(image: torch.Tensor, boxes_xyxy: torch.Tensor, preset: str | AugmentPreset,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomly augment an ``S x S`` image and its boxes together.

    Args:
        image: (1, S, S) float in [0, 1].
        boxes_xyxy: (N, 4) float boxes in input pixels.
        preset: preset name or object.
        rng: random generator (one per worker).

    Returns:
        ``(image (1, S, S) in [0, 1], boxes_xyxy (M, 4) in pixels clipped to the image, keep (N,) bool)`` where
        ``keep`` marks which input boxes survive (boxes pushed mostly out of the image are dropped).
    """
    p = get_preset(preset)
    _, h, w = image.shape
    keep = torch.ones(boxes_xyxy.shape[0], dtype=torch.bool)
    if p.geometric:
        m = _affine_matrix(p, rng)
        if not np.allclose(m, [[1, 0, 0], [0, 1, 0]]):
            lin, t = m[:, :2], m[:, 2]
            inv = np.linalg.inv(lin)
            theta = torch.from_numpy(np.concatenate([inv, (-inv @ t)[:, None]], axis=1)).float()[None]
            grid = F.affine_grid(theta, (1, 1, h, w), align_corners=False)
            image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False)[0]
            if boxes_xyxy.numel():
                b = boxes_xyxy.to(torch.float64).numpy()
                corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1)  # (N,4,2)
                size = np.array([w, h], dtype=np.float64)
                norm = corners * 2.0 / size - 1.0
                moved = (norm @ lin.T + t + 1.0) * size / 2.0
                new = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)
                area = (new[:, 2] - new[:, 0]) * (new[:, 3] - new[:, 1])
                new[:, 0::2] = new[:, 0::2].clip(0, w)
                new[:, 1::2] = new[:, 1::2].clip(0, h)
                inside = (new[:, 2] - new[:, 0]).clip(0) * (new[:, 3] - new[:, 1]).clip(0)
                ok = (inside > 0) & (inside >= p.min_box_visible * np.maximum(area, 1e-12))
                keep = torch.from_numpy(ok)
                boxes_xyxy = torch.from_numpy(new[ok]).to(torch.float32)
    if p.gamma != (1.0, 1.0):
        image = image.clamp(0, 1).pow(float(rng.uniform(*p.gamma)))
    if p.contrast:
        c = float(rng.uniform(1 - p.contrast, 1 + p.contrast))
        mean = image.mean()
        image = (image - mean) * c + mean
    if p.brightness:
        image = image + float(rng.uniform(-p.brightness, p.brightness))
    if p.noise_std:
        image = image + torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32)) * p.noise_std
    return image.clamp(0.0, 1.0), boxes_xyxy, keep
