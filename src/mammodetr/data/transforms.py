"""Named augmentation presets for training (the model-input geometry itself is :mod:`mammodetr.data.model_input`).

Augmentation runs on the ``S x S`` tensor (cheap): one affine resample (flip, scale, rotation, translation
combined) through ``grid_sample``, the same affine applied to the boxes, then intensity changes.
Presets are named; an unknown name raises ``ValueError`` listing the known ones.

A rotated box has no exact axis-aligned box without the lesion's outline. ``box_rotation="corners"`` takes the
box around the rotated box (always contains the lesion, grows with the angle); ``"ellipse"`` takes the box
around the rotated ellipse inscribed in the box, which is exact for an elliptical lesion and does not grow the
box at small angles (the usual choice for round findings such as masses).

The ``mammo`` preset keeps to what mammograms vary in: left-right mirroring (left and right breasts both occur;
never a vertical flip, which would put the nipple above the axilla on MLO), small rotations and scale changes
(positioning), gamma and a multiplicative gain (exposure, processing) and quantum noise whose strength grows with
the signal. It adds no brightness offset and no contrast about the mean, which would lift the black background.
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
        gain: maximal relative change of a multiplicative gain (factor in [1 - g, 1 + g]; black stays black).
        quantum_noise: standard deviation of Gaussian noise at intensity 1, scaled by sqrt(intensity) (Poisson-like
            quantum mottle; none on the black background).
        box_rotation: how a rotated box becomes axis-aligned: "corners" or "ellipse" (see the module docstring).
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
    gain: float = 0.0
    quantum_noise: float = 0.0
    box_rotation: str = "corners"
    min_box_visible: float = 0.3

    def __post_init__(self) -> None:
        if self.box_rotation not in ("corners", "ellipse"):
            raise ValueError(f"box_rotation must be 'corners' or 'ellipse', got {self.box_rotation!r}")

    @property
    def geometric(self) -> bool:
        return self.hflip_p > 0 or self.scale != (1.0, 1.0) or self.translate > 0 or self.rotate_deg > 0


PRESETS: dict[str, AugmentPreset] = {
    "none": AugmentPreset("none"),
    "light": AugmentPreset("light", hflip_p=0.5, scale=(0.9, 1.1), translate=0.05, brightness=0.05,
                           contrast=0.1, gamma=(0.85, 1.15)),
    "strong": AugmentPreset("strong", hflip_p=0.5, scale=(0.75, 1.25), translate=0.1, rotate_deg=10.0,
                            brightness=0.1, contrast=0.25, gamma=(0.7, 1.4), noise_std=0.01),
    "mammo": AugmentPreset("mammo", hflip_p=0.5, scale=(0.85, 1.15), translate=0.05, rotate_deg=8.0,
                           gamma=(0.7, 1.4), gain=0.15, quantum_noise=0.02, box_rotation="ellipse"),
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


def _moved_boxes(boxes_xyxy: np.ndarray, lin: np.ndarray, t: np.ndarray, size_wh: np.ndarray, method: str
                 ) -> np.ndarray:
    """Axis-aligned boxes (N, 4, pixels) after the forward affine ``x -> lin x + t`` of normalised coordinates."""
    to_norm = np.diag(2.0 / size_wh)
    if method == "ellipse":
        centre = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2.0
        half = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]) / 2.0
        px_lin = np.linalg.inv(to_norm) @ lin @ to_norm  # the same linear map in pixel units
        moved_c = ((centre * 2.0 / size_wh - 1.0) @ lin.T + t + 1.0) * size_wh / 2.0
        # Half-extents of the image of the axis-aligned ellipse with semi-axes ``half`` under ``px_lin``.
        ext = np.sqrt((half[:, None, :] * px_lin[None, :, :]) ** 2 @ np.ones(2))
        return np.concatenate([moved_c - ext, moved_c + ext], axis=1)
    b = boxes_xyxy
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1)  # (N, 4, 2)
    moved = ((corners * 2.0 / size_wh - 1.0) @ lin.T + t + 1.0) * size_wh / 2.0
    return np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)


def _apply_geometry(image: torch.Tensor, boxes_xyxy: torch.Tensor, p: AugmentPreset, rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One affine resample of the image and the same affine on its boxes (see :func:`augment`)."""
    _, h, w = image.shape
    keep = torch.ones(boxes_xyxy.shape[0], dtype=torch.bool)
    m = _affine_matrix(p, rng)
    if np.allclose(m, [[1, 0, 0], [0, 1, 0]]):
        return image, boxes_xyxy, keep
    lin, t = m[:, :2], m[:, 2]
    inv = np.linalg.inv(lin)
    theta = torch.from_numpy(np.concatenate([inv, (-inv @ t)[:, None]], axis=1)).float()[None]
    grid = F.affine_grid(theta, (1, 1, h, w), align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if boxes_xyxy.numel():
        new = _moved_boxes(boxes_xyxy.to(torch.float64).numpy(), lin, t, np.array([w, h], dtype=np.float64),
                           p.box_rotation)
        area = (new[:, 2] - new[:, 0]) * (new[:, 3] - new[:, 1])
        new[:, 0::2] = new[:, 0::2].clip(0, w)
        new[:, 1::2] = new[:, 1::2].clip(0, h)
        inside = (new[:, 2] - new[:, 0]).clip(0) * (new[:, 3] - new[:, 1]).clip(0)
        ok = (inside > 0) & (inside >= p.min_box_visible * np.maximum(area, 1e-12))
        keep = torch.from_numpy(ok)
        boxes_xyxy = torch.from_numpy(new[ok]).to(torch.float32)
    return image, boxes_xyxy, keep


def _apply_intensity(image: torch.Tensor, p: AugmentPreset, rng: np.random.Generator) -> torch.Tensor:
    if p.gamma != (1.0, 1.0):
        image = image.clamp(0, 1).pow(float(rng.uniform(*p.gamma)))
    if p.gain:
        image = image * float(rng.uniform(1 - p.gain, 1 + p.gain))
    if p.contrast:
        c = float(rng.uniform(1 - p.contrast, 1 + p.contrast))
        mean = image.mean()
        image = (image - mean) * c + mean
    if p.brightness:
        image = image + float(rng.uniform(-p.brightness, p.brightness))
    if p.noise_std:
        image = image + torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32)) * p.noise_std
    if p.quantum_noise:
        noise = torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32))
        image = image + noise * image.clamp(0, 1).sqrt() * p.quantum_noise
    return image


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
    keep = torch.ones(boxes_xyxy.shape[0], dtype=torch.bool)
    if p.geometric:
        image, boxes_xyxy, keep = _apply_geometry(image, boxes_xyxy, p, rng)
    return _apply_intensity(image, p, rng).clamp(0.0, 1.0), boxes_xyxy, keep
