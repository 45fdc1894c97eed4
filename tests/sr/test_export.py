"""predict's SR stream on raw DICOMs: every SR points at its source, and its regions equal the predictions file's
boxes and the boxes planted in the model, in the ORIGINAL pixels, through crop, flip, resize and letterbox."""

import json
import logging
import sys

import numpy as np
import pydicom
import pytest

from mammodetr.data.preprocess import PrepareOptions
from mammodetr.inference.predictions import read_predictions, write_predictions
from mammodetr.sr import SRExporter
from mammodetr.sr.concepts import RESEARCH_ONLY

from .conftest import SHA, scripted_predictor

OPTIONS = PrepareOptions(flip_to="L", max_side=96)  # crop (default) + right breasts flipped + downscale


def _run(paths, out, tmp_path, letterbox=False, options=OPTIONS, sr_dir=None):
    """What ``mammodetr predict --dicom-sr`` does: stream results through the SR exporter into the JSONL file."""
    predictor, planted, transforms = scripted_predictor([p for p in paths if p.suffix == ".dcm"], options, letterbox)
    exporter = SRExporter(sr_dir or tmp_path / "sr", predictor)
    write_predictions(out, (r.result for r in exporter.stream(predictor.iter_files(paths))))
    return exporter, planted, transforms


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _regions_by_pydicom(ds):
    """(graphic data (N, 2), referenced SOP class, referenced SOP instance) of every SCOORD, read with plain pydicom."""
    out = []
    for item in _walk(ds.ContentSequence):
        if item.ValueType == "SCOORD":
            ref = item.ContentSequence[0].ReferencedSOPSequence[0]
            out.append((np.asarray(item.GraphicData, float).reshape(-1, 2), ref.ReferencedSOPClassUID,
                        ref.ReferencedSOPInstanceUID, item.GraphicType))
    return out


def _percent(ds, code_value):
    return [float(i.MeasuredValueSequence[0].NumericValue) for i in _walk(ds.ContentSequence)
            if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == code_value]


@pytest.mark.parametrize("letterbox", [False, True])
def test_sr_regions_are_the_predicted_boxes_in_original_pixels(synth_dicoms, tmp_path, letterbox):
    out = tmp_path / "pred.jsonl"
    _, planted, transforms = _run(synth_dicoms, out, tmp_path, letterbox)
    preds = read_predictions(out).by_name
    assert len(preds) == len(synth_dicoms)
    photometrics, flipped, series = set(), 0, {}
    for path in synth_dicoms:
        src = pydicom.dcmread(path)
        pred = preds[str(path)]
        sr_path = pred.extra["dicom_sr"]
        ds = pydicom.dcmread(sr_path)
        photometrics.add(src.PhotometricInterpretation)
        flipped += transforms[path].flipped
        # references: same study, new series and instance, the source in the evidence and in every region
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and ds.Modality == "SR"
        assert sr_path.endswith(f"{ds.SOPInstanceUID}.dcm")
        ev = ds.CurrentRequestedProcedureEvidenceSequence[0]
        ref = ev.ReferencedSeriesSequence[0]
        assert ev.StudyInstanceUID == src.StudyInstanceUID and ref.SeriesInstanceUID == src.SeriesInstanceUID
        assert (ref.ReferencedSOPSequence[0].ReferencedSOPClassUID,
                ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
        regions = _regions_by_pydicom(ds)
        keep = pred.scores >= 0.5
        assert keep.sum() == 2 == len(regions)  # the decoy (score 0.12) is left out
        for (xy, cls, uid, kind), box, want in zip(regions, pred.boxes_xyxy_px[keep], planted[path]):
            assert (cls, uid, kind) == (src.SOPClassUID, src.SOPInstanceUID, "POLYLINE")
            assert len(xy) == 5 and (xy[0] == xy[-1]).all()
            got = np.r_[xy.min(0), xy.max(0)]
            np.testing.assert_allclose(got, box, atol=0.5)  # the predictions file's box
            np.testing.assert_allclose(got, want, atol=0.5)  # the box planted in the original pixels
        (p,) = _percent(ds, "111047")
        assert abs(p - 100 * pred.p_malignant) <= 0.01
        np.testing.assert_allclose(sorted(_percent(ds, "111012")), sorted(100 * pred.scores[keep]), atol=0.01)
        series.setdefault(ds.StudyInstanceUID, []).append((ds.SeriesInstanceUID, int(ds.InstanceNumber)))
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert len(series) == 2  # two patients: each study's SRs share one new series, numbered 1..4
    for entries in series.values():
        assert len({uid for uid, _ in entries}) == 1 and sorted(n for _, n in entries) == [1, 2, 3, 4]
    assert len({entries[0][0] for entries in series.values()}) == 2
    assert 1 <= flipped < len(synth_dicoms)  # flipped and unflipped breasts both checked


def test_sr_copies_patient_and_study_from_the_source_and_adds_nothing(synth_dicoms, tmp_path):
    out = tmp_path / "pred.jsonl"
    _run(synth_dicoms[:1], out, tmp_path)
    src = pydicom.dcmread(synth_dicoms[0])
    ds = pydicom.dcmread(json.loads(out.read_text())["dicom_sr"])
    assert (ds.PatientName, ds.PatientID) == (src.PatientName, src.PatientID)
    for kw in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
               "ReferringPhysicianName"):
        assert kw not in src and kw in ds and not ds[kw].value  # Type 2: present, empty, never invented
    assert ds.VerificationFlag == "UNVERIFIED" and ds.PreliminaryFlag == "PRELIMINARY"
    assert RESEARCH_ONLY in ds.SeriesDescription
    texts = {str(i.TextValue) for i in _walk(ds.ContentSequence) if i.ValueType == "TEXT"}
    assert any(RESEARCH_ONLY in t for t in texts)
    assert {"mammodetr", f"model_sha256={SHA}"} <= texts
    assert src.PatientID not in json.loads(out.read_text())["dicom_sr"]  # file names carry no identifier


