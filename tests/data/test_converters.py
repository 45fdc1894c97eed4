"""Converters on tiny fixtures written in each source's own format (see shared/reference/datasets.md)."""

import csv
import json

import numpy as np
import pytest

from mammodetr.data.converters import convert
from mammodetr.data.converters.mias import circle_to_box_xyxy, parse_row
from mammodetr.data.converters.vindr import parse_birads, parse_categories


def _by_key(conv):
    return {r.key: r for r in conv.records}


def _boxes(rec):
    return [b.as_list() for b in rec.boxes]


# ----------------------------------------------------------------------------------------------- MIAS
MIAS_INFO = """\
The Mammographic Image Analysis Society database  (mini-MIAS)
1st column: MIAS database reference number.
2nd column: Character of background tissue: F Fatty  G Fatty-glandular  D Dense-glandular
Note: The list is arranged in pairs of films, where each pair represents the left (even filename
numbers) and right mammograms (odd filename numbers) of a single patient.

mdb001 G CIRC B 535 425 197
mdb002 G CIRC B 522 280 69
mdb003 D NORM\x20
mdb004 D NORM\x20
mdb005 F CIRC B 477 133 30
mdb005 F CIRC B 500 168 26
mdb006 F NORM\x20
mdb010 F CIRC B 10 1020 30
mdb212 G CALC B *NOTE 3*
mdb216 D CALC M 480 ... bad
mdb219 G CALC B
mdb223 D CALC B 523 482 29
mdb223 D CALC M 591 529 6
mdb300 F SPIC
=========================
"""


@pytest.fixture()
def mias_dir(tmp_path):
    (tmp_path / "Info.txt").write_text(MIAS_INFO, encoding="latin-1")
    for n in (1, 2, 3, 4, 5, 6, 10, 212, 216, 219, 223, 300):
        (tmp_path / f"mdb{n:03d}.pgm").write_bytes(b"P5\n1 1\n255\n\x00")
    return tmp_path


def test_mias_rows_origin_and_patients(mias_dir):
    conv = convert("mias", mias_dir)
    recs = _by_key(conv)
    # 12 REFNUMs; mdb300 (abnormal class without severity) has nothing usable and is reported
    assert set(recs) == {f"mdb{n:03d}" for n in (1, 2, 3, 4, 5, 6, 10, 212, 216, 219, 223)}
    # bottom-left origin: row = 1024 - Y; square around the circle
    assert _boxes(recs["mdb001"]) == [[535 - 197, 1024 - 425 - 197, 535 + 197, 1024 - 425 + 197]]
    assert recs["mdb001"].label == "benign" and recs["mdb001"].boxes[0].pathology == "benign"
    # trailing-space NORM rows
    assert recs["mdb003"].label == "normal" and recs["mdb003"].boxes == []
    # repeated REFNUM = several lesions of one image
    assert _boxes(recs["mdb005"]) == [[447, 861, 507, 921], [474, 830, 526, 882]]
    # clipped to the 1024 x 1024 image
    assert _boxes(recs["mdb010"]) == [[0, 0, 40, 34]]
    # *NOTE 3* and missing coordinates: a label, no box
    assert recs["mdb212"].label == "benign" and recs["mdb212"].boxes == []
    assert recs["mdb219"].label == "benign" and recs["mdb219"].boxes == []
    # mixed severities -> malignant image, each box keeps its own pathology
    assert recs["mdb223"].label == "malignant"
    assert [b.pathology for b in recs["mdb223"].boxes] == ["benign", "malignant"]
    # pairs are one woman; odd = right, even = left; all MLO
    assert recs["mdb001"].patient_id == recs["mdb002"].patient_id != recs["mdb003"].patient_id
    assert recs["mdb003"].patient_id == recs["mdb004"].patient_id
    assert (recs["mdb001"].laterality, recs["mdb002"].laterality) == ("R", "L")
    assert {r.view for r in conv.records} == {"MLO"}
    assert recs["mdb001"].image_path == mias_dir / "mdb001.pgm"
    lines = [p.line() for p in conv.problems]
    assert any("mdb300" in ln and "without severity" in ln for ln in lines)
    assert any("mdb216" in ln and "unreadable coordinates" in ln for ln in lines)
    assert all("\n" not in ln for ln in lines)


