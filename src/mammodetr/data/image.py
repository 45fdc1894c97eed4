"""What every image reader returns, the one error it raises, and the one float -> uint16 conversion.

Kept apart from the readers so that :mod:`mammodetr.data.io` (which dispatches on the format) and
:mod:`mammodetr.data.dicom` (one of the formats) both depend on it instead of on each other.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MAX_PIXELS", "ImageReadError", "LoadedImage", "file_problem", "to_uint16", "too_large_reason"]

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


_NOT_A_FILE = (
    (stat.S_ISDIR, "is a directory, not an image file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not an image file; not read"),
    (stat.S_ISCHR, "is a character device (such as /dev/zero), not an image file; not read"),
    (stat.S_ISBLK, "is a block device, not an image file; not read"),
    (stat.S_ISSOCK, "is a socket, not an image file; not read"),
)


def file_problem(path: str | os.PathLike[str], missing: str = "file not found") -> str | None:
    """Why ``path`` cannot be read as an image file without opening it, or None for a regular file.

    A FIFO or a device (a link to ``/dev/zero``) is named for what it is and never opened: reading one would
    hang or never end. Links are followed; a dangling link and a link loop are named as such.

    Args:
        path: The path to check.
        missing: The reason given when nothing is there.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)" if os.path.islink(path) else missing
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (too many levels of links)"
        return f"cannot access file ({exc.strerror or type(exc).__name__})"
    for is_kind, reason in _NOT_A_FILE:
        if is_kind(st.st_mode):
            return reason
    return None


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
