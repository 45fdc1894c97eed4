"""DICOM mammograms: header checks, decoding and the display pipeline to ``[0, 1]``.

Order of operations (DICOM PS3.3 C.11 / PS3.4 N.2): stored values -> Modality LUT (Modality LUT Sequence or
Rescale Slope/Intercept) -> VOI LUT (VOI LUT Sequence if present, else Window Center/Width with
VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID, else min-max of the image's values) -> MONOCHROME1
inversion. The inversion must come after the VOI step: a window is defined on the stored (inverted) values.

Header checks run before any pixel is decoded: pydicom reads a truncated file "successfully" and simply
hands back fewer pixel bytes, so lengths are checked against Rows x Columns x frames for uncompressed
transfer syntaxes, and a JPEG 2000 codestream's own size (its SIZ segment) must match the header before it is
decoded. No DICOM value reaches a message unless it is a technical value on the allow-list of
:mod:`mammodetr.data.dicom_redact`; texts from pydicom and the decoders are stripped of the file's values.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from mammodetr.data.dicom_redact import (
    NOT_SHOWN,
    foreign_text,
    identifier_strings,
    quiet_pydicom,
    scrub_identifiers,
    shown,
)
from mammodetr.data.image import DEFAULT_MAX_PIXELS, ImageReadError, LoadedImage, too_large_reason
from mammodetr.data.jpeg2000 import read_siz

__all__ = ["REQUIRED_TAGS", "DicomTags", "DicomValues", "Window", "apply_modality_lut", "apply_voi",
           "identifier_strings", "minmax", "quiet_pydicom", "read_dicom", "read_dicom_tags", "read_dicom_values",
           "scrub_identifiers", "window"]

REQUIRED_TAGS = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "PixelData",
)
# SOP class "Digital Mammography X-Ray Image Storage - For Processing" and its DX/intra-oral siblings.
_FOR_PROCESSING_SOP = {
    "1.2.840.10008.5.1.4.1.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.3.1",
}
_JPEG2000_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                      "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                      "1.2.840.10008.1.2.4.203"}
_MAX_FRAMES = 65535
# View Position values of mammography (DICOM CID 4014 abbreviations); anything else is not passed on.
_VIEWS = {"CC", "MLO", "ML", "LM", "LMO", "XCC", "XCCL", "XCCM", "FB", "SIO", "AT", "CV", "RL", "RM", "TAN", "SPOT",
          "MAG", "ID", "CCID", "MLOID"}
_ORIENTATION = re.compile(r"^[APRLHF]{1,3}$")


class _TagError(ValueError):
    """A header value that cannot be used; the message names the tag, never its value."""


def _install_hint(uid: Any) -> str:
    name = str(getattr(uid, "name", uid))
    low = name.lower()
    if "2000" in low or "htj2k" in low or "high-throughput" in low:
        return "pip install mammodetr[dicom] (pylibjpeg + pylibjpeg-openjpeg)"
    if "jpeg" in low:
        return "pip install mammodetr[dicom-extra] (pylibjpeg-libjpeg)"
    if "rle" in low:
        return "pip install pylibjpeg-rle (or use pydicom's built-in RLE decoder)"
    return "no decoder known to mammodetr"


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _number(ds: Any, keyword: str, default: float | None = None) -> float | None:
    """The (first) value of a numeric tag; a value that is not a number is a :class:`_TagError` naming the tag."""
    try:
        v = ds.get(keyword)
        v = _first(v) if v is not None else None
        return default if v is None or v == "" else float(v)
    except Exception:  # noqa: BLE001 - pydicom converts on access; its message would quote the value
        raise _TagError(f"{keyword} is not a number") from None


def _lut(item: Any, ds: Any, signed_input: bool) -> tuple[int, np.ndarray, int]:
    """``(first_mapped_value, lut_data int64, bits)`` of a Modality/VOI LUT sequence item."""
    desc = [int(x) for x in item.LUTDescriptor]
    if len(desc) != 3:
        raise ValueError(f"LUTDescriptor has {len(desc)} values, expected 3")
    n, first, bits = desc
    n = 65536 if n == 0 else n
    if signed_input and first >= 32768:  # US-encoded descriptor of a signed input range
        first -= 65536
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        encoding = getattr(ds, "original_encoding", None) or (None, True)
        dtype = ">u2" if encoding[1] is False else "<u2"
        lut = np.frombuffer(bytes(data)[: 2 * (len(data) // 2)], dtype=dtype).astype(np.int64)
    else:
        lut = np.asarray([int(x) for x in (data if hasattr(data, "__len__") else [data])], dtype=np.int64)
    if lut.size < n:
        raise ValueError(f"LUTData has {lut.size} entries, LUTDescriptor says {n}")
    return first, lut[:n], bits


def apply_modality_lut(stored: np.ndarray, ds: Any) -> tuple[np.ndarray, str]:
    """Stored values -> modality output values.

    Args:
        stored: ``(H, W)`` integer stored values.
        ds: The pydicom dataset.

    Returns:
        ``(values float32 (H, W), description)``.
    """
    seq = ds.get("ModalityLUTSequence")
    if seq:
        first, lut, _ = _lut(seq[0], ds, signed_input=int(ds.PixelRepresentation) == 1)
        idx = np.clip(stored.astype(np.int64) - first, 0, lut.size - 1)
        return lut[idx].astype(np.float32), "modality LUT sequence"
    slope = _number(ds, "RescaleSlope", 1.0)
    intercept = _number(ds, "RescaleIntercept", 0.0)
    values = stored.astype(np.float32)
    if slope != 1.0 or intercept != 0.0:
        values = values * np.float32(slope) + np.float32(intercept)
        return values, f"rescale slope={slope:g} intercept={intercept:g}"
    return values, "identity"


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window centre/width to ``[0, 1]`` (DICOM PS3.3 C.11.2.1.2 with y_min=0, y_max=1).

    LINEAR: ``((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped, width >= 1; LINEAR_EXACT: ``((x - c) / w + 0.5)``
    clipped, width > 0; SIGMOID: ``1 / (1 + exp(-4 (x - c) / w))``, width > 0.

    Args:
        values: ``(H, W)`` modality output values.

    Returns:
        ``float32 (H, W)`` in ``[0, 1]``.
    """
    function = function.upper()
    x = values.astype(np.float32, copy=False)
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"window width {width} < 1 for LINEAR")
        if width == 1:  # degenerate window: a threshold at c - 0.5
            return (x > center - 0.5).astype(np.float32)
        out = (x - np.float32(center - 0.5)) / np.float32(width - 1) + np.float32(0.5)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width {width} <= 0 for LINEAR_EXACT")
        out = (x - np.float32(center)) / np.float32(width) + np.float32(0.5)
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width {width} <= 0 for SIGMOID")
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(np.float32(-4.0 / width) * (x - np.float32(center))))).astype(np.float32)
    else:
        raise ValueError("unknown VOI LUT Function (not LINEAR, LINEAR_EXACT or SIGMOID)")
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def minmax(values: np.ndarray) -> np.ndarray:
    """Min-max scaling of the image's own values to ``[0, 1]`` (a constant image gives zeros)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32, copy=False)


def apply_voi(values: np.ndarray, ds: Any) -> tuple[np.ndarray, str]:
    """Modality output values -> ``[0, 1]`` by the VOI LUT Sequence, else the first window, else min-max.

    Args:
        values: ``(H, W)`` modality output values.
        ds: The pydicom dataset.

    Returns:
        ``(float32 (H, W) in [0, 1], description)``.
    """
    seq = ds.get("VOILUTSequence")
    if seq:
        signed = int(ds.PixelRepresentation) == 1 or float(values.min()) < 0
        first, lut, bits = _lut(seq[0], ds, signed_input=signed)
        idx = np.clip(np.floor(values).astype(np.int64) - first, 0, lut.size - 1)
        top = max(float(2**bits - 1), float(lut.max()))  # some LUTs understate their bit depth
        out = lut[idx].astype(np.float32) / np.float32(top)
        return out, f"VOI LUT sequence ({lut.size} entries, {bits} bits)"
    center = _number(ds, "WindowCenter")
    width = _number(ds, "WindowWidth")
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        try:
            out = window(values, center, width, function)
            return out, f"window {function} center={center:g} width={width:g}"
        except ValueError as exc:
            return minmax(values), f"min-max (window ignored: {exc})"
    return minmax(values), "min-max"


def _expected_native_bytes(rows: int, cols: int, frames: int, samples: int, bits_allocated: int) -> int:
    n = rows * cols * frames * samples
    return (n * bits_allocated + 7) // 8


def read_dicom(
    path: Path,
    *,
    frame: int | None = None,
    allow_for_processing: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Read a DICOM file; see :func:`mammodetr.data.io.read_image` for the contract."""
    with quiet_pydicom() as caught:
        loaded = _read_dicom(path, frame, allow_for_processing, max_pixels)
    if caught:
        with open(path, "rb") as fh:
            raw = fh.read(1 << 20)
        loaded.meta["warnings"] = [foreign_text(str(w.message), raw) for w in caught[:5]]
    return loaded


