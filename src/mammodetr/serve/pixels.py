"""Pixels for the browser: the image's own values, downscaled to 16 bits, with its windows in the same units.

The viewer applies the window itself (window/level on the 16-bit data, in the browser), so the server sends
modality output values rather than the 8-bit picture: a DICOM's values after the Modality LUT (negated for
MONOCHROME1, so that larger is brighter), any other format's values scaled to 0..65535. Values are mapped to
uint16 by ``u = round((v - offset) * scale)`` (``scale`` = 1 unless the range exceeds 16 bits) and every window
is sent in ``u`` units as an exact linear ``(x - center) / width + 0.5`` or a sigmoid: DICOM's LINEAR window
``(c, w)`` is the exact linear window ``(c - 0.5, w - 1)``. The first window is the file's default, the one
``predict`` sees; "full range" is added last.

Hanging: in the standard (mirror-image) display a right breast's chest wall is on the image's right, a left
breast's on its left, so the two breasts of an exam meet back to back. ``flip`` says the image must be mirrored
to get there: the chest wall's side comes from Patient Orientation, else from the pixels (the breast lies against
the chest-wall edge); a file without the tag may have been stored either way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammodetr.data.crop import breast_side
from mammodetr.data.dicom import Window, read_dicom_values, window
from mammodetr.data.geometry import resize_pixels
from mammodetr.data.io import read_image, sniff_path
from mammodetr.data.laterality import chest_wall_side
from mammodetr.data.preprocess import PrepareOptions

__all__ = ["DisplayPixels", "display_pixels", "exact_windows"]


@dataclass
class DisplayPixels:
    """An image as the viewer draws it.

    Attributes:
        pixels_u16: (h, w) uint16, the image downscaled so its long side is at most the requested size.
        original_hw: (H, W) of the file's pixels (boxes are in these pixels).
        windows: ``{"center", "width", "function": "LINEAR"|"SIGMOID", "name"}`` in ``pixels_u16`` units.
        offset, scale: ``u = (v - offset) * scale`` from the file's values ``v``.
        chest_wall: the image side the chest wall is on (``"L"``/``"R"``), and ``side_from`` what said so.
        flip: mirror horizontally for the standard hanging.
    """

    pixels_u16: np.ndarray
    original_hw: tuple[int, int]
    windows: list[dict]
    offset: float
    scale: float
    chest_wall: str | None
    side_from: str
    flip: bool

    def info(self) -> dict:
        h, w = self.pixels_u16.shape
        return {"width": int(w), "height": int(h), "original_width": int(self.original_hw[1]),
                "original_height": int(self.original_hw[0]), "windows": self.windows, "offset": self.offset,
                "scale": self.scale, "chest_wall": self.chest_wall, "side_from": self.side_from, "flip": self.flip}


def exact_windows(windows: list[Window], offset: float, scale: float) -> list[dict]:
    """DICOM windows on values ``v`` -> exact linear (or sigmoid) windows on ``u = (v - offset) * scale``."""
    out = []
    for w in windows:
        c, width, fn = float(w.center), float(w.width), w.function.upper()
        if fn == "LINEAR":  # (x - (c - 0.5)) / (w - 1) + 0.5 is the exact form with centre c - 0.5, width w - 1
            c, width = c - 0.5, max(width - 1.0, 1e-6)
        out.append({"center": (c - offset) * scale, "width": width * scale,
                    "function": "SIGMOID" if fn == "SIGMOID" else "LINEAR", "name": w.name})
    return out


def _values(path: Path, options: PrepareOptions) -> tuple[np.ndarray, list[Window], list | None]:
    """(values float32, windows on them, Patient Orientation) of any supported file."""
    if sniff_path(path) == "dicom":
        d = read_dicom_values(path, frame=options.frame, allow_for_processing=options.allow_for_processing,
                              max_pixels=options.max_pixels)
        return d.values, d.windows, d.meta.get("patient_orientation")
    loaded = read_image(path, frame=options.frame, max_pixels=options.max_pixels)
    return loaded.pixels * np.float32(65535.0), [Window(32767.5, 65535.0, "LINEAR_EXACT", "file range")], None


def display_pixels(path: str | Path, options: PrepareOptions, *, laterality: str | None,
                   max_side: int = 1024) -> DisplayPixels:
    """Read a file for the viewer (see the module docstring).

    Args:
        path: the image file.
        options: the model's preparation (frame, FOR PROCESSING and pixel cap apply as in ``predict``).
        laterality: the image's laterality (from its exam), for the hanging.
        max_side: long side of the pixels sent.

    Raises:
        ImageReadError: as the readers.
    """
    values, windows, orientation = _values(Path(path), options)
    hw = values.shape
    scale_down = min(1.0, max_side / max(hw))
    small_hw = (max(1, round(hw[0] * scale_down)), max(1, round(hw[1] * scale_down)))
    small = resize_pixels(values, small_hw, "box") if small_hw != hw else values
    lo, hi = float(values.min()), float(values.max())
    scale = 65535.0 / (hi - lo) if hi - lo > 65535.0 else 1.0
    u16 = np.clip(np.rint((small - lo) * scale), 0, 65535).astype(np.uint16)
    sent = exact_windows(windows, lo, scale)
    sent.append({"center": (hi - lo) * scale / 2, "width": max((hi - lo) * scale, 1e-6), "function": "LINEAR",
                 "name": "full range"})
    side, why = chest_wall_side(None, orientation)  # the pixels, not a display convention, when no tag says
    if side is None:
        side, why = breast_side(_windowed(u16, sent[0])), "the image (breast against that edge)"
    flip = laterality in ("L", "R") and side != laterality
    return DisplayPixels(u16, (int(hw[0]), int(hw[1])), sent, lo, scale, side, why, flip)


def _windowed(u16: np.ndarray, win: dict) -> np.ndarray:
    """What the browser draws with ``win``, in [0, 1] (the same formulas as viewer.js)."""
    fn = "SIGMOID" if win["function"] == "SIGMOID" else "LINEAR_EXACT"
    return window(u16.astype(np.float32), win["center"], max(win["width"], 1e-6), fn)
