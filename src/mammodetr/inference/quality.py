"""Doubts about an input that a prediction must carry: a blank, tiny or colour image still gets a malignancy
score from the model, and that score means nothing without a flag.

Each warning is ``"code: detail"``; the codes are stable (docs/evaluation.md, "Predictions file"):

- ``blank_image``: every pixel has the same value.
- ``tiny_image``: a side shorter than :data:`MIN_SIDE` pixels (a mammogram has hundreds or thousands).
- ``no_breast_found``: the breast crop found no plausible breast and fell back to the whole image
  (:func:`mammodetr.data.crop.find_breast`; only when the checkpoint's preparation crops).
- ``unusual_photometric``: not a greyscale image (RGB, palette, alpha, a TIFF that is not min-is-black/white):
  it was converted to grey, which a mammogram never needs.
"""

from __future__ import annotations

import numpy as np

from .inputs import RawInput

__all__ = ["MIN_SIDE", "WARNING_CODES", "input_warnings", "warning_code"]

MIN_SIDE = 64
WARNING_CODES = ("blank_image", "tiny_image", "no_breast_found", "unusual_photometric")
_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "F"}
_GREY_TIFF = {0, 1}  # MINISWHITE, MINISBLACK


def _photometric(meta: dict) -> str | None:
    """What is unusual about the file's colour model, or None."""
    mode = meta.get("mode")
    if mode is not None and mode not in _GREY_MODES:
        return f"{meta.get('format', 'image')} mode {mode} converted to grey"
    tiff = meta.get("photometric")
    if meta.get("format") == "tiff" and isinstance(tiff, int) and tiff not in _GREY_TIFF:
        return f"TIFF photometric {tiff} converted to grey"
    dicom = meta.get("photometric")
    if meta.get("format") == "dicom" and isinstance(dicom, str) and dicom not in ("MONOCHROME1", "MONOCHROME2"):
        return f"DICOM {dicom}"
    return None


def input_warnings(raw: RawInput) -> list[str]:
    """The warnings of one prepared raw input (empty for an ordinary mammogram)."""
    out = []
    pixels = raw.original
    if pixels.size == 0 or float(np.ptp(pixels)) == 0.0:
        out.append(f"blank_image: every pixel has the value {float(pixels.flat[0]) if pixels.size else 0:.3g}")
    h, w = pixels.shape[:2]
    if min(h, w) < MIN_SIDE:
        out.append(f"tiny_image: {h}x{w} px (a side under {MIN_SIDE} px)")
    if raw.prepared.crop_fallback:
        out.append(f"no_breast_found: {raw.prepared.crop_reason or 'no breast region'}; the whole image was used")
    unusual = _photometric(raw.prepared.meta)
    if unusual:
        out.append(f"unusual_photometric: {unusual}")
    return out


def warning_code(warning: str) -> str:
    """``"tiny_image: 1x1 px"`` -> ``"tiny_image"``."""
    return warning.split(":", 1)[0]