@dataclasses.dataclass(frozen=True)
class _Failure:
    """Builds a file's :class:`ImageReadError`: our reason, plus a foreign exception's text without the file's values.

    Attributes:
        path: The file, as given.
        raw: The file's bytes, scanned for the values to remove.
        ds: The parsed dataset once there is one (its parsed values are removed too).
    """

    path: Any
    raw: bytes
    ds: Any = None

    def __call__(self, reason: str, exc: BaseException | None = None) -> ImageReadError:
        """``reason`` quotes values only through :func:`shown`; ``exc`` (pydicom's, a decoder's) is appended."""
        detail = f" ({foreign_text(exc, self.raw, self.ds)})" if exc is not None else ""
        return ImageReadError(self.path, scrub_identifiers(reason, self.raw, self.ds) + detail)


@dataclasses.dataclass(frozen=True)
class _Header:
    """The header values that the checks, the decoder and :attr:`LoadedImage.meta` use."""

    rows: int
    cols: int
    bits_allocated: int
    bits_stored: int
    pixel_rep: int
    samples: int
    photometric: str
    frames: int
    intent: str
    sop_class: str
    ts: Any  # pydicom.uid.UID of the transfer syntax


@dataclasses.dataclass
class _Decoded:
    """A checked and decoded file: the dataset, its header values, the stored values and the reader's meta."""

    ds: Any
    header: _Header
    stored: np.ndarray
    meta: dict[str, Any]
    fail: _Failure


