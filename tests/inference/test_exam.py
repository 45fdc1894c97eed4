"""Exams: grouping into exams and views, breast and exam scores, the JSONL records of ``predict --exam``."""

import json
from pathlib import Path

import numpy as np
import pytest

from mammodetr.inference.exam import (
    VIEW_SLOTS,
    Exam,
    ExamImage,
    ExamOptions,
    OperatingPoint,
    aggregate_exam,
    exam_records,
    group_exams,
    operating_point,
    read_exam_table,
)
from mammodetr.inference.inputs import collect_inputs
from mammodetr.inference.predictions import Prediction, PredictionError, read_predictions
from mammodetr.metrics.breast import aggregate_breasts

pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def synth_dicoms(tmp_path_factory) -> Path:
    from mammodetr.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("exams")
    generate_dataset(root, n_patients=3, image_size=(96, 80), fmt="dicom", seed=2, progress=False)
    return root / "images"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from mammodetr import ModelConfig, RunConfig, build_model
    from mammodetr.checkpoint import save_checkpoint
    from mammodetr.data.preprocess import PrepareOptions

    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(backbone="test_convnext", pretrained="none", d_model=32, nheads=4,
                                         dim_feedforward=64, dec_layers=1))
    config.data.image_size, config.data.prepare = 64, PrepareOptions(max_side=96)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", build_model(config.model), config)


def _pred(path, p, n=1):
    return Prediction(str(path), p, np.tile([[1.0, 2.0, 5.0, 6.0]], (n, 1)), np.full(n, 0.5))


def test_dicoms_group_by_study_uid_and_hang_by_their_tags(synth_dicoms):
    import pydicom

    exams = group_exams(collect_inputs([synth_dicoms]))
    assert [e.exam_id for e in exams] == [f"{synth_dicoms.as_posix()}#{i}" for i in (1, 2, 3)]
    for i, e in enumerate(exams):
        assert e.grouped_by == "study" and list(e.views) == list(VIEW_SLOTS) and e.missing_views == []
        names = sorted(im.path.name for im in e.images)
        assert names == [f"{4 * i + k:06d}.dcm" for k in (1, 2, 3, 4)]  # synth writes each patient's four views
        uids = {pydicom.dcmread(im.path, stop_before_pixels=True).StudyInstanceUID for im in e.images}
        assert len(uids) == 1 and next(iter(uids)) not in e.exam_id