def test_mias_info_file_path_and_parser_details(mias_dir):
    conv = convert("mias", mias_dir / "Info.txt")
    assert len(conv.records) == 11
    assert parse_row("The Mammographic Image Analysis Society database") is None
    assert parse_row("mdb003 D NORM ") == {"number": 3, "background": "D", "cls": "NORM", "severity": None,
                                           "xyr": None, "note": ""}
    assert circle_to_box_xyxy(1000, 10, 50) == (950, 964, 1024, 1024)


def test_mias_without_table_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here\n")
    with pytest.raises(ValueError, match="no MIAS data rows"):
        convert("mias", tmp_path)


# ------------------------------------------------------------------------------------------ CBIS-DDSM
def _write_dicom(path, arr):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 if arr.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


MASS_HEADER = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
               "image file path", "cropped image file path", "ROI mask file path"]
CALC_HEADER = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
               "image file path", "cropped image file path", "ROI mask file path"]


@pytest.fixture()
def cbis_dir(tmp_path):
    full = np.full((40, 30), 1000, np.uint16)

    def mask(box, shape=(40, 30)):
        m = np.zeros(shape, np.uint8)
        x1, y1, x2, y2 = box
        m[y1:y2, x1:x2] = 255
        return m

    _write_dicom(tmp_path / "Mass-Training_P_00001_LEFT_CC/1.3.1/1.3.2/000000.dcm", full)
    _write_dicom(tmp_path / "Mass-Training_P_00001_LEFT_CC_1/1.3.3/1.3.4/000000.dcm", mask((3, 4, 10, 12)))
    _write_dicom(tmp_path / "Mass-Training_P_00001_LEFT_CC_2/1.3.5/1.3.6/000000.dcm", mask((20, 25, 28, 39)))
    _write_dicom(tmp_path / "Mass-Test_P_00002_RIGHT_MLO/1.4.1/1.4.2/000000.dcm", full)
    _write_dicom(tmp_path / "Mass-Test_P_00002_RIGHT_MLO_1/1.4.3/1.4.4/000000.dcm", mask((1, 1, 5, 5), (20, 15)))
    _write_dicom(tmp_path / "Calc-Training_P_00003_LEFT_MLO/1.5.1/1.5.2/000000.dcm", full)
    # the download tree names the mask file differently from the CSV; it is the only full-size DICOM there
    _write_dicom(tmp_path / "Calc-Training_P_00003_LEFT_MLO_1/1.5.3/1.5.4/1-2.dcm", mask((5, 6, 7, 9)))
    _write_dicom(tmp_path / "Calc-Training_P_00003_LEFT_MLO_1/1.5.3/1.5.4/1-1.dcm", np.zeros((4, 3), np.uint8))

    def write(name, header, rows):
        with open(tmp_path / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)

    write("mass_case_description_train_set.csv", MASS_HEADER, [
        ["P_00001", "3", "LEFT", "CC", "1", "mass", "OVAL", "CIRCUMSCRIBED", "4", "MALIGNANT", "5",
         "Mass-Training_P_00001_LEFT_CC/1.3.1/1.3.2/000000.dcm\n", "x/000001.dcm",
         "Mass-Training_P_00001_LEFT_CC_1/1.3.3/1.3.4/000000.dcm  \n"],
        ["P_00001", "3", "LEFT", "CC", "2", "mass", "ROUND", "CIRCUMSCRIBED", "3", "BENIGN_WITHOUT_CALLBACK", "3",
         "  Mass-Training_P_00001_LEFT_CC/1.3.1/1.3.2/000000.dcm", "x/000001.dcm",
         "Mass-Training_P_00001_LEFT_CC_2/1.3.5/1.3.6/000000.dcm\r\n"],
        ["P_00009", "2", "LEFT", "CC", "1", "mass", "ROUND", "CIRCUMSCRIBED", "3", "BENIGN", "3",
         "Mass-Training_P_00009_LEFT_CC/9/9/000000.dcm", "x", "Mass-Training_P_00009_LEFT_CC_1/9/9/000000.dcm"],
    ])
    write("mass_case_description_test_set.csv", MASS_HEADER, [
        ["P_00002", "2", "RIGHT", "MLO", "1", "mass", "OVAL", "ILL_DEFINED", "4", "BENIGN", "2",
         "Mass-Test_P_00002_RIGHT_MLO/1.4.1/1.4.2/000000.dcm", "x",
         "Mass-Test_P_00002_RIGHT_MLO_1/1.4.3/1.4.4/000000.dcm"],
    ])
    write("calc_case_description_train_set.csv", CALC_HEADER, [
        ["P_00003", "4", "LEFT", "MLO", "1", "calcification", "PLEOMORPHIC", "CLUSTERED", "4", "BENIGN", "2",
         "Calc-Training_P_00003_LEFT_MLO/1.5.1/1.5.2/000000.dcm\n",
         "Calc-Training_P_00003_LEFT_MLO_1/1.5.3/1.5.4/000000.dcm",
         "Calc-Training_P_00003_LEFT_MLO_1/1.5.3/1.5.4/000001.dcm\n"],
    ])
    write("calc_case_description_test_set.csv", CALC_HEADER, [])
    return tmp_path