def _read_stored(path: Path, frame: int | None, allow_for_processing: bool, max_pixels: int) -> _Decoded:
    # Every check runs on the header before a pixel is decoded (see the module docstring).
    raw = Path(path).read_bytes()
    ds = _parse(raw, _Failure(path, raw))
    fail = _Failure(path, raw, ds)
    header = _header_values(ds, fail)
    _check_encoding(header, fail)
    header = _check_intent(header, allow_for_processing, fail)
    _check_frames(header, frame, max_pixels, fail)
    _check_pixel_data(ds, header, frame, max_pixels, fail)
    stored, index = _decode(ds, header, frame, fail)
    meta = _header_meta(header, index)
    stored = _mask_high_bits(stored, header, meta)
    return _Decoded(ds, header, stored, meta, fail)


def _read_dicom(path: Path, frame: int | None, allow_for_processing: bool, max_pixels: int) -> LoadedImage:
    d = _read_stored(path, frame, allow_for_processing, max_pixels)
    pixels = _display(d.stored, d.ds, d.header, d.meta, d.fail)
    laterality, view = _tags_to_meta(d.ds, d.meta)
    return LoadedImage(pixels=pixels, laterality=laterality, view=view, meta=d.meta)


def _parse(raw: bytes, fail: _Failure) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(raw))
    except pydicom.errors.InvalidDicomError as exc:
        raise fail("not a DICOM file", exc) from None
    except Exception as exc:  # noqa: BLE001
        raise fail("cannot parse DICOM header", exc) from None


def _int_tag(ds: Any, keyword: str, fail: _Failure, default: int | None = None) -> int:
    """An integer tag's (first) value; a value that is not an integer is refused, naming the tag only."""
    try:
        v = ds.get(keyword)
        v = _first(v) if v is not None else None
        if v is None or v == "":
            if default is None:
                raise _TagError(keyword)
            return default
        return int(v)
    except Exception:  # noqa: BLE001 - pydicom converts on access; its message would quote the value
        raise fail(f"invalid {keyword} (not an integer; the value is not shown)") from None


