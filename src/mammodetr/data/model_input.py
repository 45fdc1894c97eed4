"""The one input transform: a prepared 16-bit image becomes the model's ``(1, S, S)`` input the same way in
training, validation, evaluation, prediction, Grad-CAM and export.

A prepared image of any size becomes ``S x S`` by a plain resize (the paper's choice; the aspect ratio changes)
or by a letterbox (the long side scaled to S, the short side padded equally on both ends with 0). The resize
runs on the uint16 values as float and is rounded back to uint16 (so the dataset can cache it), then scaled by
1/65535. :func:`input_transform` records the geometry as an :class:`~mammodetr.data.geometry.ImageTransform`;
the inference decoder inverts it (composed with the recorded preparation) to put boxes back on the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mammodetr.data.geometry import ImageTransform

__all__ = ["InputGeometry", "input_transform", "resize_to_input", "to_tensor", "to_model_input"]


@dataclass(frozen=True)
class InputGeometry:
    """How a prepared image becomes the model input.

    Attributes:
        image_size: S, the side of the square model input (paper: 512).
        letterbox: keep the aspect ratio and pad, instead of the paper's plain resize.
    """

    image_size: int = 512
    letterbox: bool = False


def input_transform(image_hw: tuple[int, int], geometry: InputGeometry, filter: str = "bilinear") -> ImageTransform:
    """Prepared image (H, W) -> model input (S, S): plain resize, or letterbox (resize long side + centre pad)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    s = int(geometry.image_size)
    t = ImageTransform((h, w))
    if not geometry.letterbox:
        return t.resize((s, s), filter)
    scale = s / max(h, w)
    nh, nw = min(s, max(1, round(h * scale))), min(s, max(1, round(w * scale)))
    t = t.resize((nh, nw), filter)
    top, left = (s - nh) // 2, (s - nw) // 2
    if (nh, nw) != (s, s):
        t = t.pad(left, top, s - nw - left, s - nh - top)
    return t


def resize_to_input(pixels_u16: np.ndarray, geometry: InputGeometry) -> tuple[np.ndarray, ImageTransform]:
    """(H, W) uint16 prepared image -> (S, S) uint16 model-input image and the transform between them."""
    t = input_transform(pixels_u16.shape, geometry)
    out = t.apply_image(pixels_u16.astype(np.float32))
    return np.clip(out + 0.5, 0, 65535).astype(np.uint16), t


def to_tensor(input_u16: np.ndarray) -> torch.Tensor:
    """(S, S) uint16 -> (1, S, S) float32 tensor in [0, 1]."""
    return torch.from_numpy(input_u16.astype(np.float32)).mul_(1.0 / 65535.0)[None]


def to_model_input(pixels_u16: np.ndarray, geometry: InputGeometry) -> tuple[torch.Tensor, ImageTransform]:
    """Prepared 16-bit image (H, W) -> model input (1, S, S) float32 in [0, 1] and the recorded transform."""
    resized, t = resize_to_input(pixels_u16, geometry)
    return to_tensor(resized), t