def test_cbis_masks_densities_paths_and_split(cbis_dir):
    conv = convert("cbis-ddsm", cbis_dir)
    recs = {r.patient_id: r for r in conv.records}
    assert set(recs) == {"P_00001", "P_00002", "P_00003"}
    p1 = recs["P_00001"]  # two abnormalities of one image, paths with newlines/spaces cleaned
    assert p1.label == "malignant" and p1.official_split == "train"
    assert (p1.laterality, p1.view) == ("L", "CC")
    assert _boxes(p1) == [[3, 4, 10, 12], [20, 25, 28, 39]]
    assert [b.pathology for b in p1.boxes] == ["malignant", "benign"]  # BENIGN_WITHOUT_CALLBACK = benign
    assert p1.extra["breast_density"] == "3"
    p3 = recs["P_00003"]  # calc CSV: "breast density" spelling; mask found under the renamed file
    assert p3.extra["breast_density"] == "4" and p3.label == "benign"
    assert _boxes(p3) == [[5, 6, 7, 9]]
    p2 = recs["P_00002"]  # mis-sized mask: reported, box skipped, never rescaled
    assert p2.official_split == "test" and p2.label == "benign" and p2.boxes == []
    lines = [p.line() for p in conv.problems]
    assert any("Mass-Test_P_00002_RIGHT_MLO_1" in ln and "20x15" in ln and "40x30" in ln for ln in lines)
    assert any("P_00009" in ln and "image file not found" in ln for ln in lines)
    assert all("\n" not in ln for ln in lines)


def test_cbis_missing_csvs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="case-description"):
        convert("cbis-ddsm", tmp_path)


# ------------------------------------------------------------------------------------------- VinDr
VINDR_HEADER = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                "breast_birads", "breast_density", "finding_categories", "finding_birads", "xmin", "ymin",
                "xmax", "ymax", "split"]