def _header_values(ds: Any, fail: _Failure) -> _Header:
    try:
        present = {kw: (kw in ds and ds[kw].value not in (None, b"", "")) for kw in REQUIRED_TAGS}
    except Exception as exc:  # noqa: BLE001 - a corrupt element raises on access
        raise fail("corrupt header element", exc) from None
    missing = [kw for kw, ok in present.items() if not ok]
    if missing:
        truncated = " (file truncated?)" if "PixelData" in missing else ""
        raise fail(f"missing required DICOM tag(s): {', '.join(missing)}{truncated}")
    ints = {kw: _int_tag(ds, kw, fail) for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored",
                                                  "PixelRepresentation", "SamplesPerPixel")}
    frames = _int_tag(ds, "NumberOfFrames", fail, default=1)
    try:
        return _Header(
            rows=ints["Rows"],
            cols=ints["Columns"],
            bits_allocated=ints["BitsAllocated"],
            bits_stored=ints["BitsStored"],
            pixel_rep=ints["PixelRepresentation"],
            samples=ints["SamplesPerPixel"],
            photometric=str(ds.PhotometricInterpretation).strip().upper(),
            frames=frames,
            intent=str(ds.get("PresentationIntentType") or "").strip().upper(),
            sop_class=str(ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "") or ""),
            ts=ds.file_meta.TransferSyntaxUID,
        )
    except Exception as exc:  # noqa: BLE001 - e.g. no file meta
        raise fail("invalid header", exc) from None


def _check_encoding(h: _Header, fail: _Failure) -> None:
    """Transfer syntax, bit depths and photometric interpretation of a greyscale image we can decode."""
    try:
        known_syntax = bool(h.ts.is_transfer_syntax)
    except Exception:  # noqa: BLE001
        known_syntax = False
    if not known_syntax:
        raise fail(f"unknown transfer syntax UID {shown('TransferSyntaxUID', h.ts)}")
    if h.bits_allocated not in (8, 16, 32):
        raise fail(f"unsupported BitsAllocated={shown('BitsAllocated', h.bits_allocated)} (expected 8, 16 or 32)")
    if not 1 <= h.bits_stored <= h.bits_allocated:
        raise fail(f"BitsStored={shown('BitsStored', h.bits_stored)} is inconsistent with "
                   f"BitsAllocated={h.bits_allocated}")
    if h.pixel_rep not in (0, 1):
        raise fail(f"invalid PixelRepresentation={shown('PixelRepresentation', h.pixel_rep)}")
    if h.samples != 1 or h.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise fail(f"not a greyscale image (SamplesPerPixel={shown('SamplesPerPixel', h.samples)}, "
                   f"PhotometricInterpretation={shown('PhotometricInterpretation', h.photometric)})")
    if not 1 <= h.frames <= _MAX_FRAMES:
        raise fail(f"invalid NumberOfFrames={shown('NumberOfFrames', h.frames)} (expected 1 to {_MAX_FRAMES})")


def _check_intent(h: _Header, allow_for_processing: bool, fail: _Failure) -> _Header:
    """Refuse raw detector images unless allowed; returns the header with the intent the file really has."""
    if h.intent == "FOR PROCESSING" or h.sop_class in _FOR_PROCESSING_SOP:
        if not allow_for_processing:
            raise fail(
                "FOR PROCESSING image (raw detector data, not meant for display or reading); "
                "pass allow_for_processing=True (prepare: --allow-for-processing) to use it anyway"
            )
        return dataclasses.replace(h, intent="FOR PROCESSING")
    return h


def _check_frames(h: _Header, frame: int | None, max_pixels: int, fail: _Failure) -> None:
    if h.rows * h.cols * h.frames > max_pixels:
        raise fail(too_large_reason(h.rows, h.cols, h.frames, max_pixels))
    if h.rows <= 0 or h.cols <= 0:
        raise fail(f"invalid image size Rows={h.rows} Columns={h.cols}")
    if h.frames > 1 and frame is None:
        raise fail(f"multi-frame image ({h.frames} frames); pass frame=k to take one frame")
    if h.frames > 1 and frame is not None and frame >= h.frames:
        raise fail(f"frame={frame} out of range (file has {h.frames} frames)")


