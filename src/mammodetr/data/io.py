"""Read one mammogram from disk into a float32 ``(H, W)`` array in ``[0, 1]``.

Formats: DICOM (``.dcm``/``.dicom`` or any name with the ``DICM`` marker at byte 128), PNG (1-16 bit),
TIFF, PGM (P5 binary and P2 ASCII, 8/16 bit) and JPEG. The format is chosen from the file's first bytes,
not its extension, so a mislabelled file is still read correctly or refused with a clear reason.

Every failure is an :class:`ImageReadError` whose message is ``"<path>: <reason>"``; callers report it and
skip the file. DICOM specifics (LUT order, refused images, decoders) live in :mod:`mammodetr.data.dicom`.
No patient identifier ever goes into a message or into :attr:`LoadedImage.meta`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mammodetr.data.crop import breast_side
from mammodetr.data.dicom import read_dicom
from mammodetr.data.dicom_redact import foreign_text
from mammodetr.data.image import DEFAULT_MAX_PIXELS, ImageReadError, LoadedImage, file_problem, too_large_reason
from mammodetr.data.laterality import chest_wall_side

__all__ = [
    "DEFAULT_MAX_PIXELS", "ImageReadError", "LoadedImage", "check_laterality", "read_image", "sniff_format",
    "sniff_path",
]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_SNIFF_BYTES = 132  # the DICOM marker sits at bytes 128-131


def sniff_format(head: bytes) -> str | None:
    """Return the image format from the file's first bytes (at least 132), or None if unknown.

    One of ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"``, ``"pgm"``.
    """
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if head[:2] in (b"P5", b"P2") and len(head) > 2 and head[2:3].isspace():
        return "pgm"
    return None


def sniff_path(path: str | os.PathLike[str]) -> str | None:
    """The image format of a file from its first bytes (see :func:`sniff_format`); None if unknown or unreadable.

    Never raises on a missing or unreadable file, so it can filter a folder listing.
    """
    if file_problem(path) is not None:  # never open a FIFO or a device
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return None
    return sniff_format(head)


def read_image(
    path: str | os.PathLike[str],
    *,
    frame: int | None = None,
    allow_for_processing: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Read and normalise one image.

    DICOM pixels go through modality LUT -> VOI LUT (sequence, else window centre/width, else min-max of the
    image's values) -> MONOCHROME1 inversion. PNG/TIFF/PGM/JPEG are divided by their maximum code value
    (``2**bits - 1``, PGM: maxval); colour files are converted to luminance.

    Args:
        path: Image file.
        frame: Frame (DICOM) or page (TIFF) to take from a multi-frame file (0-based); multi-frame files are
            refused without it. It applies to multi-frame files only: a single-frame file gives its one image
            whatever ``frame`` says, so one value serves a dataset mixing both.
        allow_for_processing: Accept DICOM "FOR PROCESSING" (raw detector) images.
        max_pixels: Refuse images whose ``rows * columns * frames`` exceeds this, before decoding.

    Returns:
        LoadedImage with ``pixels`` float32 ``(H, W)`` in ``[0, 1]``.

    Raises:
        ImageReadError: Missing, empty, unknown, corrupt, refused or oversized file.
    """
    p = Path(path)
    _check_file(path, p)
    if frame is not None and (not isinstance(frame, (int, np.integer)) or frame < 0):
        raise ImageReadError(path, f"frame must be a non-negative integer, got {frame!r}")
    fmt = _sniff_file(path, p)
    try:
        loaded = _decode(p, fmt, frame, allow_for_processing, max_pixels)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(path, "out of memory while decoding") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure becomes one clear line
        if fmt == "dicom":
            with open(p, "rb") as fh:
                detail = foreign_text(exc, fh.read(1 << 20))
        else:
            detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        raise ImageReadError(path, f"cannot decode {fmt} ({detail})") from None
    loaded.pixels = _validated(path, loaded.pixels)
    loaded.meta.setdefault("format", fmt)
    return loaded


