"""Shared by the viewer tests: a tiny trained checkpoint, a folder of synthetic exams, and a real ``serve`` process.

The data are made once per session: ``mammodetr synth`` (DICOM, five encodings) -> ``prepare`` -> ``split`` ->
one epoch of ``train`` on a tiny model. The served folder holds two DICOM exams (the second lacks its LMLO view)
and a PNG exam whose right breast is stored mirrored (chest wall on the image's left), so the hanging must flip
it. Each test module starts its own server on a free loopback port (``--port 0``) with a private TMPDIR.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_MODEL = [
    "--backbone", "test_convnext", "--pretrained", "none", "--image-size", "64", "--batch-size", "4",
    "--workers", "0", "--no-progress", "--set", "model.d_model=32", "--set", "model.nheads=4",
    "--set", "model.dec_layers=1", "--set", "model.dim_feedforward=64", "--set", "optim.warmup_epochs=0",
]


@dataclass
class ViewerData:
    checkpoint: Path
    exams: Path
    upload_dicom: Path
    raw: Path


def _mirrored_png(src: Path, dst: Path, mirror: bool) -> None:
    from mammodetr.data.image import to_uint16
    from mammodetr.data.io import read_image
    from mammodetr.data.png16 import write_png16

    pixels = read_image(src).pixels
    write_png16(dst, to_uint16(pixels[:, ::-1] if mirror else pixels))


@pytest.fixture(scope="session")
def viewer_data(tmp_path_factory) -> ViewerData:
    from mammodetr.cli import main as cli

    root = tmp_path_factory.mktemp("viewer")
    raw = root / "raw"
    assert cli(["synth", "--out", str(raw), "--patients", "3", "--size", "128", "104", "--format", "dicom",
                "--seed", "5", "--no-progress"]) == 0
    assert cli(["prepare", "--source", "csv", "--input", str(raw / "table.csv"), "--out", str(root / "ds"),
                "--workers", "1"]) == 0
    assert cli(["split", "--data", str(root / "ds"), "--seed", "0", "--fractions", "0.34", "0.33", "0.33"]) == 0
    assert cli(["train", "--data", str(root / "ds"), "--out", str(root / "run"), "--epochs", "1", *TINY_MODEL]) == 0
    exams = root / "exams"
    exams.mkdir()
    files = sorted((raw / "images").glob("*.dcm"))  # patient p: files 4p+1..4p+4 = RCC RMLO LCC LMLO
    for f in files[:7]:  # patients 1 and 2; patient 2 without its LMLO
        shutil.copy(f, exams / f.name)
    (exams / "png_case").mkdir()
    _mirrored_png(files[8], exams / "png_case" / "R_CC.png", mirror=True)  # stored with the chest wall left
    _mirrored_png(files[10], exams / "png_case" / "L_CC.png", mirror=False)
    return ViewerData(root / "run", exams, files[10], raw)