def _check_pixel_data(ds: Any, h: _Header, frame: int | None, max_pixels: int, fail: _Failure) -> None:
    """A compressed image needs an installed decoder; an uncompressed one needs all its bytes."""
    if h.ts.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(h.ts)
        except NotImplementedError:
            raise fail(f"unsupported transfer syntax {h.ts.name} ({h.ts})") from None
        if not decoder.is_available:
            raise fail(
                f"compressed transfer syntax {h.ts.name} needs a decoder that is not installed: "
                f"{_install_hint(h.ts)}"
            )
        if str(h.ts) in _JPEG2000_SYNTAXES:
            _check_codestream(ds, h, frame, max_pixels, fail)
        return
    # pydicom reads a truncated file without complaint and hands back fewer pixel bytes.
    n_bytes = len(ds.PixelData)
    expected = _expected_native_bytes(h.rows, h.cols, h.frames, h.samples, h.bits_allocated)
    if n_bytes < expected:
        raise fail(
            f"pixel data truncated: {n_bytes} bytes, expected {expected} for {h.rows}x{h.cols}x{h.frames} frames"
        )
    if n_bytes % 2:
        raise fail(f"odd-length pixel data ({n_bytes} bytes; DICOM values have even length)")


def _check_codestream(ds: Any, h: _Header, frame: int | None, max_pixels: int, fail: _Failure) -> None:
    """The JPEG 2000 codestream of the frame to decode must announce the header's size (the decoder allocates what
    the codestream says), and no more than ``max_pixels``."""
    from pydicom.encaps import get_frame

    try:
        data = get_frame(ds.PixelData, 0 if h.frames == 1 else int(frame or 0), number_of_frames=h.frames)
        siz = read_siz(bytes(data[:4096]) if len(data) > 4096 else bytes(data))
    except Exception as exc:  # noqa: BLE001 - a corrupt encapsulation or codestream header
        raise fail("corrupt JPEG 2000 pixel data", exc) from None
    if siz.width * siz.height * siz.components > max_pixels:
        raise fail(f"JPEG 2000 codestream announces {siz.height}x{siz.width}x{siz.components} samples "
                   f"> max_pixels={max_pixels} (refused before decoding)")
    if (siz.height, siz.width, siz.components) != (h.rows, h.cols, h.samples):
        raise fail(f"JPEG 2000 codestream is {siz.height}x{siz.width} with {siz.components} component(s) but the "
                   f"header says Rows={h.rows}, Columns={h.cols}, SamplesPerPixel={h.samples} (refused before "
                   "decoding)")
    if max(siz.bit_depths) > h.bits_allocated:
        raise fail(f"JPEG 2000 codestream has {max(siz.bit_depths)}-bit samples but BitsAllocated={h.bits_allocated}"
                   " (refused before decoding)")


def _decode(ds: Any, h: _Header, frame: int | None, fail: _Failure) -> tuple[np.ndarray, int | None]:
    """``(stored values (rows, cols), frame index passed to the decoder or None for a single frame)``."""
    from pydicom.pixels import pixel_array

    index = None if h.frames == 1 else frame
    try:
        stored = pixel_array(ds, index=index)
    except Exception as exc:  # noqa: BLE001
        hint = f"; corrupt data, or it needs another decoder: {_install_hint(h.ts)}" if h.ts.is_compressed else ""
        raise fail(f"cannot decode pixel data ({h.ts.name}{hint})", exc) from None
    if stored.shape != (h.rows, h.cols):
        raise fail(f"decoded pixel array has shape {stored.shape}, header says {h.rows}x{h.cols}")
    return stored, index


def _header_meta(h: _Header, index: int | None) -> dict[str, Any]:
    return {
        "format": "dicom",
        "rows": h.rows,
        "columns": h.cols,
        "bits_allocated": h.bits_allocated,
        "bits_stored": h.bits_stored,
        "pixel_representation": h.pixel_rep,
        "photometric": h.photometric,
        "transfer_syntax": str(h.ts),
        "transfer_syntax_name": str(h.ts.name),
        "number_of_frames": h.frames,
        "frame": index if index is not None else 0,
        "presentation_intent": h.intent or None,
    }


def _mask_high_bits(stored: np.ndarray, h: _Header, meta: dict[str, Any]) -> np.ndarray:
    if h.pixel_rep == 0 and stored.dtype.kind == "u" and h.bits_stored < stored.dtype.itemsize * 8:
        limit = (1 << h.bits_stored) - 1
        if int(stored.max()) > limit:  # bits above BitsStored (e.g. retired overlays) are not pixel values
            meta["masked_high_bits"] = True
            return stored & stored.dtype.type(limit)
    return stored


