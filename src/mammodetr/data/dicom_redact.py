"""What of a DICOM file may reach a message: technical values from an allow-list, and nothing else.

A DICOM header holds names, ids, accession numbers and institutions, and a malformed element can put any of them
where a number belongs. Two rules keep them out of every message, report and output:

* Messages mammodetr writes quote a value only through :func:`shown`: the tag must be in :data:`SHOWN_TAGS`
  (Rows, Columns, bit depths, PhotometricInterpretation, TransferSyntaxUID, ...) and the value must look like what
  the tag holds (a small integer, a defined term, a UID); anything else is written ``<value not shown>``.
* Text that comes from elsewhere (an exception or warning of pydicom or a decoder, which quote values:
  ``invalid literal for int() with base 10: 'ACC1234'``) passes through :func:`foreign_text`, which replaces
  every quoted literal and every string found in the file's header with ``<value>``.

:func:`quiet_pydicom` stops pydicom from printing while a file is read: its warnings are collected, and its log
records (ERROR lines with tracebacks for a corrupt codestream) go to the ``mammodetr.data.dicom`` logger at DEBUG
level, shown under ``--debug``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

__all__ = ["SHOWN_TAGS", "NOT_SHOWN", "shown", "foreign_text", "file_strings", "identifier_strings",
           "scrub_identifiers", "quiet_pydicom", "describe_error"]

log = logging.getLogger("mammodetr.data.dicom")

NOT_SHOWN = "<value not shown>"
_INT_TAGS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
             "NumberOfFrames", "PlanarConfiguration")
_NUMBER_TAGS = ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept")
_TERMS = {
    "PhotometricInterpretation": {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK",
                                  "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT",
                                  "YBR_RCT", "XYZ"},
    "PresentationIntentType": {"FOR PRESENTATION", "FOR PROCESSING"},
    "VOILUTFunction": {"LINEAR", "LINEAR_EXACT", "SIGMOID"},
}
_UID_TAGS = ("TransferSyntaxUID", "SOPClassUID", "MediaStorageSOPClassUID")
SHOWN_TAGS = (*_INT_TAGS, *_NUMBER_TAGS, *_TERMS, *_UID_TAGS)
_UID = re.compile(r"^[012](\.(0|[1-9][0-9]*))+$")

# Identifier tags (group 0010): PatientName, PatientID, OtherPatientIDs, OtherPatientNames.
_ID_TAGS = (b"\x10\x00\x10\x00", b"\x10\x00\x20\x00", b"\x10\x00\x00\x10", b"\x10\x00\x01\x10")
_ID_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames")
_REDACTED = "<redacted>"
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
# A run of characters that can be a text value: no control characters, split at DICOM's value (\), name (^) and
# name-group (=) delimiters so each component is found on its own.
_RUN = re.compile(r"[^\x00-\x1f\x7f\\^=\ufffd]+")
# A quoted literal (Python's repr of a value), not an apostrophe inside a word ("doesn't").
_QUOTED = re.compile(r"""(?<![A-Za-z0-9])b?('[^']*'|"[^"]*")(?![A-Za-z0-9])""")
_HEAD_BYTES = 1 << 20


def shown(keyword: str, value: Any) -> str:
    """``value`` as text when ``keyword`` is a technical tag and the value looks like one of it, else NOT_SHOWN."""
    try:
        if keyword in _INT_TAGS:
            number = int(value)
            return str(number) if -65536 <= number <= 65535 and number == float(value) else NOT_SHOWN
        if keyword in _NUMBER_TAGS:
            number = float(value)
            return f"{number:g}" if math.isfinite(number) and abs(number) <= 1e7 else NOT_SHOWN
        if keyword in _TERMS:
            term = str(value).strip().upper()
            return term if term in _TERMS[keyword] else NOT_SHOWN
        if keyword in _UID_TAGS:
            uid = str(value).strip()
            return uid if len(uid) <= 64 and _UID.match(uid) else NOT_SHOWN
    except (TypeError, ValueError, OverflowError):
        return NOT_SHOWN
    return NOT_SHOWN


def _header_bytes(raw: bytes) -> bytes:
    head = raw[:_HEAD_BYTES]
    pixel_tag = head.find(b"\xe0\x7f\x10\x00")  # text elements precede the pixel data in a valid file
    return head[:pixel_tag] if pixel_tag > 0 else head


def _parsed_strings(ds: Any) -> set[str]:
    found: set[str] = set()
    try:
        elements = list(ds.iterall())
    except Exception:  # noqa: BLE001 - a corrupt sequence must not stop scrubbing
        return found
    for elem in elements:
        try:
            if elem.VR not in _TEXT_VRS or elem.value in (None, ""):
                continue
            values = elem.value if elem.VM > 1 else [elem.value]
            found.update(str(v) for v in values)
        except Exception:  # noqa: BLE001 - an element that cannot be converted is found in the raw bytes
            continue
    return found


def file_strings(raw: bytes, ds: Any = None) -> list[str]:
    """Every string of 3+ characters that may be a text value of the file, longest first.

    Runs of printable characters in the header bytes (decoded as Latin-1 and as UTF-8, so it works when pydicom
    cannot parse the file), their words of 4+ characters, and the text values pydicom parsed, if any.
    """
    head = _header_bytes(raw)
    texts = [head.decode("latin-1"), head.decode("utf-8", "replace")]
    if ds is not None:
        texts.extend(_parsed_strings(ds))
    found: set[str] = set()
    for text in texts:
        for run in _RUN.findall(text):
            run = run.strip(" \x00")
            if len(run) >= 3:
                found.add(run)
                found.update(word for word in run.split() if len(word) >= 4)
    return sorted(found, key=len, reverse=True)