def test_folders_and_file_names_when_there_are_no_tags(tmp_path):
    from PIL import Image

    for rel in ("a/LCC.png", "a/R_MLO.png", "a/extra_LCC.png", "b/scan.png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / rel)
    exams = {e.exam_id: e for e in group_exams(collect_inputs([tmp_path]))}
    a, b = exams[(tmp_path / "a").as_posix()], exams[(tmp_path / "b").as_posix()]
    assert a.grouped_by == "folder" and list(a.views) == ["LCC", "RMLO"] and a.missing_views == ["RCC", "LMLO"]
    assert [im.label for im in a.extra_images] == ["LCC"]  # a second LCC is listed, not hung
    assert b.views == {} and [im.label for im in b.extra_images] == ["??"]
    relative = group_exams(collect_inputs([tmp_path]), relative_to=tmp_path)
    assert sorted(e.exam_id for e in relative) == ["a", "b"]


def test_a_table_sets_exams_and_views(tmp_path):
    from PIL import Image

    for name in ("x1.png", "x2.png", "x3.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    table = tmp_path / "exams.csv"
    table.write_text("image_path,laterality,view,study_id\nx1.png,left,cc,ACC123\nx2.png,R,MLO,ACC123\n"
                     "x3.png,R,CC,ACC999\n")
    exams = group_exams(collect_inputs([tmp_path / "x1.png", tmp_path / "x2.png", tmp_path / "x3.png"]),
                        read_exam_table(table))
    assert [e.grouped_by for e in exams] == ["table", "table"]
    assert [list(e.views) for e in exams] == [["LCC", "RMLO"], ["RCC"]]
    assert [e.exam_id for e in exams] == [f"{tmp_path.as_posix()}#1", f"{tmp_path.as_posix()}#2"]
    assert not any("ACC" in e.exam_id for e in exams)
    with pytest.raises(ValueError, match="image_path"):
        bad = tmp_path / "bad.csv"
        bad.write_text("file,laterality\n")
        read_exam_table(bad)


@pytest.mark.parametrize("how", ["max", "mean"])
def test_breast_and_exam_scores_follow_evaluates_aggregation(how):
    images = [ExamImage(Path(f"{v}.png"), v[0], v[1:]) for v in ("RCC", "RMLO", "LCC", "LMLO")]
    images += [ExamImage(Path("unknown.png")), ExamImage(Path("LXCCL.png"), "L", "XCCL")]
    exam = Exam("e", images, "folder")
    p = {"RCC": 0.2, "RMLO": 0.6, "LCC": 0.1, "LMLO": 0.3, "unknown": 0.99, "LXCCL": 0.5}
    preds = {im.path: _pred(im.path, p[im.path.stem]) for im in images}
    preds[Path("LMLO.png")] = PredictionError("LMLO.png", "LMLO.png: corrupt")  # a failed view
    result = aggregate_exam(exam, preds, how, OperatingPoint(0.4, "given"))
    done = [im for im in images if isinstance(preds[im.path], Prediction)]
    ref = aggregate_breasts([preds[im.path].p_malignant for im in done], [0] * len(done), ["x"] * len(done),
                            [None] * len(done), [im.laterality for im in done], how=how)
    by_lat = {b.laterality: b.p_malignant for b in result.breasts}
    assert by_lat == {k.split("|")[-1]: pytest.approx(s) for k, s in zip(ref.keys, ref.scores)}
    expected = {"max": {"R": 0.6, "L": 0.5}, "mean": {"R": 0.4, "L": 0.3}}[how]  # by hand; 'unknown' in no breast
    assert by_lat == pytest.approx(expected)
    assert result.p_malignant == pytest.approx(max(expected.values()))
    records = exam_records(result)
    assert [r["record"] for r in records] == ["image"] * 6 + ["breast", "breast", "exam"]
    ex = records[-1]
    assert ex["failed"] == ["LMLO.png"] and ex["missing_views"] == [] and ex["views"]["LMLO"] == "LMLO.png"
    assert ex["positive"] is (ex["p_malignant"] >= 0.4) and ex["threshold_source"] == "given"
    assert [o["view"] for o in ex["other_images"]] == ["??", "LXCCL"]


def test_no_laterality_gives_no_exam_score():
    exam = Exam("e", [ExamImage(Path("a.png"))], "folder")
    result = aggregate_exam(exam, {Path("a.png"): _pred("a.png", 0.7)}, "max", OperatingPoint(0.5, "default"))
    assert result.breasts == [] and result.p_malignant is None and result.notes
    assert exam_records(result)[-1]["positive"] is None


def test_operating_point_sources():
    assert operating_point(ExamOptions(threshold=0.3), {"operating_threshold": 0.7}) == OperatingPoint(0.3, "given")
    assert operating_point(ExamOptions(), {"operating_threshold": 0.7}) == OperatingPoint(0.7, "checkpoint")
    assert operating_point(ExamOptions(), {}).threshold == 0.5
    with pytest.raises(ValueError):
        ExamOptions(threshold=1.5)


def test_predict_exam_cli_writes_image_breast_and_exam_records(synth_dicoms, checkpoint, tmp_path):
    from mammodetr.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    files = sorted(synth_dicoms.glob("*.dcm"))
    for f in files[:7]:  # two exams, the second without its LMLO view
        (inputs / f.name).write_bytes(f.read_bytes())
    (inputs / "000007.dcm").write_bytes(files[6].read_bytes()[:2000])  # a corrupt LCC of the second exam
    out = tmp_path / "exams.jsonl"
    assert main(["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(out), "--exam",
                 "--breast-aggregate", "mean", "--threshold", "0.3", "--overlay", str(tmp_path / "ov"),
                 "--no-progress"]) == 0
    assert len(list((tmp_path / "ov").glob("*.png"))) == 6  # every predicted view, not the corrupt one
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["record"] for r in rows] == ["image"] * 4 + ["breast"] * 2 + ["exam"] + ["image"] * 3 + ["breast",
                                                                                                      "exam"]
    exams = [r for r in rows if r["record"] == "exam"]
    assert exams[1]["missing_views"] == ["LMLO"] and exams[1]["failed"] == [str(inputs / "000007.dcm")]
    images = [r for r in rows if r["record"] == "image" and "error" not in r]
    for b in (r for r in rows if r["record"] == "breast"):
        mine = [r["p_malignant"] for r in images if r["exam_id"] == b["exam_id"] and r["laterality"] == b["laterality"]]
        assert b["p_malignant"] == pytest.approx(np.mean(mine), abs=1e-6) and b["aggregate"] == "mean"
    assert all(e["threshold"] == 0.3 for e in exams)
    plain = tmp_path / "plain.jsonl"  # the image records are exactly the predictions of plain `predict`
    assert main(["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(plain), "--no-progress"]) == 0
    by_name = read_predictions(plain).by_name
    for r in images:
        assert r["p_malignant"] == by_name[r["file_name"]].p_malignant
        assert r["boxes"] == by_name[r["file_name"]].boxes_xyxy_px.tolist()
    again = read_predictions(out)  # breast and exam records are skipped by the reader of image predictions
    assert set(again.by_name) == {r["file_name"] for r in images} and len(again.errors) == 1
    text = out.read_text()
    import pydicom

    assert pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID not in text and "SYN0" not in text


def test_predict_exam_takes_one_exam_and_refuses_several(synth_dicoms, checkpoint):
    from mammodetr.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    files = sorted(synth_dicoms.glob("*.dcm"))
    result = predictor.predict_exam(files[:4])
    assert len(result.results) == 4 and result.p_malignant == max(b.p_malignant for b in result.breasts)
    with pytest.raises(ValueError, match="2 exams"):
        predictor.predict_exam(files[:8])
    assert [r.exam.exam_id for r in predictor.iter_exams([synth_dicoms])] == [e.exam_id for e in
                                                                              group_exams(files)]
