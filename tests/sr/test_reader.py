"""read_sr: our SRs come back as written; anything else is one clear line."""

import numpy as np
import pydicom
import pytest

from mammodetr.data.preprocess import PrepareOptions
from mammodetr.inference.predictions import Prediction
from mammodetr.sr import format_findings, read_sr, write_sr

from .conftest import SHA, scripted_predictor


@pytest.fixture(scope="module")
def written(synth_dicoms, tmp_path_factory):
    predictor = scripted_predictor(synth_dicoms[:1], PrepareOptions(), False)[0]
    pred = Prediction(str(synth_dicoms[0]), 0.87654, np.array([[5.5, 6.25, 40, 50], [60, 70, 100, 150], [1, 1, 2, 2]]),
                      np.array([0.95, 0.51, 0.3]))
    return write_sr(synth_dicoms[0], pred, predictor, tmp_path_factory.mktemp("sr")), pred


def test_findings_round_trip(written, synth_dicoms):
    path, pred = written
    src = pydicom.dcmread(synth_dicoms[0], stop_before_pixels=True)
    f = read_sr(path)
    assert abs(f.p_malignant - pred.p_malignant) <= 1e-4
    assert [r.score for r in f.regions] == pytest.approx([0.95, 0.51])
    np.testing.assert_allclose([r.box_xyxy for r in f.regions], pred.boxes_xyxy_px[:2], atol=1e-4)
    assert (f.source_sop_class_uid, f.source_sop_instance_uid) == (src.SOPClassUID, src.SOPInstanceUID)
    assert f.study_instance_uid == src.StudyInstanceUID and f.verification_flag == "UNVERIFIED"
    assert f.algorithm["name"] == "mammodetr" and f.algorithm["model_sha256"] == SHA
    text = format_findings(f)
    assert "malignancy probability: 87.65 %" in text and "score 95.00 %" in text
    assert str(src.PatientID) not in text and str(src.PatientID) not in str(f.to_dict())  # nothing identifying


def test_files_that_are_not_our_srs_are_one_line(written, synth_dicoms, tmp_path):
    path, _ = written
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"x.txt: not a DICOM SR written by mammodetr \(not a DICOM file\)"):
        read_sr(tmp_path / "x.txt")
    with pytest.raises(ValueError, match=r"not a Comprehensive SR; Modality MG"):
        read_sr(synth_dicoms[0])
    ds = pydicom.dcmread(path)
    for item in ds.ContentSequence:  # rename the algorithm: someone else's TID 1500 report
        for child in item.get("ContentSequence", []):
            for grandchild in child.get("ContentSequence", []):
                if grandchild.ValueType == "TEXT" and grandchild.TextValue == "mammodetr":
                    grandchild.TextValue = "other-cad"
    ds.save_as(tmp_path / "other.dcm")
    with pytest.raises(ValueError, match=r"made by another algorithm: other-cad"):
        read_sr(tmp_path / "other.dcm")