def test_non_dicom_input_gets_a_note_and_no_sr(synth_dicoms, tmp_path, caplog):
    from PIL import Image

    png = tmp_path / "in" / "plain.png"
    png.parent.mkdir()
    Image.fromarray((np.random.default_rng(0).random((90, 70)) * 60000).astype(np.uint16)).save(png)
    predictor, _, _ = scripted_predictor(synth_dicoms[:1], OPTIONS, False)
    predictor.model.queue.append(predictor.model.queue[0])  # the PNG's forward gets some boxes too
    exporter = SRExporter(tmp_path / "sr", predictor)
    with caplog.at_level(logging.WARNING):
        write_predictions(tmp_path / "p.jsonl", (r.result for r in exporter.stream(
            predictor.iter_files([synth_dicoms[0], png]))))
    rows = {r["file_name"]: r for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())}
    assert "dicom_sr" in rows[str(synth_dicoms[0])] and "dicom_sr" not in rows[str(png)]
    assert "p_malignant" in rows[str(png)]  # the prediction itself is kept
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [f"{png}: not a DICOM file; no SR written (an SR can only reference a DICOM image)"]
    assert (exporter.written, exporter.not_dicom, exporter.failed) == (1, 1, 0)
    assert len(list((tmp_path / "sr").iterdir())) == 1
    assert "1 written" in exporter.summary() and "1 non-DICOM" in exporter.summary()


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SOPInstanceUID"])
def test_dicom_without_uids_gets_one_clear_line_and_the_run_goes_on(synth_dicoms, tmp_path, caplog, missing):
    src = pydicom.dcmread(synth_dicoms[0])
    bad = tmp_path / "in" / "no_uid.dcm"
    bad.parent.mkdir()
    delattr(src, missing)
    src.save_as(bad)
    predictor, _, _ = scripted_predictor([synth_dicoms[1], synth_dicoms[0]], OPTIONS, False)
    exporter = SRExporter(tmp_path / "sr", predictor)
    with caplog.at_level(logging.WARNING):
        results = list(exporter.stream(predictor.iter_files([synth_dicoms[1], bad])))
    assert all(hasattr(r.result, "p_malignant") for r in results)  # both predicted
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == f"{bad}: no {missing}; an SR cannot reference this image (no SR written)"
    assert (exporter.written, exporter.failed) == (1, 1)
    assert str(src.PatientID) not in line and "SYNTHETIC" not in line


def test_sr_min_score_and_recorded_operating_threshold(synth_dicoms, tmp_path):
    from mammodetr.sr import read_sr

    path = synth_dicoms[0]
    for meta, min_score, n_regions in [({"weights_sha256": SHA}, None, 2), ({"operating_threshold": 0.9}, None, 0),
                                       ({"operating_threshold": 0.9}, 0.1, 3), ({}, 0.95, 0)]:
        predictor, _, _ = scripted_predictor([path], OPTIONS, False, meta=meta)
        exporter = SRExporter(tmp_path / "sr", predictor, min_score)
        (r,) = list(exporter.stream(predictor.iter_files([path])))
        f = read_sr(r.result.extra["dicom_sr"])
        assert len(f.regions) == n_regions, (meta, min_score)
        assert f.algorithm["sr_min_score"] == f"{exporter.min_score:g}"
        assert f.algorithm["model_sha256"] == meta.get("weights_sha256", "not recorded")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        SRExporter(tmp_path / "sr", predictor, 1.5)


def test_missing_highdicom_or_a_file_as_folder_is_one_line_before_anything_runs(synth_dicoms, tmp_path, monkeypatch):
    predictor, _, _ = scripted_predictor(synth_dicoms[:1], OPTIONS, False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        SRExporter(tmp_path / "file", predictor)
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    with pytest.raises(ValueError, match=r"needs highdicom: pip install 'mammodetr\[sr\]'"):
        SRExporter(tmp_path / "sr", predictor)
