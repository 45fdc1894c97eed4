"""The source image of an SR: its header, checked for what an SR needs to reference it and to inherit from it.

An SR belongs to its source's patient and study: it takes the source's Study Instance UID and copies the
Patient and General Study module attributes from it (highdicom's ``copy_patient_and_study_information``).
Those modules have Type 2 attributes (present, possibly empty) that some files lack; they are added **empty**,
never filled in, so the SR is exactly as identifiable as its source and no more.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammodetr.data.dicom_redact import describe_error

__all__ = ["REQUIRED_UIDS", "SourceImage", "read_source", "quiet_pydicom", "invalid_keywords"]

# Without these an SR cannot point at the image (evidence, image library, each region's source).
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Value representations whose values pydicom validates as text.
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
# Type 2 attributes of the Patient and General Study modules that highdicom reads from the source.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom without warnings or log lines, which quote header values (a birth date, a name).

    Reading does not validate; writing raises on an invalid value instead of warning, so an SR never carries
    a value that is not valid DICOM, and the caller decides what the error line says.
    """
    from pydicom import config

    old = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    logger = logging.getLogger("pydicom")
    old_disabled = logger.disabled
    config.settings.reading_validation_mode, config.settings.writing_validation_mode = config.IGNORE, config.RAISE
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = old
        logger.disabled = old_disabled


def invalid_keywords(ds: Any) -> list[str]:
    """Keywords of top-level elements whose value is not valid for its VR (for an error line without values)."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    bad = []
    with quiet_pydicom():
        for elem in ds:
            if elem.VR not in _TEXT_VRS or elem.value in (None, "", b""):
                continue
            values = elem.value if elem.VM > 1 else [elem.value]
            try:  # numbers (DS, IS) and names (PN) are checked in their text form
                for value in values:
                    validate_value(elem.VR, value if isinstance(value, (str, bytes)) else str(value), config.RAISE)
            except Exception:  # noqa: BLE001 - any failure means the value cannot be copied as it is
                bad.append(elem.keyword or str(elem.tag))
    return bad


@dataclass(frozen=True)
class SourceImage:
    """A DICOM image's header, ready to be an SR's evidence.

    Attributes:
        path: the file.
        dataset: the header without pixel data, Type 2 patient/study attributes present (empty when absent).
        rows, columns: the image's size: every region must lie inside it.
        frames: Number of Frames (1 for a single-frame image).
        laterality: "L" or "R" from Image Laterality (or Laterality), else None.
    """

    path: Path
    dataset: Any
    rows: int
    columns: int
    frames: int
    laterality: str | None

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)


def read_source(path: str | Path) -> SourceImage:
    """Read and check the header of the DICOM image an SR will reference.

    Raises:
        ValueError: one line naming the file: not DICOM, not an image, or without (valid) UIDs an SR needs.
            No value of the file is quoted (patient identifiers are scrubbed from reader messages).
    """
    with quiet_pydicom():  # values are converted as they are first read: no warning may quote one
        return _read_source(Path(path))


def _read_source(path: Path) -> SourceImage:
    import pydicom
    from pydicom.uid import UID

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        raise ValueError(f"{path}: not a DICOM file, so no SR can reference it") from None
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is one line
        raise ValueError(f"{path}: cannot read the DICOM header ({describe_error(exc, path)})") from None
    missing = [kw for kw in REQUIRED_UIDS if not str(ds.get(kw) or "").strip()]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}; an SR cannot reference this image (no SR written)")
    invalid = [kw for kw in REQUIRED_UIDS if not UID(str(ds.get(kw)).strip()).is_valid]
    if invalid:
        raise ValueError(f"{path}: invalid {', '.join(invalid)} (not a DICOM UID); no SR written")
    if not ds.get("Rows") or not ds.get("Columns"):
        raise ValueError(f"{path}: not an image (no Rows/Columns); no SR written")
    for kw in _TYPE2:
        if kw not in ds:
            setattr(ds, kw, None)  # present and empty: Type 2
    return SourceImage(path, ds, int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames") or 1),
                       _laterality(ds))


def _laterality(ds: Any) -> str | None:
    for kw in ("ImageLaterality", "Laterality"):
        value = str(ds.get(kw) or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None
