"""What every image reader returns, the one error it raises, and the one float -> uint16 conversion.

Kept apart from the readers so that :mod:`mammodetr.data.io` (which dispatches on the format) and
:mod:`mammodetr.data.dicom` (one of the formats) both depend on it instead of on each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MAX_PIXELS", "ImageReadError", "LoadedImage", "to_uint16", "too_large_reason"]

# Decoded pixels (rows x columns x frames) above which a file is refused before decoding, so that a corrupt
# header or a decompression bomb cannot exhaust memory; a full-field mammogram has about 10-15 million.
DEFAULT_MAX_PIXELS = 100_000_000


class ImageReadError(ValueError):
    """An image could not be read; ``str(err)`` is ``"<path>: <reason>"``.

    Attributes:
        path: The file that failed, as given.
        reason: What is wrong with it, in one line.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")


def too_large_reason(rows: int, cols: int, frames: int, max_pixels: int) -> str:
    """The reason every reader gives for refusing an image over ``max_pixels``."""
    return f"image too large: {rows}x{cols}x{frames} frames = {rows * cols * frames} pixels > max_pixels={max_pixels}"


@dataclass
class LoadedImage:
    """A decoded, normalised image.

    Attributes:
        pixels: ``float32 (H, W)`` in ``[0, 1]``, 1 = brightest (dense tissue) as a radiologist would see it.
        laterality: ``"L"``/``"R"`` from DICOM ImageLaterality (else Laterality), or None.
        view: DICOM ViewPosition such as ``"CC"``/``"MLO"``, or None.
        meta: Format details (bit depth, photometric interpretation, transfer syntax, LUTs applied, ...).
            Never holds patient identifiers.
    """

    pixels: np.ndarray
    laterality: str | None = None
    view: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def to_uint16(pixels: np.ndarray) -> np.ndarray:
    """``float (H, W)`` in ``[0, 1]`` -> ``uint16`` codes 0..65535, rounding half up.

    Values outside ``[0, 1]`` are clipped first. Every writer of 16-bit images uses this one conversion, in
    float32, so the same float always gives the same code.

    Args:
        pixels: Array of any shape; converted to float32.

    Returns:
        ``uint16`` array of the same shape.
    """
    scaled = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    scaled *= np.float32(65535.0)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint16)  # truncation after +0.5 = rounding half up
