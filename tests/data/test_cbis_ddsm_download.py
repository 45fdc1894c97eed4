"""CBIS-DDSM as it is downloaded: the original CSVs (excerpts), the TCIA tree beside them, duplicate views.

Expected numbers come from a plain reading of the CSV excerpts here (rows, distinct image paths, views listed in
both a mass and a calc CSV), not from the converter.
"""

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mammodetr.cli import main as cli_main
from mammodetr.data.converters import convert

FIXTURES = Path(__file__).parent / "fixtures" / "cbis_ddsm"


def _reference():
    """Rows, distinct images and duplicate views of the excerpts, read with the csv module alone."""
    rows, images, views = [], set(), defaultdict(set)
    for f in sorted(FIXTURES.glob("*.csv")):
        split = "test" if "test" in f.name else "train"
        with open(f, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                image = row["image file path"].strip()
                rows.append((split, row["pathology"]))
                images.add(image)
                views[(row["patient_id"], row["left or right breast"], row["image view"], split)].add(image)
    duplicates = {k: v for k, v in views.items() if len(v) > 1}
    return rows, images, duplicates


def _column(path, name):
    with open(path, newline="", encoding="utf-8") as fh:
        return [row[name] for row in csv.DictReader(fh)]


def _records_by_view(conv):
    out = defaultdict(list)
    for r in conv.records:
        out[(r.patient_id, r.laterality, r.view, r.official_split)].append(r)
    return out


def test_excerpts_keep_the_original_quirks():
    raw = (FIXTURES / "mass_case_description_train_set.csv").read_bytes()
    assert b"\r\n" in raw and b'.dcm\n"' in raw  # CRLF rows, quoted path cells ending in a newline
    header = (FIXTURES / "calc_case_description_test_set.csv").read_text().splitlines()[0]
    assert "breast density" in header and "breast_density" in (FIXTURES / "mass_case_description_test_set.csv"
                                                                ).read_text().splitlines()[0]
    rows, images, duplicates = _reference()
    # duplicates: P_00034 and P_00106 RIGHT (training), P_00202 RIGHT (test), CC and MLO each
    assert len(rows) == 82 and len(images) == 69 and len(duplicates) == 6


def test_views_of_both_collections_become_one_image(cbis_download):
    root = cbis_download()
    rows, images, duplicates = _reference()
    conv = convert("cbis-ddsm", root)
    assert conv.summary["duplicate_views_merged"] == len(duplicates) == 6
    assert len(conv.records) == len(images) - len(duplicates)
    assert sum(len(r.boxes) for r in conv.records) == len(rows)  # every abnormality kept its box
    assert "CBIS-DDSM/ folder beside the CSVs" in conv.summary["layout"]
    by_view = _records_by_view(conv)
    (p34,) = by_view[("P_00034", "R", "CC", "train")]  # mass abnormality 1 + calc abnormality 2
    assert sorted(b.lesion_type for b in p34.boxes) == ["calc", "mass"] and p34.label == "malignant"
    assert p34.extra["copies_merged"] == 2 and p34.extra["abnormality_types"] == ["calc", "mass"]
    (p106,) = by_view[("P_00106", "R", "CC", "train")]  # three masses (ids 2-4) and one calcification (id 1)
    assert len(p106.boxes) == 4 and p106.label == "benign"
    assert len(by_view[("P_00202", "R", "MLO", "test")]) == 1
    # the same view under two official splits is two images: the split is never merged away
    assert len(by_view[("P_00041", "L", "CC", "train")]) == len(by_view[("P_00041", "L", "CC", "test")]) == 1
    assert len(by_view[("P_00016", "L", "MLO", "train")]) == len(by_view[("P_00016", "L", "MLO", "test")]) == 1
    assert not [p for p in conv.problems if p.action != "note"]


def test_keep_duplicate_views_apart(cbis_download):
    root = cbis_download()
    rows, images, _ = _reference()
    conv = convert("cbis-ddsm", root, merge_duplicate_views=False)
    assert len(conv.records) == len(images) and conv.summary["duplicate_views_merged"] == 0
    assert conv.summary["duplicate_views"] == "kept apart"
    (mass, calc) = sorted(_records_by_view(conv)[("P_00034", "R", "CC", "train")], key=lambda r: r.key, reverse=True)
    assert [b.lesion_type for b in mass.boxes] == ["mass"] and [b.lesion_type for b in calc.boxes] == ["calc"]


def test_copies_of_different_sizes_are_not_merged(cbis_download):
    calc_copy = ("Calc-Training_P_00106_RIGHT_MLO/1.3.6.1.4.1.9590.100.1.2.285397839712946836108102340090893096750/"
                 "1.3.6.1.4.1.9590.100.1.2.178623233311793947517899818422469606660/000000.dcm")
    root = cbis_download(sizes={calc_copy: (50, 40)})
    conv = convert("cbis-ddsm", root)
    assert conv.summary["duplicate_views_merged"] == 5
    assert len(_records_by_view(conv)[("P_00106", "R", "MLO", "train")]) == 2
    notes = [p.line() for p in conv.problems if "kept apart" in p.what]
    assert len(notes) == 1 and notes[0].startswith("Mass-Training_P_00106_RIGHT_MLO")
    assert "the Calc- copy of this view (same patient, side, view and split) is 50x40 but this one 48x40" in notes[0]


def test_mask_path_naming_the_cropped_image(cbis_download, tmp_path):
    """The CSV's ROI path names the small cropped image; the full-size mask lies beside it."""
    root = cbis_download()
    folder = next((root / "CBIS-DDSM").glob("Calc-Test_P_00038_LEFT_CC_1/*/*"))
    small, full = folder / "000000.dcm", folder / "000001.dcm"  # the calc-test CSV: ROI = 000000, crop = 000001
    tmp = folder / "swap.tmp"
    small.rename(tmp), full.rename(small), tmp.rename(full)
    conv = convert("cbis-ddsm", root)
    lines = [p.line() for p in conv.problems]
    assert any("Calc-Test_P_00038_LEFT_CC_1" in ln and "used 000001.dcm" in ln and "(note)" in ln for ln in lines)
    rows, _, _ = _reference()
    assert sum(len(r.boxes) for r in conv.records) == len(rows)


def test_prepare_end_to_end_reports_merges_and_counts(cbis_download, capsys, tmp_path_factory):
    root = cbis_download()
    rows, images, duplicates = _reference()
    out = tmp_path_factory.mktemp("prepared")  # outside the download: prepare refuses an --out inside its input
    rc = cli_main(["prepare", "--source", "cbis-ddsm", "--input", str(root), "--out", str(out), "--workers", "1",
                   "--no-progress", "--max-side", "64"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("CBIS-DDSM images: paths relative to the CBIS-DDSM/ folder")
    assert "6 duplicate views merged" in printed
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["conversion"]["duplicate_views_merged"] == 6
    table = {row["split"]: row for row in report["counts"]["rows"]}
    n_train_rows = sum(split == "train" for split, _ in rows)
    assert table["train"]["boxes"]["total"] == n_train_rows
    assert table["test"]["boxes"]["total"] == len(rows) - n_train_rows
    assert table["total"]["images"]["total"] == len(images) - len(duplicates) == report["images_prepared"]
    malignant_rows = sum(p == "MALIGNANT" for _, p in rows)
    assert table["total"]["boxes"]["malignant"] == malignant_rows
    assert table["total"]["boxes"]["benign"] == len(rows) - malignant_rows
    patients = {pid for f in FIXTURES.glob("*.csv") for pid in _column(f, "patient_id")}
    assert table["total"]["patients"]["total"] == len(patients) == 27
    assert report["problems"] == []
    for line in ("split", "train", "test", "total"):
        assert any(ln.split()[:1] == [line] for ln in printed.splitlines())


@pytest.mark.parametrize("merge", [True, False])
def test_box_comes_from_the_mask_pixels(cbis_download, merge):
    root = cbis_download()
    conv = convert("cbis-ddsm", root, merge_duplicate_views=merge)
    rec = next(r for r in conv.records if r.key.startswith("Mass-Training_P_00001_LEFT_CC"))
    import pydicom

    mask_file = next((root / "CBIS-DDSM").glob("Mass-Training_P_00001_LEFT_CC_1/*/*/000001.dcm"))
    ys, xs = np.nonzero(pydicom.dcmread(mask_file).pixel_array)
    assert rec.boxes[0].as_list() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
