import csv
import json

import numpy as np
import pytest
import torch

from mammodetr.config import RunConfig
from mammodetr.data.model_input import InputGeometry, input_transform
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.inference.inputs import collect_inputs
from mammodetr.inference.overlay import draw_overlay
from mammodetr.inference.predictions import Prediction, PredictionError, read_predictions, write_predictions
from mammodetr.inference.predictor import Predictor

from ._fake_model import ScriptedModel

pytest.importorskip("pydicom")

S = 64
K = 3


def _model_space(boxes_prepared_xyxy, prepared_hw, letterbox):
    """Prepared-pixel boxes -> (K, 4) normalised cxcywh in the S x S model input, padded with decoys."""
    transform = input_transform(prepared_hw, InputGeometry(S, letterbox))
    b = transform.apply_boxes_xyxy(np.asarray(boxes_prepared_xyxy).reshape(-1, 4))
    b = b / S
    cxcywh = np.c_[(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]
    n = len(cxcywh)
    pad = np.tile([[0.05, 0.05, 0.02, 0.02]], (K - n, 1))
    out = torch.tensor(np.r_[cxcywh, pad][:K], dtype=torch.float32)
    real = torch.arange(K) < n
    return out, real


def _config(letterbox=False, prepare=None) -> RunConfig:
    cfg = RunConfig()
    cfg.data.image_size, cfg.data.letterbox, cfg.data.prepare = S, letterbox, prepare
    return cfg


@pytest.fixture(scope="module")
def synth_dicoms(tmp_path_factory):
    from mammodetr.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    table = generate_dataset(root, n_patients=3, image_size=(160, 128), fmt="dicom", seed=3, progress=False)
    rows = list(csv.DictReader(open(table, newline="")))
    boxes: dict[str, list] = {}
    for r in rows:
        boxes.setdefault(r["image_path"], [])
        if r.get("x1"):
            boxes[r["image_path"]].append([float(r[k]) for k in ("x1", "y1", "x2", "y2")])
    return root, table, boxes


@pytest.mark.parametrize("letterbox", [False, True])
def test_predict_raw_dicom_boxes_return_to_original_pixels(synth_dicoms, tmp_path, letterbox):
    from mammodetr.data.preprocess import preprocess_image

    root, _, boxes = synth_dicoms
    options = PrepareOptions(flip_to="L", max_side=96)  # crop + flip of right breasts + downscale
    config = _config(letterbox, options)
    with_boxes = [p for p, b in boxes.items() if b]
    with_boxes = with_boxes[:1] + with_boxes[-2:]  # seed 3: left breasts first, right breasts (flipped) last
    flipped = 0
    for rel in with_boxes:
        path = root / rel
        prepared = preprocess_image(path, options)
        flipped += prepared.transform.flipped
        orig = np.asarray(boxes[rel])
        model = ScriptedModel([_model_space(prepared.transform.apply_boxes_xyxy(orig), prepared.pixels.shape,
                                            letterbox)])
        model.train()
        (res,) = Predictor(model, config, batch_size=1).iter_files([path])
        pred = res.result
        assert isinstance(pred, Prediction)
        assert model.training  # mode restored
        got = pred.boxes_xyxy_px[: len(orig)]
        np.testing.assert_allclose(got, orig, atol=0.05)
        draw_overlay(res.raw.original, pred, tmp_path / "ov" / f"{path.stem}.png")
        assert (tmp_path / "ov" / f"{path.stem}.png").is_file()
    assert 1 <= flipped < len(with_boxes)  # both a flipped and an unflipped image were checked


def test_failing_file_is_reported_and_run_goes_on(synth_dicoms, tmp_path):
    root, _, boxes = synth_dicoms
    good = root / next(iter(boxes))
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    model = ScriptedModel([(torch.full((K, 4), 0.5), torch.zeros(K, dtype=torch.bool))])
    res = Predictor(model, _config(prepare=PrepareOptions()), batch_size=4).predict_files([bad, good])
    assert isinstance(res[0], PredictionError) and "broken.dcm" in res[0].error
    assert isinstance(res[1], Prediction)
    out = write_predictions(tmp_path / "p.jsonl", res)
    back = read_predictions(out)
    assert len(back.errors) == 1 and str(good) in back.by_name
    with pytest.raises(ValueError, match="no such file"):
        collect_inputs([tmp_path / "missing"])


def test_prepared_round_trip_through_evaluate(synth_dicoms, tmp_path):
    from mammodetr.data.converters import convert
    from mammodetr.data.geometry import ImageTransform
    from mammodetr.data.prepare import prepare_dataset
    from mammodetr.evaluation.evaluate import evaluate_split
    from mammodetr.metrics.scoring import EvaluationOptions

    root, table, boxes = synth_dicoms
    options = PrepareOptions(flip_to="L", max_side=96)
    data = tmp_path / "prep"
    prepare_dataset(convert("csv", table), data, options, workers=0, progress=False, log=lambda s: None)
    coco = json.loads((data / "annotations.json").read_text())
    for im in coco["images"]:
        im["split"] = "test"
    (data / "annotations.json").write_text(json.dumps(coco))
    gt: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        gt.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    names = [im["file_name"] for im in coco["images"]]
    queue = [_model_space(np.asarray(gt.get(im["id"], []), float).reshape(-1, 4), (im["height"], im["width"]), False)
             for im in coco["images"]]
    predictor = Predictor(ScriptedModel(queue), _config(False, options), batch_size=3)
    preds = predictor.predict_prepared(data, file_names=names)
    assert not preds.errors
    write_predictions(tmp_path / "pred.jsonl", preds.by_name.values())
    r = evaluate_split(data, tmp_path / "ev", read_predictions(tmp_path / "pred.jsonl"),
                       EvaluationOptions(n_bootstrap=0, max_dets=K), report=False)
    m = r.metrics
    assert m["recall25"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert m["iou"] > 0.999
    # boxes drawn on the original DICOM: prepared-pixel predictions mapped back through the recorded transform
    orig_all = sorted(b for bs in boxes.values() for b in bs)
    back = []
    for im in coco["images"]:
        n = len(gt.get(im["id"], []))
        if n:
            t = ImageTransform.from_dict(im["transform"])
            back += t.invert_boxes_xyxy(preds.by_name[im["file_name"]].boxes_xyxy_px[:n]).tolist()
    np.testing.assert_allclose(sorted(back), orig_all, atol=0.05)


def test_scan_inputs_counts_what_is_not_an_image_and_takes_a_file_once(synth_dicoms, tmp_path):
    import shutil

    from mammodetr.inference.inputs import scan_inputs

    root, _, _ = synth_dicoms
    folder = tmp_path / "in"
    folder.mkdir()
    dicom = sorted((root / "images").glob("*.dcm"))[0]
    shutil.copy(dicom, folder / "IM0001")  # DICOM without a suffix: an image
    (folder / "notes.txt").write_text("x")
    (folder / "README").write_text("not DICOM")
    shutil.copy(dicom, folder / "b.dcm")
    scan = scan_inputs([folder, folder / "b.dcm"])
    assert scan.files == [folder / "IM0001", folder / "b.dcm"]
    assert scan.skipped == [folder / "README", folder / "notes.txt"]
    assert collect_inputs([folder]) == scan.files
@pytest.mark.parametrize("masked", [True, False])
def test_raw_files_are_prepared_exactly_as_the_dataset_was(synth_dicoms, tmp_path, masked):
    """predict (and the viewer, which predicts through the same path) repeats prepare's masking on raw files."""
    from PIL import Image

    from mammodetr.data.converters import convert
    from mammodetr.data.prepare import prepare_dataset

    root, table, _ = synth_dicoms
    out = tmp_path / "ds"
    report = prepare_dataset(convert("csv", table), out, PrepareOptions(max_side=96, mask_background=masked),
                             workers=0, progress=False, log=lambda s: None)
    sources = json.loads(open(report["source_map"]).read())["sources"]  # the private hash -> path map
    ann = json.loads((out / "annotations.json").read_text())
    options = PrepareOptions.from_dict(ann["info"]["prepare"])
    assert options.mask_background is masked
    images = [img for img in ann["images"] if img["label"] == "normal"]  # no boxes: masking has nothing to keep
    assert images and all((img["background_mask"] or {}).get("applied", False) is masked for img in images)
    queue = [(torch.tensor([[0.5, 0.5, 0.1, 0.1]] * K), torch.zeros(K, dtype=torch.bool))] * len(images)
    predictor = Predictor(ScriptedModel(queue), _config(prepare=options), batch_size=4)
    results = list(predictor.iter_files([root / sources[img["source"]] for img in images]))
    for img, res in zip(images, results, strict=True):
        stored = np.asarray(Image.open(out / img["file_name"]), dtype=np.uint16)
        np.testing.assert_array_equal(res.raw.pixels_u16, stored)
        assert res.raw.prepared.background_mask == img["background_mask"]