def _is_keyword(text: str) -> bool:
    try:
        from pydicom.datadict import keyword_dict
    except ImportError:
        return False
    return text in keyword_dict


def foreign_text(text: Any, raw: bytes = b"", ds: Any = None, limit: int = 200) -> str:
    """An exception (``"TypeName: text"``) or a text from pydicom or a decoder, with every value of the file removed.

    Quoted literals become ``'<value>'`` (DICOM keywords stay), then every :func:`file_strings` match becomes
    ``<value>``; the result is one line of at most ``limit`` characters.
    """
    if isinstance(text, BaseException):
        body = " ".join(str(text).split())
        text = f"{type(text).__name__}: {body}" if body else type(text).__name__
    out = _QUOTED.sub(lambda m: m.group() if _is_keyword(m.group(1)[1:-1]) else "'<value>'",
                      " ".join(str(text).split()))
    strings = [s for s in file_strings(raw, ds) if s != "<value>"]
    if strings:
        pattern = re.compile("|".join(re.escape(s) for s in strings), re.IGNORECASE)
        out = pattern.sub("<value>", out)
    return out[:limit]


def describe_error(exc: BaseException, path: str | Path) -> str:
    """:func:`foreign_text` of an exception raised while reading the DICOM file ``path`` (its head is scanned)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_HEAD_BYTES)
    except OSError:
        raw = b""
    return foreign_text(exc, raw)


def identifier_strings(raw: bytes, ds: Any = None) -> list[str]:
    """Patient identifier strings found in a DICOM file (the 0010 group's names and ids), longest first.

    Scans the raw bytes in explicit and implicit VR little endian (so it works when pydicom cannot parse the
    file), plus the values pydicom parsed, if any. Name components (``Family^Given``) are returned as well.
    """
    found: set[str] = set()
    head = _header_bytes(raw)
    for tag in _ID_TAGS:
        start = 0
        while (i := head.find(tag, start)) >= 0:
            start = i + 1
            if head[i + 4: i + 6] in (b"PN", b"LO", b"SH", b"CS", b"UN"):
                value = head[i + 8: i + 8 + int.from_bytes(head[i + 6: i + 8], "little")]
            else:
                value = head[i + 8: i + 8 + min(int.from_bytes(head[i + 4: i + 8], "little"), 256)]
            if 0 < len(value) <= 256:
                found.add(value.decode("latin-1"))
    if ds is not None:
        for kw in _ID_KEYWORDS:
            try:
                v = ds.get(kw)
            except Exception:  # noqa: BLE001 - a corrupt element must not stop scrubbing
                continue
            if v is not None:
                found.update(str(x) for x in (v if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue"
                                              else [v]))
    parts: set[str] = set()
    for s in found:
        s = s.strip(" \x00")
        if len(s) >= 3:
            parts.add(s)
        parts.update(c.strip(" \x00") for c in re.split(r"[\^=\\]", s) if len(c.strip(" \x00")) >= 3)
    return sorted(parts, key=len, reverse=True)


def scrub_identifiers(text: str, path_or_raw: Path | bytes, ds: Any = None) -> str:
    """Replace every patient identifier of the file in ``text`` with ``<redacted>``."""
    if isinstance(path_or_raw, (bytes, bytearray)):
        raw = bytes(path_or_raw)
    else:
        try:
            with open(path_or_raw, "rb") as fh:
                raw = fh.read(_HEAD_BYTES)
        except OSError:
            raw = b""
    for s in identifier_strings(raw, ds):
        text = re.sub(re.escape(s), _REDACTED, text, flags=re.IGNORECASE)
    return text


class _ToDebug(logging.Handler):
    """Re-logs a pydicom record on our logger at DEBUG (with its traceback): seen only under ``--debug``."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("pydicom %s: %s", record.levelname, record.getMessage(), exc_info=record.exc_info)


_ROUTE_LOCK = threading.Lock()
_ROUTE = {"depth": 0, "propagate": True, "handler": _ToDebug()}


@contextlib.contextmanager
def _pydicom_logs_to_debug() -> Iterator[None]:
    # Records of pydicom's child loggers (pydicom.pixels.decoders.base, ...) reach the "pydicom" logger's handlers;
    # with propagate off they stop there, at our handler, instead of printing through the root logger.
    logger = logging.getLogger("pydicom")
    with _ROUTE_LOCK:
        if _ROUTE["depth"] == 0:
            _ROUTE["propagate"] = logger.propagate
            logger.addHandler(_ROUTE["handler"])
            logger.propagate = False
        _ROUTE["depth"] += 1
    try:
        yield
    finally:
        with _ROUTE_LOCK:
            _ROUTE["depth"] -= 1
            if _ROUTE["depth"] == 0:
                logger.removeHandler(_ROUTE["handler"])
                logger.propagate = _ROUTE["propagate"]


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[list[warnings.WarningMessage]]:
    """Read with pydicom without it printing anything; yields the warnings it raised (texts quote values).

    Value validation is off while reading (its warnings quote element values; values are checked where they are
    used instead), warnings are collected, and pydicom's log records go to DEBUG.
    """
    from pydicom import config

    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        with _pydicom_logs_to_debug(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        config.settings.reading_validation_mode = old
