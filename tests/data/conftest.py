"""Builders of public-dataset downloads around the real-format CSV fixtures (tests/data/fixtures, see SOURCE.md).

The CSVs are the datasets' own files (CBIS-DDSM excerpts) or layout-faithful samples (VinDr-Mammo); the DICOMs
they name are synthetic and tiny, written by :mod:`mammodetr.data.synth` at the paths the CSVs give.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from mammodetr.data.synth import make_dicom_dataset, write_dicom

FIXTURES = Path(__file__).parent / "fixtures"
CBIS_CSVS = ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv",
             "calc_case_description_train_set.csv", "calc_case_description_test_set.csv")
CBIS_SIZE = (48, 40)  # rows, columns of every stand-in mammogram (copies of one view must agree)


def write_dicom_array(path: Path, values: np.ndarray, seed: str) -> Path:
    """A synthetic DICOM holding ``values`` at ``path`` (folders created); ``seed`` fixes its UIDs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dicom(path, make_dicom_dataset(values, uid_seed=seed))


def cbis_mammogram(size: tuple[int, int], side: str) -> np.ndarray:
    """A bright breast against the chest-wall edge of a dark frame (so the breast crop finds it)."""
    img = np.zeros(size, np.uint16)
    h, w = size
    cols = slice(0, w * 3 // 4) if side == "LEFT" else slice(w // 4, w)
    img[2:h - 2, cols] = 30000
    return img


def cbis_mask(size: tuple[int, int], side: str, k: int) -> np.ndarray:
    """A rectangle inside the breast, placed by the abnormality's row number ``k``."""
    mask = np.zeros(size, np.uint16)
    x0 = (4 if side == "LEFT" else size[1] // 4 + 4) + (k % 4) * 3
    y0 = 6 + (k % 7) * 5
    mask[y0:y0 + 4, x0:x0 + 5] = 255
    return mask


def cbis_rows(folder: Path) -> list[tuple[str, dict]]:
    """``(csv name, row)`` for every row of the CBIS-DDSM CSVs in ``folder`` (path cells as written)."""
    out = []
    for name in CBIS_CSVS:
        if (folder / name).is_file():
            with open(folder / name, newline="", encoding="utf-8") as fh:
                out.extend((name, row) for row in csv.DictReader(fh))
    return out


def clean(cell: str) -> str:
    return cell.strip()


@pytest.fixture()
def cbis_download(tmp_path):
    """The four CSV excerpts beside a ``CBIS-DDSM/`` tree holding a stand-in DICOM for every path they name.

    Returns a function ``build(tree="CBIS-DDSM", sizes=None, skip=())`` that writes the tree under ``tmp_path/tree``
    (``sizes`` maps an image path to another size; image paths in ``skip`` are not written) and returns tmp_path.
    """

    def build(tree: str = "CBIS-DDSM", sizes: dict | None = None, skip=()) -> Path:
        for name in CBIS_CSVS:
            shutil.copyfile(FIXTURES / "cbis_ddsm" / name, tmp_path / name)
        root = tmp_path / tree
        for k, (_, row) in enumerate(cbis_rows(tmp_path)):
            image = clean(row["image file path"])
            if image in skip:
                continue
            side, size = row["left or right breast"], (sizes or {}).get(image, CBIS_SIZE)
            if not (root / image).is_file():
                write_dicom_array(root / image, cbis_mammogram(size, side), image)
            roi, crop = clean(row["ROI mask file path"]), clean(row["cropped image file path"])
            write_dicom_array(root / roi, cbis_mask(size, side, k), roi)
            if crop != roi:
                write_dicom_array(root / crop, np.full((6, 5), 900, np.uint16), crop)
        return tmp_path

    return build
