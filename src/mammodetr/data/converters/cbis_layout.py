"""CBIS-DDSM download layouts: which folder the case-description CSVs' image paths start from.

The CSVs name files as ``Mass-Training_P_00001_LEFT_CC/<uid>/<uid>/000000.dcm``: the first part is a folder
the TCIA download (NBIA Data Retriever) creates for each series. People unpack the download in a few ways, tried
in this order:

1. the CSVs inside the image tree (paths relative to the CSVs' folder);
2. the CSVs beside the ``CBIS-DDSM/`` folder the retriever creates (the most common);
3. the CSVs beside one other folder that holds the series folders: a renamed ``CBIS-DDSM/``, or the retriever's
   ``manifest-<number>/CBIS-DDSM/`` (looked for one and two levels down).

:func:`find_images_root` keeps the layout under which most of the image folders the CSVs name exist, and stops
with a message naming every layout tried when none of them holds a single one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["Layout", "find_images_root", "top_folder"]

# A series folder of the TCIA tree: Mass-Training_P_00001_LEFT_CC (full image) or ..._LEFT_CC_1 (ROI, crop).
_SERIES_FOLDER = re.compile(r"^(mass|calc)-(training|test)_p_\d+_(left|right)_(cc|mlo)", re.IGNORECASE)
# Folders a search two levels down looks into at most per level (a download root has few non-series folders).
_MAX_SCAN = 64


@dataclass(frozen=True)
class Layout:
    """Where the images of a CBIS-DDSM download are.

    Attributes:
        root: Folder the CSVs' image paths are relative to.
        description: One line for the user: the layout and the folder.
        found: Image folders the CSVs name that exist under ``root``.
        named: Image folders the CSVs name.
    """

    root: Path
    description: str
    found: int
    named: int


def top_folder(rel: str) -> str:
    """The first folder of a CSV path (``Mass-Training_P_00001_LEFT_CC/...`` -> ``Mass-Training_P_00001_LEFT_CC``)."""
    return rel.replace("\\", "/").strip("/").split("/")[0]


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir() and not _SERIES_FOLDER.match(e.name))
    except OSError:
        return []


def _holds_series_folders(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(e.is_dir() and _SERIES_FOLDER.match(e.name) for e in entries)
    except OSError:
        return False


def _other_roots(csv_dir: Path) -> list[Path]:
    """Folders one or two levels below ``csv_dir`` (other than ``CBIS-DDSM/``) that hold series folders."""
    found = []
    for child in _subfolders(csv_dir)[:_MAX_SCAN]:
        if child.name == "CBIS-DDSM":
            continue
        if _holds_series_folders(child):
            found.append(child)
            continue
        found.extend(g for g in _subfolders(child)[:_MAX_SCAN] if _holds_series_folders(g))
    return found


def _candidates(csv_dir: Path, images_dir: Optional[Path]) -> list[tuple[Path, str]]:
    if images_dir is not None:
        return [(images_dir, f"--images-dir {images_dir}")]
    out = [(csv_dir, f"paths relative to the CSVs' folder {csv_dir}"),
           (csv_dir / "CBIS-DDSM",
            f"paths relative to the CBIS-DDSM/ folder beside the CSVs ({csv_dir / 'CBIS-DDSM'})")]
    others = _other_roots(csv_dir)
    if len(others) == 1:
        out.append((others[0], f"paths relative to {others[0]}, the only folder below the CSVs' folder that holds "
                               "the image folders"))
    return out


def _count(root: Path, tops: Iterable[str]) -> int:
    return sum((root / t).is_dir() for t in tops)


def find_images_root(csv_dir: Path, tops: set[str], images_dir: Optional[Path] = None) -> Layout:
    """The layout under which most of the image folders ``tops`` exist.

    Args:
        csv_dir: Folder of the case-description CSVs.
        tops: First folder of every image path the CSVs name (see :func:`top_folder`).
        images_dir: The user's ``--images-dir``; when given it is the only layout tried.

    Raises:
        ValueError: none of the layouts holds any of ``tops``; the message names every folder tried and the flag
            that points at the right one.
    """
    tried = _candidates(csv_dir, images_dir)
    best: Optional[Layout] = None
    for root, description in tried:
        found = _count(root, tops)
        if best is None or found > best.found:
            best = Layout(root, description, found, len(tops))
        if found == len(tops):
            break
    if best is None or best.found == 0:
        raise ValueError(_not_found_message(csv_dir, tops, tried, images_dir))
    return best


def _not_found_message(csv_dir: Path, tops: set[str], tried: list[tuple[Path, str]],
                       images_dir: Optional[Path]) -> str:
    folders = "; ".join(str(root) for root, _ in tried)
    others = [] if images_dir is not None else _other_roots(csv_dir)
    hint = (f" Several folders hold image folders ({', '.join(map(str, others))}): choose one with --images-dir."
            if len(others) > 1 else "")
    if any((d / "jpeg").is_dir() or (d / "dicom_info.csv").is_file() for d in (csv_dir, csv_dir.parent)):
        hint += (" This looks like the JPEG re-packaging of CBIS-DDSM (jpeg/, dicom_info.csv), whose files the CSV "
                 "paths do not name: download the DICOMs from TCIA.")
    return (f"{csv_dir}: none of the {len(tops)} image folders the CBIS-DDSM CSVs name "
            "(Mass-Training_P_…, Calc-Test_P_…) was found; looked in: " + folders + ". Point --images-dir at the "
            "folder that holds them (the CBIS-DDSM/ folder the TCIA download creates)." + hint)