def _check_file(path: str | os.PathLike[str], p: Path) -> None:
    """Refuse a missing, inaccessible or empty path, a directory, a FIFO or a device (without opening it)."""
    problem = file_problem(p)
    if problem is not None:
        raise ImageReadError(path, problem)
    if p.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def _sniff_file(path: str | os.PathLike[str], p: Path) -> str:
    """The format of an existing, non-empty file, from its first bytes; refused when unknown."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or type(exc).__name__})") from None
    fmt = sniff_format(head)
    if fmt is None:
        if p.suffix.lower() in (".dcm", ".dicom"):
            raise ImageReadError(path, "not a DICOM file: no 'DICM' marker at byte 128")
        raise ImageReadError(path, "unrecognised image format (expected DICOM, PNG, TIFF, PGM or JPEG)")
    return fmt


def _decode(p: Path, fmt: str, frame: int | None, allow_for_processing: bool, max_pixels: int) -> LoadedImage:
    if fmt == "dicom":
        return read_dicom(p, frame=frame, allow_for_processing=allow_for_processing, max_pixels=max_pixels)
    if fmt == "pgm":
        return _read_pgm(p, frame=frame, max_pixels=max_pixels)
    if fmt == "tiff":
        return _read_tiff(p, frame=frame, max_pixels=max_pixels)
    return _read_pillow(p, fmt, frame=frame, max_pixels=max_pixels)


def check_laterality(loaded: LoadedImage, pixels: np.ndarray | None = None) -> str | None:
    """Compare the side the tags put the chest wall on with the side of the image the breast lies on.

    The tags' side comes from :func:`~mammodetr.data.laterality.chest_wall_side` (Patient Orientation, else
    the laterality under the standard display); the image's side from
    :func:`~mammodetr.data.crop.breast_side`.

    Args:
        loaded: The image as read (``laterality`` and ``meta["patient_orientation"]`` are used).
        pixels: Pixels to inspect, default ``loaded.pixels`` (``float (H, W)``).

    Returns:
        A one-line warning when tag and image disagree, else None (also None when nothing can be checked).
    """
    expected, why = chest_wall_side(loaded.laterality, loaded.meta.get("patient_orientation"))
    if expected is None:
        return None
    side = breast_side(loaded.pixels if pixels is None else pixels)
    if side == expected:
        return None
    where = {"L": "left", "R": "right"}
    return (
        f"laterality check: {why} puts the chest wall on the image's {where[expected]}, but the breast lies "
        f"against the {where[side]} edge (image flipped or tag wrong?)"
    )


def _validated(path: str | os.PathLike[str], pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ImageReadError(path, f"decoded image has shape {pixels.shape}, expected (H, W)")
    pixels = np.asarray(pixels, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise ImageReadError(path, "non-finite values after normalisation (corrupt LUT or window?)")
    # Round-off of LUT arithmetic may step a hair outside [0, 1].
    np.clip(pixels, 0.0, 1.0, out=pixels)
    return pixels


def _check_size(path: Path, rows: int, cols: int, frames: int, max_pixels: int) -> None:
    if rows <= 0 or cols <= 0:
        raise ImageReadError(path, f"invalid image size {rows}x{cols}")
    if rows * cols * frames > max_pixels:
        raise ImageReadError(path, too_large_reason(rows, cols, frames, max_pixels))


def _to_gray(arr: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` -> ``(H, W)`` luminance (ITU-R BT.601 weights, as Pillow's ``convert("L")``)."""
    if arr.ndim == 3:
        if arr.shape[2] >= 3:
            return arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        return arr[..., 0]
    return arr


