"""Raw image files as model inputs: find them, read them, prepare them exactly as the training data was prepared.

A raw file (DICOM, PNG, TIFF, PGM, JPEG) goes through the checkpoint's own preparation (breast crop, side flip,
long-side cap: ``RunConfig.data.prepare``), the one float->uint16 step and the one model-input transform. The
:class:`RawInput` keeps the composed transform from the file's pixels to the model input, so
:func:`~mammodetr.inference.decode.decode` puts the boxes back in the file's own pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mammodetr.data.geometry import ImageTransform
from mammodetr.data.image import file_problem, to_uint16
from mammodetr.data.io import read_image, sniff_path
from mammodetr.data.model_input import InputGeometry, to_model_input
from mammodetr.data.preprocess import PreparedImage, PrepareOptions, preprocess_pixels

__all__ = ["IMAGE_SUFFIXES", "InputScan", "scan_inputs", "collect_inputs", "RawInput", "load_raw_input"]

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".tif", ".tiff", ".pgm", ".jpg", ".jpeg"}


@dataclass
class InputScan:
    """The files found in the inputs, and the files of input folders that were left out (not images).

    Attributes:
        files: image files, in input order (sorted within each folder).
        skipped: files in input folders that are not images (a ``.txt``, a suffix-less file that is not DICOM).
    """

    files: list[Path]
    skipped: list[Path]


def scan_inputs(inputs: Iterable[str | Path]) -> InputScan:
    """Expand files and folders (recursively) into image files, sorted within each folder, and count the rest.

    In a folder, a file counts as an image by its suffix, or (without a suffix) by a DICOM marker. A file given
    by name is always taken (it gets an error line if it cannot be read). A file reached twice is taken once.

    Raises:
        ValueError: an input does not exist, or is a FIFO, a device or a link loop.
    """
    files: list[Path] = []
    skipped: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file():
                    continue
                if f.suffix.lower() in IMAGE_SUFFIXES or (not f.suffix and sniff_path(f) == "dicom"):
                    _add(files, seen, f)
                else:
                    skipped.append(f)
        elif (problem := file_problem(p, missing="no such file or folder")) is None:
            _add(files, seen, p)
        else:  # a FIFO or a device is named for what it is, never opened
            raise ValueError(f"{p}: {problem}")
    return InputScan(files, skipped)


def _add(files: list[Path], seen: set[str], f: Path) -> None:
    # A file named twice (a folder and a file in it) is predicted once: two lines of one name are refused later.
    key = os.path.realpath(f)
    if key not in seen:
        seen.add(key)
        files.append(f)


def collect_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files of :func:`scan_inputs`."""
    return scan_inputs(inputs).files


@dataclass
class RawInput:
    """A raw file after the checkpoint's preparation, ready for the model.

    Attributes:
        image: (1, S, S) model input.
        transform: the file's pixels -> model input (preparation, then resize/letterbox).
        prepared: the prepared image (pixels in [0, 1], the preparation's transform, laterality, view, meta).
        pixels_u16: the prepared image as uint16, as it would have been stored by ``prepare``.
        original: the file's own pixels, float in [0, 1] (for overlays).
    """

    image: torch.Tensor
    transform: ImageTransform
    prepared: PreparedImage
    pixels_u16: np.ndarray
    original: np.ndarray


def load_raw_input(path: Path, options: PrepareOptions, geometry: InputGeometry) -> RawInput:
    """Read a raw image file and apply the training preparation and the model-input transform.

    Raises:
        ValueError: naming the file, whatever the reader raised.
    """
    try:
        loaded = read_image(path, frame=options.frame, allow_for_processing=options.allow_for_processing,
                            max_pixels=options.max_pixels)
        prepared = preprocess_pixels(loaded.pixels, options, laterality=loaded.laterality, view=loaded.view,
                                     meta=loaded.meta)
        u16 = to_uint16(prepared.pixels)
        x, to_input = to_model_input(u16, geometry)
    except Exception as e:  # noqa: BLE001 - one bad file is reported and skipped, whatever the reader raised
        msg = str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"
        raise ValueError(msg if str(path) in msg else f"{path}: {msg}") from e
    return RawInput(x, prepared.transform.compose(to_input), prepared, u16, loaded.pixels)