def _display(stored: np.ndarray, ds: Any, h: _Header, meta: dict[str, Any], fail: _Failure) -> np.ndarray:
    """Stored values -> ``[0, 1]`` display values: modality LUT, VOI LUT, then MONOCHROME1 inversion."""
    try:
        values, modality_desc = apply_modality_lut(stored, ds)
        pixels, voi_desc = apply_voi(values, ds)
    except _TagError as exc:
        raise fail(f"invalid LUT or rescale values ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - malformed LUT/rescale values
        raise fail("invalid LUT or rescale values", exc) from None
    if h.photometric == "MONOCHROME1":
        pixels = np.float32(1.0) - pixels
    meta["modality_lut"] = modality_desc
    meta["voi_lut"] = voi_desc
    meta["inverted"] = h.photometric == "MONOCHROME1"
    return pixels


def _tag_str(ds: Any, keyword: str) -> str | None:
    """A tag's (first) value, stripped and upper-cased; None when absent, empty or unreadable."""
    try:
        v = ds.get(keyword)
    except Exception:  # noqa: BLE001
        return None
    v = _first(v) if v is not None else None
    return str(v).strip().upper() or None if v is not None else None


def _tags_to_meta(ds: Any, meta: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(laterality "L"/"R" or None, view)``; Patient Orientation and pixel spacing go into ``meta``."""
    # Only values of known form are passed on: a malformed tag may hold any text (a name, an accession number).
    laterality = _tag_str(ds, "ImageLaterality") or _tag_str(ds, "Laterality")
    if laterality not in ("L", "R"):
        if laterality:
            meta["laterality_tag"] = laterality if laterality in ("B", "U") else NOT_SHOWN  # both, unpaired
        laterality = None
    view = _tag_str(ds, "ViewPosition")
    if view is not None and view.replace(" ", "") not in _VIEWS:
        meta["view_tag"] = NOT_SHOWN
        view = None
    view = view or _view_from_code(ds)
    try:
        orientation = ds.get("PatientOrientation")
        if orientation:
            values = orientation.split("\\") if isinstance(orientation, str) else orientation
            values = [str(x).strip().upper() for x in values]
            if all(_ORIENTATION.match(v) for v in values):
                meta["patient_orientation"] = values
    except Exception:  # noqa: BLE001
        pass
    try:
        spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
        if spacing:
            meta["pixel_spacing_mm"] = [float(x) for x in spacing]
    except Exception:  # noqa: BLE001
        pass
    return laterality, view


def _view_from_code(ds: Any) -> str | None:
    """View from View Code Sequence when ViewPosition is absent (e.g. SNOMED 'cranio-caudal')."""
    try:
        seq = ds.get("ViewCodeSequence")
        meaning = str(seq[0].CodeMeaning).lower() if seq else ""
    except Exception:  # noqa: BLE001
        return None
    if "oblique" in meaning:
        return "MLO"
    if "cranio-caudal" in meaning or "craniocaudal" in meaning:
        return "CC"
    if "medio-lateral" in meaning:
        return "ML"
    if "latero-medial" in meaning:
        return "LM"
    return None


@dataclasses.dataclass(frozen=True)
class DicomTags:
    """What a DICOM header says about where an image belongs, read without decoding its pixels.

    Attributes:
        laterality: ``"L"``/``"R"`` (ImageLaterality, else Laterality), or None.
        view: ViewPosition (else from the View Code Sequence), e.g. ``"CC"``/``"MLO"``, or None.
        study_uid: Study Instance UID, or None. Identifier-like: group images by it, never write it out.
        rows, columns, frames: the image size the header announces.
        patient_orientation: Patient Orientation values (row direction first), or None.
    """

    laterality: str | None
    view: str | None
    study_uid: str | None
    rows: int
    columns: int
    frames: int
    patient_orientation: tuple[str, ...] | None = None


def read_dicom_tags(path: str | Path) -> DicomTags:
    """Read the header of a DICOM file (pixel data is not read) for grouping views into exams.

    Raises:
        ImageReadError: not a DICOM file, or a header that cannot be parsed (identifiers scrubbed).
    """
    import pydicom

    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    fail = _Failure(path, head)
    with quiet_pydicom():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError as exc:
            raise fail("not a DICOM file", exc) from None
        except Exception as exc:  # noqa: BLE001
            raise fail("cannot parse DICOM header", exc) from None
        meta: dict[str, Any] = {}
        laterality, view = _tags_to_meta(ds, meta)
        try:
            size = (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), int(_first(ds.get("NumberOfFrames")) or 1))
        except (TypeError, ValueError):
            raise fail("invalid Rows, Columns or NumberOfFrames") from None
        study = str(ds.get("StudyInstanceUID") or "").strip() or None
    orientation = meta.get("patient_orientation")
    return DicomTags(laterality, view, study, *size, tuple(orientation) if orientation else None)


@dataclasses.dataclass(frozen=True)
class Window:
    """A display window on modality output values (DICOM PS3.3 C.11.2.1.2).

    Attributes:
        center, width: Window Center and Window Width.
        function: VOI LUT Function: ``"LINEAR"``, ``"LINEAR_EXACT"`` or ``"SIGMOID"``.
        name: what the file calls it (Window Center & Width Explanation), or how it was derived.
    """

    center: float
    width: float
    function: str = "LINEAR"
    name: str = ""


@dataclasses.dataclass
class DicomValues:
    """Modality output values of a DICOM image, for a viewer that applies the window itself.

    Attributes:
        values: ``float32 (H, W)`` modality output values; negated for MONOCHROME1 so that larger is brighter.
        windows: the file's windows in the same (negated) units; applying ``windows[0]`` with :func:`window`
            gives the pixels :func:`read_dicom` returns. A VOI LUT Sequence becomes a LINEAR window over the
            LUT's input range (an approximation, named so).
        laterality, view: as in :class:`~mammodetr.data.image.LoadedImage`.
        meta: the reader's meta (as :func:`read_dicom`; never patient identifiers).
    """

    values: np.ndarray
    windows: list[Window]
    laterality: str | None
    view: str | None
    meta: dict[str, Any]


def read_dicom_values(
    path: str | Path,
    *,
    frame: int | None = None,
    allow_for_processing: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DicomValues:
    """Read a DICOM file up to the modality LUT, with the same checks as :func:`read_dicom`.

    Raises:
        ImageReadError: as :func:`read_dicom`.
    """
    with quiet_pydicom():
        d = _read_stored(Path(path), frame, allow_for_processing, max_pixels)
        try:
            values, desc = apply_modality_lut(d.stored, d.ds)
            windows = _windows(d.ds, values)
        except _TagError as exc:
            raise d.fail(f"invalid LUT or rescale values ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - malformed LUT/rescale values
            raise d.fail("invalid LUT or rescale values", exc) from None
        laterality, view = _tags_to_meta(d.ds, d.meta)
    d.meta["modality_lut"] = desc
    if d.header.photometric == "MONOCHROME1":
        # 1 - window(x; c, w) == window(-x; c', w) with c' = 1 - c (LINEAR, whose centre sits half a value off)
        # or c' = -c (LINEAR_EXACT, SIGMOID): negated values keep "larger is brighter" for the viewer.
        values = -values
        windows = [dataclasses.replace(w, center=(1.0 - w.center) if w.function == "LINEAR" else -w.center)
                   for w in windows]
    return DicomValues(values.astype(np.float32, copy=False), windows, laterality, view, d.meta)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def _windows(ds: Any, values: np.ndarray) -> list[Window]:
    """The file's VOI windows in the order :func:`apply_voi` prefers them (first = what it applies)."""
    seq = ds.get("VOILUTSequence")
    if seq:
        first, lut, _ = _lut(seq[0], ds, signed_input=int(ds.PixelRepresentation) == 1 or float(values.min()) < 0)
        return [Window(first + (lut.size - 1) / 2 + 0.5, float(lut.size), "LINEAR", "VOI LUT (linear approximation)")]
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    out = []
    if centers is not None and widths is not None:
        names = _as_list(ds.get("WindowCenterWidthExplanation") or [])
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        for i, (c, w) in enumerate(zip(_as_list(centers), _as_list(widths))):
            try:
                win = Window(float(c), float(w), function, str(names[i]) if i < len(names) else f"window {i + 1}")
                window(np.zeros(1, np.float32), win.center, win.width, win.function)  # apply_voi's validity rule
            except (TypeError, ValueError):
                if i == 0:
                    out.append(None)  # apply_voi falls back to min-max when its (first) window is unusable
                continue
            out.append(win)
    if not out or out[0] is None:  # apply_voi's fallback: min-max of the image's own values (LINEAR form)
        lo, hi = float(values.min()), float(values.max())
        out[:1] = [Window((lo + hi) / 2 + 0.5, hi - lo + 1.0, "LINEAR", "image range")]
    return out