def _read_pgm(path: Path, *, frame: int | None, max_pixels: int) -> LoadedImage:
    data = path.read_bytes()
    magic = data[:2]
    tokens: list[int] = []
    pos = 2
    # Header: magic, width, height, maxval as whitespace-separated ASCII, '#' comments to end of line.
    while len(tokens) < 3:
        while pos < len(data) and (data[pos : pos + 1].isspace() or data[pos : pos + 1] == b"#"):
            if data[pos : pos + 1] == b"#":
                end = data.find(b"\n", pos)
                pos = len(data) if end < 0 else end + 1
            else:
                pos += 1
        start = pos
        while pos < len(data) and data[pos : pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise ImageReadError(path, "malformed PGM header (expected width, height, maxval)")
        tokens.append(int(data[start:pos]))
    width, height, maxval = tokens
    if not 1 <= maxval <= 65535:
        raise ImageReadError(path, f"PGM maxval {maxval} outside 1..65535")
    _check_size(path, height, width, 1, max_pixels)
    if pos >= len(data) or not data[pos : pos + 1].isspace():
        raise ImageReadError(path, "malformed PGM header (no whitespace after maxval)")
    pos += 1
    n = width * height
    if magic == b"P5":
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype("u1")
        need = n * dtype.itemsize
        if len(data) - pos < need:
            raise ImageReadError(path, f"truncated PGM: {len(data) - pos} pixel bytes, expected {need}")
        arr = np.frombuffer(data, dtype=dtype, count=n, offset=pos).reshape(height, width)
    else:
        values = data[pos:].split()
        if len(values) < n:
            raise ImageReadError(path, f"truncated PGM: {len(values)} pixel values, expected {n}")
        try:
            arr = np.array([int(v) for v in values[:n]], dtype=np.int64).reshape(height, width)
        except ValueError:
            raise ImageReadError(path, "non-numeric pixel value in ASCII PGM") from None
    if int(arr.max()) > maxval:
        raise ImageReadError(path, f"PGM pixel value {int(arr.max())} exceeds maxval {maxval}")
    pixels = arr.astype(np.float32) / np.float32(maxval)
    return LoadedImage(pixels, meta={"format": "pgm", "maxval": maxval, "bits": 16 if maxval > 255 else 8})


def _read_pillow(path: Path, fmt: str, *, frame: int | None, max_pixels: int) -> LoadedImage:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            width, height = img.size
            _check_size(path, height, width, 1, max_pixels)
            mode = img.mode
            bits = 8
            if fmt == "png":
                with open(path, "rb") as fh:
                    ihdr = fh.read(26)
                bits = ihdr[24]  # Pillow already scales 1/2/4-bit grey to 0..255
            img.load()
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.float32)
                scale = float(2**bits - 1) if fmt == "png" else float(max(1.0, arr.max()))
                if fmt != "png":
                    bits = 16
            elif mode == "F":
                arr = np.asarray(img).astype(np.float32)
                scale = 1.0
            else:
                if mode not in ("L",):
                    img = img.convert("L")
                arr = np.asarray(img).astype(np.float32)
                scale, bits = 255.0, 8
    pixels = arr / np.float32(scale)
    return LoadedImage(pixels, meta={"format": fmt, "mode": mode, "bits": int(bits)})


def _read_tiff(path: Path, *, frame: int | None, max_pixels: int) -> LoadedImage:
    try:
        import tifffile
    except ImportError:  # Pillow reads the common 8/16-bit greyscale TIFFs too
        return _read_pillow(path, "tiff", frame=frame, max_pixels=max_pixels)

    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        n_pages = len(pages)
        if n_pages == 0:
            raise ImageReadError(path, "TIFF has no pages")
        if n_pages > 1 and frame is None:
            raise ImageReadError(path, f"multi-page TIFF ({n_pages} pages); pass frame=k to take one page")
        index = 0 if frame is None or n_pages == 1 else int(frame)
        if index >= n_pages:
            raise ImageReadError(path, f"frame={index} out of range (file has {n_pages} pages)")
        page = pages[index]
        shape = page.shape
        if len(shape) < 2:
            raise ImageReadError(path, f"TIFF page has shape {shape}")
        _check_size(path, int(shape[0]), int(shape[1]), 1, max_pixels)
        arr = page.asarray()
        photometric = int(page.photometric)
        bits = int(page.bitspersample)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) storage
    meta: dict[str, Any] = {"format": "tiff", "bits": bits, "photometric": photometric}
    if arr.dtype.kind in "ui":
        scale = float(2**bits - 1) if arr.dtype.kind == "u" else float(max(1, np.abs(arr).max()))
        pixels = _to_gray(arr.astype(np.float32)) / np.float32(scale)
    elif arr.dtype.kind == "f":
        pixels = _to_gray(arr.astype(np.float32))
        if not np.isfinite(pixels).all():
            raise ImageReadError(path, "non-finite values (NaN or infinity) in a floating-point TIFF")
        lo, hi = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if lo < 0.0 or hi > 1.0:
            pixels = (pixels - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(pixels)
            meta["normalised"] = "min-max (float values outside [0, 1])"
    else:
        raise ImageReadError(path, f"unsupported TIFF sample type {arr.dtype}")
    if photometric == 0:  # MINISWHITE: 0 is white, like DICOM MONOCHROME1
        pixels = 1.0 - pixels
        meta["inverted"] = True
    return LoadedImage(np.asarray(pixels, dtype=np.float32), meta=meta)
