"""VinDr-Mammo in its published layout: both annotation tables (a layout-faithful sample, see
fixtures/SOURCE.md) and synthetic DICOMs at images/<study_id>/<image_id>.dicom, converted and prepared."""

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mammodetr.cli import main as cli_main
from mammodetr.data.converters import convert
from mammodetr.data.synth import make_dicom_dataset, write_dicom

FIXTURES = Path(__file__).parent / "fixtures" / "vindr_mammo"
FINDING_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                   "breast_birads", "breast_density", "finding_categories", "finding_birads", "xmin", "ymin", "xmax",
                   "ymax", "split"]


def _rows(name):
    with open(FIXTURES / name, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _mammogram(h, w, side):
    img = np.zeros((h, w), np.uint16)
    img[2:h - 2, : w * 3 // 4] = 30000  # a left breast against the left edge
    return img if side == "L" else img[:, ::-1].copy()


def _build(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("finding_annotations.csv", "breast-level_annotations.csv"):
        shutil.copyfile(FIXTURES / name, folder / name)
    for row in _rows("breast-level_annotations.csv"):
        path = folder / "images" / row["study_id"] / f"{row['image_id']}.dicom"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds = make_dicom_dataset(_mammogram(int(row["height"]), int(row["width"]), row["laterality"]),
                                laterality=row["laterality"], view=row["view_position"], uid_seed=row["image_id"])
        write_dicom(path, ds)
    return folder


# Per study (in file order): the label of its L CC, L MLO, R CC, R MLO image under the default rule (BI-RADS 4-5
# malignant), worked out by hand from the fixture's BI-RADS values.
EXPECTED_LABELS = [
    ["normal"] * 4,                                       # BI-RADS 1 both sides, no finding
    ["normal", "normal", "malignant", "malignant"],       # right masses BI-RADS 4
    ["malignant", "malignant", "benign", "benign"],       # left calcifications BI-RADS 5; right breast BI-RADS 2
    ["benign"] * 4,                                       # BI-RADS 2; skin thickening, lymph node (no BI-RADS)
    ["malignant", "malignant", "normal", "normal"],       # left breast BI-RADS 4 (distortion on MLO only)
    ["benign"] * 4,                                       # left masses BI-RADS 3; right BI-RADS 2
]


def test_sample_follows_the_published_layout():
    findings, breasts = _rows("finding_annotations.csv"), _rows("breast-level_annotations.csv")
    assert list(findings[0]) == FINDING_COLUMNS
    assert list(breasts[0]) == [c for c in FINDING_COLUMNS if c in breasts[0]] and "finding_birads" not in breasts[0]
    assert {r["image_id"] for r in findings} == {r["image_id"] for r in breasts} and len(breasts) == 24
    assert all(len(r["study_id"]) == len(r["image_id"]) == 32 for r in breasts)
    assert {r["split"] for r in breasts} == {"training", "test"}
    assert all(r["xmin"] == "" for r in findings if r["finding_categories"] == "['No Finding']")
    assert Counter(r["view_position"] for r in breasts) == {"CC": 12, "MLO": 12}


def test_convert_the_sample(tmp_path):
    conv = convert("vindr", _build(tmp_path / "vindr"))
    assert not conv.problems and len(conv.records) == 24
    by_key = {r.key: r for r in conv.records}
    order = [r["image_id"] for r in _rows("breast-level_annotations.csv")]
    assert [by_key[i].label for i in order] == [lab for study in EXPECTED_LABELS for lab in study]
    boxes = [b for r in conv.records for b in r.boxes]
    assert Counter(b.pathology for b in boxes) == {"malignant": 5, "benign": 3, None: 2}
    assert len({r.patient_id for r in conv.records}) == 6
    assert Counter(r.official_split for r in conv.records) == {"train": 16, "test": 8}
    assert "images under" in conv.summary["layout"]


def test_prepare_the_sample_end_to_end(tmp_path, capsys):
    root = _build(tmp_path / "vindr")
    out = tmp_path / "prepared"
    assert cli_main(["prepare", "--source", "vindr", "--input", str(root), "--out", str(out), "--workers", "1",
                     "--no-progress"]) == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["problems"] == []
    table = {row["split"]: row for row in report["counts"]["rows"]}
    assert table["train"]["images"] == {"total": 16, "normal": 6, "benign": 6, "malignant": 4}
    assert table["test"]["images"] == {"total": 8, "normal": 2, "benign": 4, "malignant": 2}
    assert table["total"]["patients"] == {"total": 6, "normal": 1, "benign": 2, "malignant": 3}
    assert table["total"]["boxes"] == {"total": 10, "benign": 3, "malignant": 5, "unknown": 2}
    printed = capsys.readouterr().out
    assert "VinDr-Mammo: table" in printed and "duplicate views merged" not in printed


def test_image_missing_from_the_findings_table_is_added_from_the_breast_level_table(tmp_path):
    root = _build(tmp_path / "vindr")
    dropped = _rows("breast-level_annotations.csv")[9]["image_id"]  # a malignant left MLO (BI-RADS 5 breast)
    kept = [r for r in _rows("finding_annotations.csv") if r["image_id"] != dropped]
    with open(root / "finding_annotations.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FINDING_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    conv = convert("vindr", root)
    rec = next(r for r in conv.records if r.key == dropped)
    assert rec.label == "malignant" and rec.boxes == []
    (problem,) = conv.problems
    assert problem.where == "breast-level_annotations.csv row 11" and "not in finding_annotations.csv" in problem.what


def test_wget_layout_is_found_and_a_wrong_folder_is_explained(tmp_path):
    _build(tmp_path / "physionet.org" / "files" / "vindr-mammo" / "1.0.0")
    conv = convert("vindr", tmp_path)
    assert len(conv.records) == 24
    with pytest.raises(ValueError, match="physionet.org/files/vindr-mammo/1.0.0/"):
        convert("vindr", tmp_path / "physionet.org" / "files")


def test_no_image_at_all_stops_before_preparing(tmp_path, capsys):
    root = _build(tmp_path / "vindr")
    shutil.rmtree(root / "images")
    rc = cli_main(["prepare", "--source", "vindr", "--input", str(root), "--out", str(tmp_path / "out")])
    assert rc == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert f"none of the 24 images the vindr table names was found under {root / 'images'}" in err
    assert "--images-dir" in err and len(err.strip().splitlines()) == 1
