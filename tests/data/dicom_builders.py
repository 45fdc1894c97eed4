"""Builders of small DICOM files for the reader tests (tests/data/test_dicom.py) and the reliability suite.

Every file is written by the test that uses it (a few KB each); malformed values are patched into the bytes of a
valid file, since pydicom refuses to write them.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from mammodetr.data.synth import make_dicom_dataset, write_dicom

NAME, PID = "Doe^Janet", "PID-4711"
ACCESSION, INSTITUTION = "ACC98765", "ST MARYS HOSP"
SECRETS = ("Janet", "Doe", PID, ACCESSION, "MARYS")
_SOC_SIZ = b"\xff\x4f\xff\x51"


def stored_values(h: int = 16, w: int = 12, hi: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.integers(0, hi, size=(h, w)).astype(np.uint16)
    a[0, 0], a[0, 1] = 0, hi  # pin the range
    return a


def make_ds(arr: np.ndarray | None = None, **tags) -> Dataset:
    """A 12-bit MONOCHROME2 mammogram naming a patient (NAME, PID), an accession number and an institution."""
    arr = stored_values() if arr is None else arr
    ds = make_dicom_dataset(arr, variant="mono2", laterality="L", view="CC", patient_id=PID)
    ds.PatientName = NAME
    ds.AccessionNumber = ACCESSION
    ds.InstitutionName = INSTITUTION
    ds.BitsStored, ds.HighBit = 12, 11
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def save(tmp_path: Path, ds: Dataset, name: str = "img.dcm") -> Path:
    return write_dicom(tmp_path / name, ds)


def with_raw_value(path: Path, keyword: str, placeholder: str, value: str, ds: Dataset | None = None) -> Path:
    """Write ``ds`` with ``keyword`` = ``placeholder``, then put ``value`` (same length) in its place, byte for byte.

    The way to build a malformed element: an accession number in NumberOfFrames, a name in WindowCenter.
    """
    if len(placeholder) != len(value):
        raise ValueError("placeholder and value must have the same length")
    ds = make_ds() if ds is None else ds
    setattr(ds, keyword, placeholder)
    write_dicom(path, ds)
    raw = path.read_bytes()
    if raw.count(placeholder.encode()) != 1:
        raise ValueError(f"placeholder {placeholder!r} is not unique in the file")
    path.write_bytes(raw.replace(placeholder.encode(), value.encode()))
    return path


def jpeg2000_dicom(path: Path, arr: np.ndarray | None = None) -> Path:
    """A JPEG 2000 lossless DICOM of ``arr`` (default 64 x 48, 12 bits) encoded by pylibjpeg-openjpeg."""
    from pydicom.uid import JPEG2000Lossless

    arr = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7) % 4000 if arr is None else arr
    ds = make_ds(arr)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    return write_dicom(path, ds)


def patch_siz(path: Path, *, height: int | None = None, width: int | None = None, components: int | None = None
              ) -> Path:
    """Rewrite the size (and component count) the JPEG 2000 codestream's SIZ segment announces."""
    raw = bytearray(path.read_bytes())
    seg = raw.index(_SOC_SIZ) + 4
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", raw, seg + 4)
    if width is not None:
        struct.pack_into(">I", raw, seg + 4, xosiz + width)
    if height is not None:
        struct.pack_into(">I", raw, seg + 8, yosiz + height)
    if components is not None:  # only the count: the length check then finds the segment inconsistent
        struct.pack_into(">H", raw, seg + 36, components)
    path.write_bytes(bytes(raw))
    return path