@pytest.fixture()
def vindr_dir(tmp_path):
    rows = [
        ["s1", "se1", "i1", "L", "CC", 100, 80, "BI-RADS 1", "DENSITY C", "['No Finding']", "", "", "", "", "",
         "training"],
        ["s1", "se1", "i2", "R", "MLO", 100, 80, "BI-RADS 4", "DENSITY C", "['Mass']", "BI-RADS 4",
         "10.5", "20", "30", "40.25", "training"],
        ["s1", "se1", "i2", "R", "MLO", 100, 80, "BI-RADS 4", "DENSITY C",
         "['Suspicious Calcification', 'Mass']", "BI-RADS 3", "50", "50", "60", "70", "training"],
        ["s2", "se2", "i3", "L", "MLO", 100, 80, "BI-RADS 3", "DENSITY B", "['Asymmetry']", "BI-RADS 3",
         "1", "2", "3", "4", "test"],
        ["s2", "se2", "i4", "R", "CC", 100, 80, "BI-RADS 5", "DENSITY B", "['No Finding']", "", "", "", "", "",
         "test"],
    ]
    with open(tmp_path / "finding_annotations.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(VINDR_HEADER)
        w.writerows(rows)
    return tmp_path


def test_vindr_default_rule(vindr_dir):
    conv = convert("vindr", vindr_dir)
    recs = _by_key(conv)
    assert recs["i1"].label == "normal" and recs["i1"].boxes == []
    assert recs["i2"].label == "malignant"
    assert _boxes(recs["i2"]) == [[10.5, 20, 30, 40.25], [50, 50, 60, 70]]
    assert [b.pathology for b in recs["i2"].boxes] == ["malignant", "benign"]
    assert recs["i2"].boxes[1].lesion_type == "Suspicious Calcification, Mass"
    assert recs["i3"].label == "benign"
    assert recs["i4"].label == "malignant"  # breast BI-RADS 5 without a box
    assert recs["i1"].patient_id == recs["i2"].patient_id == "s1"  # study = patient group
    assert recs["i2"].study_id == "s1"
    assert (recs["i1"].official_split, recs["i3"].official_split) == ("train", "test")
    assert recs["i2"].image_path == vindr_dir / "images" / "s1" / "i2.dicom"
    assert (recs["i2"].laterality, recs["i2"].view) == ("R", "MLO")


def test_vindr_rule_is_configurable(vindr_dir):
    recs = _by_key(convert("vindr", vindr_dir, positive_birads=(5,)))
    assert recs["i2"].label == "benign"
    assert [b.pathology for b in recs["i2"].boxes] == ["benign", "benign"]
    assert recs["i4"].label == "malignant"
    recs = _by_key(convert("vindr", vindr_dir, positive_birads=(3, 4, 5)))
    assert recs["i3"].label == "malignant"
    with pytest.raises(ValueError, match="BI-RADS"):
        convert("vindr", vindr_dir, positive_birads=(9,))


def test_vindr_parsers():
    assert parse_categories("['Suspicious Calcification', 'Mass']") == ["Suspicious Calcification", "Mass"]
    assert parse_categories("['No Finding']") == ["No Finding"]
    assert parse_categories("__import__('os')") == ["__import__('os')"]  # never evaluated
    assert parse_birads("BI-RADS 4") == 4 and parse_birads("") is None


# -------------------------------------------------------------------------------------------- COCO
def test_coco_extras_labels_and_duplicates(tmp_path):
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 10, "height": 10, "patient_id": "pa", "label": "malignant",
             "laterality": "LEFT", "view": "cc", "split": "test"},
            {"id": 2, "file_name": "b.png", "width": 10, "height": 10, "patient_id": "pa"},
            {"id": 3, "file_name": "c.png", "width": 10, "height": 10},
            {"id": 3, "file_name": "d.png", "width": 10, "height": 10},
            {"id": 4, "file_name": "e.png", "width": 10, "height": 10, "patient_id": "pb"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "pathology": "malignant"},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [2, 2, 2, 2]},
            {"id": 3, "image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1]},
            {"id": 4, "image_id": 4, "category_id": 3, "bbox": [0, 0, 1, 1]},
        ],
        "categories": [{"id": 1, "name": "lesion"}, {"id": 2, "name": "benign"}, {"id": 3, "name": "mass"}],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    conv = convert("coco", path)
    recs = _by_key(conv)
    assert set(recs) == {"1", "2", "3"}
    assert recs["1"].label == "malignant" and _boxes(recs["1"]) == [[1, 2, 4, 6]]
    assert (recs["1"].laterality, recs["1"].view, recs["1"].official_split) == ("L", "CC", "test")
    assert recs["2"].label == "benign"  # from the category name
    assert recs["3"].label == "normal" and recs["3"].image_path == tmp_path / "c.png"
    lines = [p.line() for p in conv.problems]
    assert any("duplicate image id 3" in ln for ln in lines)
    assert any("unknown image id 99" in ln for ln in lines)
    assert any("image 4" in ln and "no image label" in ln for ln in lines)
    assert any("without patient_id" in ln for ln in lines)


