"""The SR document itself: valid for dciodvfy, readable by highdicom, never written over an existing file."""

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from mammodetr.data.preprocess import PrepareOptions
from mammodetr.inference.predictions import Prediction
from mammodetr.sr import AlgorithmInfo, build_sr, read_source, write_sr
from mammodetr.sr.writer import _write_new, box_polyline

from .conftest import SHA, scripted_predictor


def _prediction(path, boxes, scores, p=0.4321):
    return Prediction(str(path), p, np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float))


@pytest.fixture()
def predictor(synth_dicoms):
    return scripted_predictor(synth_dicoms[:1], PrepareOptions(), False)[0]


def test_highdicom_reads_the_report_back(synth_dicoms, predictor, tmp_path):
    src = pydicom.dcmread(synth_dicoms[0])
    pred = _prediction(synth_dicoms[0], [[10, 20, 50.5, 60.25], [0, 0, 128, 160]], [0.7, 0.2], p=0.123456)
    sr = hd.sr.srread(write_sr(synth_dicoms[0], pred, predictor, tmp_path))
    assert isinstance(sr, hd.sr.ComprehensiveSR) and isinstance(sr.content, hd.sr.MeasurementReport)
    assert sr.get_evidence() == [(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID, src.SOPClassUID)]
    (image,) = sr.content.get_image_measurement_groups(referenced_sop_instance_uid=src.SOPInstanceUID)
    (m,) = image.get_measurements()
    assert (m.name.value, m.unit.value) == ("111047", "%") and abs(float(m.value) - 12.3456) <= 0.01
    (roi,) = sr.content.get_planar_roi_measurement_groups(referenced_sop_instance_uid=src.SOPInstanceUID)
    np.testing.assert_allclose(roi.roi.value, box_polyline([10, 20, 50.5, 60.25]), atol=1e-4)
    assert roi.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    laterality = image.finding_sites[0].laterality
    assert laterality.meaning == {"L": "Left", "R": "Right"}[src.ImageLaterality]


@pytest.mark.parametrize("boxes,scores", [([[10, 20, 50, 60], [30.25, 40.5, 90, 120]], [0.9, 0.8]), ([], [])])
def test_sr_passes_dciodvfy(synth_dicoms, predictor, tmp_path, boxes, scores):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian/Ubuntu: apt-get install -y dicom3tools); SR not validated")
    path = write_sr(synth_dicoms[0], _prediction(synth_dicoms[0], boxes, scores), predictor, tmp_path)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    assert any("ComprehensiveSR" in line for line in lines), lines  # it recognised the IOD it checked
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(lines)


def test_an_existing_file_is_never_written_over(tmp_path, synth_dicoms, predictor):
    target = tmp_path / "x.dcm"
    target.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="exists; not overwritten"):
        _write_new(target, b"new")
    assert target.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["x.dcm"]
    pred = _prediction(synth_dicoms[0], [[1, 2, 3, 4]], [0.9])
    a, b = (write_sr(synth_dicoms[0], pred, predictor, tmp_path / "sr") for _ in range(2))
    assert a != b and a.is_file() and b.is_file()  # a second SR of the same image is a new instance


def test_boxes_that_do_not_fit_the_image_are_refused(synth_dicoms, predictor, tmp_path):
    src = pydicom.dcmread(synth_dicoms[0], stop_before_pixels=True)
    far = [[0, 0, src.Columns + 5, 10]]
    with pytest.raises(ValueError, match="do not lie inside this 128x160 image"):
        write_sr(synth_dicoms[0], _prediction(synth_dicoms[0], far, [0.9]), predictor, tmp_path)
    assert not list(tmp_path.iterdir())


def test_non_dicom_and_missing_files_are_one_line(tmp_path, predictor):
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ValueError, match="a.png: not a DICOM file"):
        write_sr(png, _prediction(png, [], []), predictor, tmp_path / "sr")
    with pytest.raises(OSError):
        read_source(tmp_path / "missing.dcm")


def test_a_multi_frame_source_references_the_frame_that_was_read(synth_dicoms):
    source = read_source(synth_dicoms[0])
    source = type(source)(source.path, source.dataset, source.rows, source.columns, 3, source.laterality)
    sr = hd.sr.ComprehensiveSR.from_dataset(build_sr(
        source, _prediction(synth_dicoms[0], [[1, 2, 30, 40]], [0.9]), AlgorithmInfo(model_sha256=SHA), min_score=0.5,
        frame=1))
    (roi,) = sr.content.get_planar_roi_measurement_groups()
    assert roi.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber == 2


def test_an_invalid_header_value_is_named_but_never_quoted(synth_dicoms, predictor, tmp_path, caplog, recwarn,
                                                           capsys):
    ds = pydicom.dcmread(synth_dicoms[0])
    with pydicom.config.disable_value_validation():
        ds.PatientBirthDate = "1961-02-03"  # not a DICOM date (YYYYMMDD)
    ds.save_as(tmp_path / "odd.dcm")
    caplog.clear()
    with pytest.raises(ValueError) as info:
        write_sr(tmp_path / "odd.dcm", _prediction(tmp_path / "odd.dcm", [], []), predictor, tmp_path / "sr")
    assert str(info.value) == (f"{tmp_path / 'odd.dcm'}: no SR written: the source header has invalid "
                               "PatientBirthDate (ValueError; values are not shown)")
    seen = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records] + list(capsys.readouterr())
    assert not any("1961" in text for text in seen), seen
    assert not (tmp_path / "sr").exists()
