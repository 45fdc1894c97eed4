"""``mammodetr export`` and ``predict --model`` end to end: a tiny checkpoint, raw synthetic DICOMs, onnxruntime."""

import json

import numpy as np
import pytest
from inference._tiny_models import randomise

from mammodetr.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("pydicom")

TINY = dict(backbone="convnextv2_tiny", pretrained="none",
            backbone_options={"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]},
            d_model=64, nheads=4, dim_feedforward=64, dec_layers=2)
RAW_HW = (160, 128)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, its export (over a file already there, with --overwrite) and five raw DICOMs."""
    import torch

    from mammodetr import ModelConfig, RunConfig, build_model
    from mammodetr.checkpoint import save_checkpoint
    from mammodetr.data.preprocess import PrepareOptions

    root = tmp_path_factory.mktemp("export_cli")
    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(**TINY))
    config.data.image_size, config.data.letterbox = 64, True
    config.data.prepare = PrepareOptions(max_side=96, flip_to="L")
    ckpt = save_checkpoint(root / "ckpt", randomise(build_model(config.model)), config,
                           meta={"operating_threshold": 0.3})
    assert main(["synth", "--out", str(root / "raw"), "--patients", "2", "--size", *map(str, RAW_HW), "--format",
                 "dicom", "--seed", "4", "--no-progress"]) == 0
    images = sorted((root / "raw" / "images").glob("*.dcm"))[:5]
    model = root / "model.onnx"
    model.write_bytes(b"an older export")
    # A fixed batch of 2 with 5 files in batches of 3: the groups 2 + (1 + padding) and 2 are exercised.
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(model), "--batch", "2", "--overwrite"]) == 0
    return ckpt, model, images


def _rows(path):
    return {r["file_name"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_export_refuses_an_existing_file_in_one_line(setup, tmp_path, capsys):
    ckpt, model, _ = setup
    before = model.read_bytes()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0] and str(model) in err[0]
    assert model.read_bytes() == before and before[:1] != b"a"  # the fixture's --overwrite replaced the old file
    # ... which it moved aside, never deleted
    assert [p.read_bytes() for p in model.parent.glob("model.onnx.replaced-*")] == [b"an older export"]


@pytest.mark.parametrize("inside", ["model.safetensors", "model.onnx", "."])
def test_export_never_writes_into_or_over_the_checkpoint(setup, capsys, inside):
    ckpt, _, _ = setup
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    out = ckpt / inside
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "--checkpoint" in err[0] and "Traceback" not in err[0]
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


@pytest.mark.parametrize("argv, expected", [
    (["--batch", "0"], "batch must be"),
    (["--batch", "many"], "batch must be"),
    (["--opset", "17"], "opset must be at least 18"),
])
def test_bad_export_options_are_one_line(setup, tmp_path, capsys, argv, expected):
    ckpt, _, _ = setup
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_predict_with_the_onnx_model_gives_the_checkpoints_predictions(setup, tmp_path, capsys):
    ckpt, model, images = setup
    by_ckpt, by_onnx = tmp_path / "ckpt.jsonl", tmp_path / "onnx.jsonl"
    common = [*map(str, images), "--batch-size", "3", "--no-progress"]
    assert main(["predict", "--checkpoint", str(ckpt), *common, "--out", str(by_ckpt)]) == 0
    assert main(["predict", "--model", str(model), *common, "--out", str(by_onnx)]) == 0
    assert "5 predictions, 0 failed" in capsys.readouterr().out
    a, b = _rows(by_ckpt), _rows(by_onnx)
    assert sorted(a) == sorted(b) == sorted(map(str, images))
    for name in a:
        ra, rb = a[name], b[name]
        assert abs(ra["p_malignant"] - rb["p_malignant"]) <= 1e-4
        np.testing.assert_allclose(rb["scores"], ra["scores"], rtol=0, atol=1e-4)
        # no near-tie: the gaps are far above the runtimes' difference (~1e-7), so the box order is the same
        assert min(np.diff(sorted(ra["scores"]))) > 2e-5
        # boxes are written with 3 decimals: equal to that rounding
        np.testing.assert_allclose(rb["boxes"], ra["boxes"], rtol=0, atol=1.1e-3)
        boxes = np.asarray(rb["boxes"])
        assert (boxes[:, [0, 2]] <= RAW_HW[1]).all() and (boxes[:, [1, 3]] <= RAW_HW[0]).all() and (boxes >= 0).all()


def test_unrounded_boxes_in_original_pixels_agree(setup):
    from mammodetr.data.preprocess import PrepareOptions
    from mammodetr.inference.predictor import Predictor

    ckpt, model, images = setup
    onnx_predictor = Predictor.from_onnx(model, batch_size=3)
    assert onnx_predictor.meta["operating_threshold"] == 0.3  # the checkpoint's metadata travels in the file
    # raw files are prepared as the training data were, background masking included (the default since issue 15)
    assert onnx_predictor.prepare_options.mask_background and onnx_predictor.prepare_options == PrepareOptions(
        max_side=96, flip_to="L")
    got = onnx_predictor.predict_files(images)
    expected = Predictor.from_checkpoint(ckpt, device="cpu", batch_size=3).predict_files(images)
    moved = 0
    for g, e in zip(got, expected):
        side = max(RAW_HW)
        np.testing.assert_allclose(g.boxes_xyxy_px / side, e.boxes_xyxy_px / side, rtol=0, atol=1e-4)
        moved += not np.allclose(g.boxes_xyxy_px, g.boxes_xyxy_px.clip(0, 64))  # beyond the 64 px model input
    assert moved  # the boxes were mapped back to the 160 x 128 originals, not left in model-input pixels


def test_predict_exam_with_the_onnx_model(setup, tmp_path):
    _, model, images = setup
    out = tmp_path / "exams.jsonl"
    assert main(["predict", "--model", str(model), *map(str, images), "--out", str(out), "--exam",
                 "--no-progress"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    exams = [r for r in records if r["record"] == "exam"]
    assert exams and all(r["threshold"] == 0.3 and r["threshold_source"] == "checkpoint" for r in exams)


def test_the_viewer_serves_the_onnx_model(setup):
    pytest.importorskip("starlette")
    from mammodetr.inference.exam import ExamOptions
    from mammodetr.inference.predictor import Predictor
    from mammodetr.serve.options import ServeOptions
    from mammodetr.serve.store import ExamStore
    from mammodetr.serve.viewer import Viewer

    ckpt, model, images = setup
    store = ExamStore(images[0].parent)
    viewers = [Viewer(p, store, ServeOptions(), ExamOptions()) for p in
               (Predictor.from_onnx(model), Predictor.from_checkpoint(ckpt, device="cpu"))]
    info = viewers[0].info()
    assert info["gradcam"] is False and info["model"]["weights_sha256"] == viewers[1].info()["model"]["weights_sha256"]
    exam_id = store.exams()[0].exam_id
    got, expected = (v.predict(exam_id)["records"] for v in viewers)
    for g, e in zip(got, expected):
        if e.get("p_malignant") is not None:
            assert abs(g["p_malignant"] - e["p_malignant"]) <= 1e-4
    store.close()


def _edited(model, tmp_path, name, edit):
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    edit(props)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


def _set_input(props, **changes):
    spec = json.loads(props["mammodetr.input"])
    spec.update(changes)
    props["mammodetr.input"] = json.dumps(spec)


def _set_size(props):
    cfg = json.loads(props["mammodetr.run_config"])
    cfg["data"]["image_size"] = 128
    props["mammodetr.run_config"] = json.dumps(cfg)
    _set_input(props, image_size=128)


BAD = {
    "no_metadata": (lambda p: [p.pop(k) for k in list(p) if k.startswith("mammodetr.")], "without mammodetr metadata"),
    "no_config": (lambda p: p.pop("mammodetr.run_config"), "lacks mammodetr.run_config"),
    "bad_json": (lambda p: p.update({"mammodetr.run_config": "{not json"}), "is not a JSON object"),
    "bad_config": (lambda p: p.update({"mammodetr.run_config": '{"model": {"colour": 1}}'}), "not a valid run config"),
    "newer": (lambda p: p.update({"mammodetr.format": "2"}), "format '2'"),
    "bad_sha": (lambda p: p.update({"mammodetr.weights_sha256": "abc"}), "weights_sha256"),
    "letterbox": (lambda p: _set_input(p, letterbox=False), "metadata disagree: mammodetr.input says letterbox"),
    "size": (_set_size, "disagree with the graph"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_model_with_wrong_or_missing_metadata_is_one_line(setup, tmp_path, capsys, case):
    _, model, images = setup
    edit, expected = BAD[case]
    bad = _edited(model, tmp_path, f"{case}.onnx", edit)
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(bad), str(images[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and expected in err[0], err
    assert "Traceback" not in err[0] and not out.exists()


@pytest.mark.parametrize("content, expected", [
    (b"not an onnx model at all", "not a loadable ONNX model"),
    (None, "no such file"),
])
def test_a_file_that_is_no_onnx_model_is_one_line(setup, tmp_path, capsys, content, expected):
    _, _, images = setup
    bad = tmp_path / "model.onnx"
    if content is not None:
        bad.write_bytes(content)
    for command in (["predict", "--out", str(tmp_path / "p.jsonl"), str(images[0])], ["serve"]):
        if command[0] == "serve":
            pytest.importorskip("starlette")
        assert main([*command, "--model", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and expected in err[0], err


@pytest.mark.parametrize("missing, command", [("onnxscript", "export"), ("onnx", "export"),
                                              ("onnxruntime", "predict")])
def test_without_the_onnx_extra_each_command_says_what_to_install(setup, tmp_path, monkeypatch, capsys, missing,
                                                                  command):
    import sys

    ckpt, model, images = setup
    monkeypatch.setitem(sys.modules, missing, None)
    argv = (["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")] if command == "export" else
            ["predict", "--model", str(model), str(images[0]), "--out", str(tmp_path / "p.jsonl")])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mammodetr[onnx]" in err[0] and missing in err[0]
    assert not list(tmp_path.iterdir())


def test_an_onnx_model_from_elsewhere_is_one_line(tmp_path, capsys):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "other.onnx"
    onnx.save(proto, str(path))
    assert main(["predict", "--model", str(path), str(path), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without mammodetr metadata" in err[0]