def test_coco_not_coco_is_an_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO"):
        convert("coco", path)


# --------------------------------------------------------------------------------------------- CSV
def test_csv_rows_boxes_and_bad_rows(tmp_path):
    rows = [
        ["image_path", "patient_id", "label", "laterality", "view", "study_id", "x1", "y1", "x2", "y2",
         "lesion_label", "split"],
        ["img/a.png", "p1", "malignant", "L", "CC", "st1", "1", "2", "3", "4", "malignant", "train"],
        ["img/a.png", "p1", "malignant", "L", "CC", "st1", "5", "6", "7", "8", "", "train"],
        ["img/b.png", "p1", "normal", "R", "MLO", "st1", "", "", "", "", "", "test"],
        ["img/c.png", "p2", "benign", "", "", "", "1", "1", "nan", "4", "", ""],
        ["img/d.png", "p3", "cancer", "", "", "", "", "", "", "", "", ""],
        ["img/e.png", "p3", "benign", "", "", "", "1", "", "3", "4", "", ""],
        ["img/f.png", "p4", "benign", "", "", "", "", "", "", "", "", ""],
        ["img/f.png", "p5", "benign", "", "", "", "", "", "", "", "", ""],
    ]
    path = tmp_path / "table.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    conv = convert("csv", path)
    recs = _by_key(conv)
    assert set(recs) == {"img/a.png", "img/b.png", "img/c.png", "img/e.png"}
    a = recs["img/a.png"]
    assert a.image_path == tmp_path / "img" / "a.png"
    assert _boxes(a) == [[1, 2, 3, 4], [5, 6, 7, 8]] and [b.pathology for b in a.boxes] == ["malignant", None]
    assert (a.laterality, a.view, a.study_id, a.official_split) == ("L", "CC", "st1", "train")
    assert recs["img/b.png"].boxes == [] and recs["img/b.png"].official_split == "test"
    assert np.isnan(recs["img/c.png"].boxes[0].x2)  # NaN kept: prepare reports and skips it
    assert recs["img/c.png"].boxes[0].pathology == "benign"  # a benign image's boxes are benign
    assert recs["img/e.png"].boxes == []
    lines = [p.line() for p in conv.problems]
    assert any("row 6" in ln and "'cancer'" in ln for ln in lines)
    assert any("row 7" in ln and "incomplete box" in ln for ln in lines)
    assert any("img/f.png" in ln and "different patient_id" in ln for ln in lines)
    assert not any("p1" in ln or "p4" in ln for ln in lines)  # problems name rows/files, not patients


def test_csv_missing_column_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_path,label\na.png,normal\n")
    with pytest.raises(ValueError, match="missing required column.*patient_id"):
        convert("csv", path)


def test_unknown_source():
    with pytest.raises(ValueError, match="choose one of coco, csv, mias, cbis-ddsm, vindr"):
        convert("ddsm", ".")


def test_check_images_found(tmp_path):
    from mammodetr.data.converters import check_images_found

    (tmp_path / "t.csv").write_text("image_path,patient_id,label\nP1/a.png,P1,normal\nP2/b.png,P2,benign\n")
    conv = convert("csv", tmp_path / "t.csv")
    with pytest.raises(ValueError, match="none of the 2 images the csv table names was found under") as err:
        check_images_found(conv, tmp_path / "t.csv")
    assert "P1" not in str(err.value).replace(str(tmp_path), "") and "--images-dir" in str(err.value)
    (tmp_path / "P2").mkdir()
    (tmp_path / "P2" / "b.png").write_bytes(b"")
    check_images_found(conv, tmp_path / "t.csv")  # one file is there: the run goes on and reports the rest
