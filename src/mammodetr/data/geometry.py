"""Recorded geometric transforms: crop, horizontal flip, resize and pad, applied to an image and its boxes together.

Coordinates are continuous pixel coordinates with the origin at the top-left corner of the top-left pixel:
pixel ``(row r, column c)`` covers ``[c, c + 1) x [r, r + 1)``. A box ``[x1, y1, x2, y2]`` in this convention
maps exactly through every op below, so a prediction made on a prepared image maps back to the original
image by :meth:`ImageTransform.invert_boxes_xyxy` with only float rounding error.

An :class:`ImageTransform` is immutable: ``t.crop(...)``, ``t.hflip()``, ``t.resize(...)`` and ``t.pad(...)``
return a new transform with the op appended. It serialises to a JSON-friendly dict (``to_dict``/``from_dict``),
which ``prepare`` stores per image in ``annotations.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np

__all__ = ["CropOp", "FlipOp", "ResizeOp", "PadOp", "ImageTransform", "resize_pixels", "clip_boxes_xyxy"]


def _as_boxes(boxes_xyxy: Any) -> np.ndarray:
    arr = np.asarray(boxes_xyxy, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim == 1:
        arr = arr.reshape(1, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr.copy()


@dataclass(frozen=True)
class CropOp:
    """Keep columns ``x0:x1`` and rows ``y0:y1`` (end-exclusive integer pixels)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def output_size_hw(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = size_hw
        if not (0 <= self.x0 < self.x1 <= w and 0 <= self.y0 < self.y1 <= h):
            raise ValueError(f"crop {self.x0, self.y0, self.x1, self.y1} does not fit an image of size {size_hw}")
        return (self.y1 - self.y0, self.x1 - self.x0)

    def apply_boxes(self, b: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        b[:, [0, 2]] -= self.x0
        b[:, [1, 3]] -= self.y0
        return b

    def invert_boxes(self, b: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        b[:, [0, 2]] += self.x0
        b[:, [1, 3]] += self.y0
        return b

    def apply_image(self, pixels: np.ndarray) -> np.ndarray:
        return pixels[self.y0 : self.y1, self.x0 : self.x1]

    def to_dict(self) -> dict:
        return {"op": "crop", "x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1}


@dataclass(frozen=True)
class FlipOp:
    """Mirror left-right (``horizontal=True``) or top-bottom."""

    horizontal: bool = True

    def output_size_hw(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        return size_hw

    def apply_boxes(self, b: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        h, w = size_hw
        if self.horizontal:
            b[:, [0, 2]] = w - b[:, [2, 0]]
        else:
            b[:, [1, 3]] = h - b[:, [3, 1]]
        return b

    # A flip is its own inverse (the size does not change).
    invert_boxes = apply_boxes

    def apply_image(self, pixels: np.ndarray) -> np.ndarray:
        return pixels[:, ::-1] if self.horizontal else pixels[::-1, :]

    def to_dict(self) -> dict:
        return {"op": "flip", "horizontal": self.horizontal}


@dataclass(frozen=True)
class ResizeOp:
    """Resample to ``(out_h, out_w)``; boxes scale by ``out/in`` on each axis."""

    out_h: int
    out_w: int
    filter: str = "lanczos"

    def output_size_hw(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(f"resize target must be positive, got {(self.out_h, self.out_w)}")
        return (self.out_h, self.out_w)

    def apply_boxes(self, b: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        h, w = size_hw
        b[:, [0, 2]] *= self.out_w / w
        b[:, [1, 3]] *= self.out_h / h
        return b

    def invert_boxes(self, b: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        h, w = size_hw
        b[:, [0, 2]] *= w / self.out_w
        b[:, [1, 3]] *= h / self.out_h
        return b

    def apply_image(self, pixels: np.ndarray) -> np.ndarray:
        return resize_pixels(pixels, (self.out_h, self.out_w), self.filter)

    def to_dict(self) -> dict:
        return {"op": "resize", "out_h": self.out_h, "out_w": self.out_w, "filter": self.filter}


@dataclass(frozen=True)
class PadOp:
    """Add ``left/top/right/bottom`` pixels of ``value`` around the image (letterboxing)."""

    left: int
    top: int
    right: int
    bottom: int
    value: float = 0.0

    def output_size_hw(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        if min(self.left, self.top, self.right, self.bottom) < 0:
            raise ValueError("padding must be non-negative")
        h, w = size_hw
        return (h + self.top + self.bottom, w + self.left + self.right)

    def apply_boxes(self, b: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        b[:, [0, 2]] += self.left
        b[:, [1, 3]] += self.top
        return b

    def invert_boxes(self, b: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        b[:, [0, 2]] -= self.left
        b[:, [1, 3]] -= self.top
        return b

    def apply_image(self, pixels: np.ndarray) -> np.ndarray:
        return np.pad(pixels, ((self.top, self.bottom), (self.left, self.right)), constant_values=self.value)

    def to_dict(self) -> dict:
        return {"op": "pad", "left": self.left, "top": self.top, "right": self.right, "bottom": self.bottom,
                "value": self.value}


Op = Union[CropOp, FlipOp, ResizeOp, PadOp]
_OP_TYPES = {"crop": CropOp, "flip": FlipOp, "resize": ResizeOp, "pad": PadOp}

_PIL_FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")


def resize_pixels(pixels: np.ndarray, out_hw: tuple[int, int], filter: str = "lanczos") -> np.ndarray:
    """Resample a 2-D float image with Pillow's antialiasing filters.

    Args:
        pixels: (H, W) array; computed in float32.
        out_hw: target (height, width).
        filter: one of nearest, box, bilinear, hamming, bicubic, lanczos.

    Returns:
        (out_h, out_w) float32 array. Lanczos/bicubic can overshoot, so values of an image in [0, 1] are clipped
        back into [0, 1].
    """
    from PIL import Image

    if filter not in _PIL_FILTERS:
        raise ValueError(f"unknown resize filter {filter!r}; choose one of {', '.join(_PIL_FILTERS)}")
    arr = np.ascontiguousarray(pixels, dtype=np.float32)
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if arr.shape == (out_h, out_w):
        return arr.copy()
    resample = getattr(Image.Resampling, filter.upper())
    # np.array (not asarray): Pillow's buffer is read-only and callers may modify the result in place.
    out = np.array(Image.fromarray(arr, mode="F").resize((out_w, out_h), resample), dtype=np.float32)
    if filter in ("bicubic", "lanczos"):
        np.clip(out, float(arr.min()), float(arr.max()), out=out)
    return out


@dataclass(frozen=True)
class ImageTransform:
    """A recorded sequence of geometric ops mapping an input image (and its boxes) to an output image.

    Attributes:
        input_size_hw: (H, W) of the image the first op applies to.
        ops: the ops, in application order.
    """

    input_size_hw: tuple[int, int]
    ops: tuple[Op, ...] = ()

    def __post_init__(self) -> None:
        h, w = self.input_size_hw
        if int(h) < 1 or int(w) < 1:
            raise ValueError(f"input size must be positive, got {self.input_size_hw}")
        object.__setattr__(self, "input_size_hw", (int(h), int(w)))
        object.__setattr__(self, "ops", tuple(self.ops))
        self._sizes()  # validates every op against the size it sees

    @classmethod
    def identity(cls, size_hw: tuple[int, int]) -> "ImageTransform":
        return cls(tuple(size_hw))

    def _sizes(self) -> list[tuple[int, int]]:
        """Size seen by each op, plus the final output size (len(ops) + 1 entries)."""
        sizes = [self.input_size_hw]
        for op in self.ops:
            sizes.append(op.output_size_hw(sizes[-1]))
        return sizes

    @property
    def output_size_hw(self) -> tuple[int, int]:
        return self._sizes()[-1]

    def _then(self, op: Op) -> "ImageTransform":
        return ImageTransform(self.input_size_hw, self.ops + (op,))

    def crop(self, x0: int, y0: int, x1: int, y1: int) -> "ImageTransform":
        """Append a crop to columns ``x0:x1``, rows ``y0:y1`` of the current output (end-exclusive)."""
        return self._then(CropOp(int(x0), int(y0), int(x1), int(y1)))

    def hflip(self) -> "ImageTransform":
        return self._then(FlipOp(True))

    def vflip(self) -> "ImageTransform":
        return self._then(FlipOp(False))

    def resize(self, out_hw: tuple[int, int], filter: str = "lanczos") -> "ImageTransform":
        return self._then(ResizeOp(int(out_hw[0]), int(out_hw[1]), filter))

    def pad(self, left: int, top: int, right: int, bottom: int, value: float = 0.0) -> "ImageTransform":
        return self._then(PadOp(int(left), int(top), int(right), int(bottom), float(value)))

    def compose(self, other: "ImageTransform") -> "ImageTransform":
        """``other`` applied after ``self``; ``other.input_size_hw`` must equal ``self.output_size_hw``."""
        if tuple(other.input_size_hw) != self.output_size_hw:
            raise ValueError(f"cannot compose: output {self.output_size_hw} != next input {other.input_size_hw}")
        return ImageTransform(self.input_size_hw, self.ops + other.ops)

    @property
    def flipped(self) -> bool:
        """True when the transform contains an odd number of horizontal flips."""
        return sum(isinstance(op, FlipOp) and op.horizontal for op in self.ops) % 2 == 1

    def apply_boxes_xyxy(self, boxes_xyxy: Any) -> np.ndarray:
        """Map boxes from input pixels to output pixels.

        Args:
            boxes_xyxy: (N, 4) or (4,) array-like ``[x1, y1, x2, y2]`` in input pixels.

        Returns:
            (N, 4) float64 boxes in output pixels (not clipped).
        """
        b = _as_boxes(boxes_xyxy)
        for op, size in zip(self.ops, self._sizes()):
            b = op.apply_boxes(b, size)
        return b

    def invert_boxes_xyxy(self, boxes_xyxy: Any, clip: bool = False) -> np.ndarray:
        """Map boxes from output pixels back to input pixels (exact inverse of :meth:`apply_boxes_xyxy`).

        With ``clip=True`` the boxes are clipped to the image each op received, step by step: a box reaching into
        letterbox padding, or beyond a crop, ends at the image content instead of extending into what was padded
        or cropped away (the model never saw it).
        """
        b = _as_boxes(boxes_xyxy)
        sizes = self._sizes()
        for op, size in zip(reversed(self.ops), reversed(sizes[:-1])):
            b = op.invert_boxes(b, size)
            if clip:
                b = clip_boxes_xyxy(b, size)
        return b

    def apply_image(self, pixels: np.ndarray) -> np.ndarray:
        """Apply the ops to a (H, W) image of size ``input_size_hw``; returns a contiguous float32 array."""
        if tuple(pixels.shape[:2]) != self.input_size_hw:
            raise ValueError(f"image has shape {pixels.shape}, transform expects {self.input_size_hw}")
        out = pixels
        for op in self.ops:
            out = op.apply_image(out)
        return np.ascontiguousarray(out, dtype=np.float32)

    def apply(self, pixels: np.ndarray, boxes_xyxy: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Transform an image and its boxes in one call.

        Args:
            pixels: (H, W) image of size ``input_size_hw``.
            boxes_xyxy: (N, 4) boxes in input pixels, or None.

        Returns:
            ``(pixels (H', W') float32, boxes_xyxy (N, 4) float64 in output pixels)``.
        """
        boxes = self.apply_boxes_xyxy(np.zeros((0, 4)) if boxes_xyxy is None else boxes_xyxy)
        return self.apply_image(pixels), boxes

    def to_dict(self) -> dict:
        return {"input_size_hw": list(self.input_size_hw), "ops": [op.to_dict() for op in self.ops],
                "output_size_hw": list(self.output_size_hw)}

    @classmethod
    def from_dict(cls, data: dict) -> "ImageTransform":
        ops: list[Op] = []
        for raw in data.get("ops", []):
            raw = dict(raw)
            kind = raw.pop("op", None)
            if kind not in _OP_TYPES:
                raise ValueError(f"unknown transform op {kind!r}")
            ops.append(_OP_TYPES[kind](**raw))
        t = cls(tuple(data["input_size_hw"]), tuple(ops))
        if "output_size_hw" in data and list(t.output_size_hw) != list(data["output_size_hw"]):
            raise ValueError(f"recorded output size {data['output_size_hw']} != computed {t.output_size_hw}")
        return t


def clip_boxes_xyxy(boxes_xyxy: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Clip (N, 4) boxes to ``[0, W] x [0, H]``."""
    b = _as_boxes(boxes_xyxy)
    h, w = size_hw
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
    return b
