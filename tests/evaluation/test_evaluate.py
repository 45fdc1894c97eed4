import json

import numpy as np
import pytest

from mammodetr.data.ground_truth import load_split
from mammodetr.evaluation.evaluate import evaluate_split
from mammodetr.inference.predictions import read_predictions
from mammodetr.metrics.scoring import TOP_LEVEL_KEYS, EvaluationOptions

from ._synthetic import ground_truth_predictions, make_prepared_dataset


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_metrics_json_keys_and_perfect_boxes(tmp_path):
    data = make_prepared_dataset(tmp_path / "ds")
    preds = _write_jsonl(tmp_path / "preds.jsonl", ground_truth_predictions(data, np.random.default_rng(0)))
    out = tmp_path / "eval"
    evaluate_split(data, out, read_predictions(preds), EvaluationOptions(n_bootstrap=200, max_dets=3), split="test")
    m = json.loads((out / "metrics.json").read_text())
    nested = {"ci", "froc", "operating_points", "calibration", "breast_level", "subgroups", "meta"}
    assert set(m) == set(TOP_LEVEL_KEYS) | nested
    for k in TOP_LEVEL_KEYS:
        assert m[k] is None or 0.0 <= m[k] <= 1.0, k
    # every ground-truth box is predicted exactly (the extra box is elsewhere)
    assert m["recall25"] == pytest.approx(1.0)
    assert m["iou"] == pytest.approx(1.0)
    assert m["iou_top1"] == pytest.approx(1.0)
    assert m["auc"] == pytest.approx(1.0)
    assert m["ci"]["auc"]["low"] <= m["auc"] <= m["ci"]["auc"]["high"]
    assert m["froc"]["iou"]["sensitivity_at"]["2.0"] == pytest.approx(1.0)
    assert m["breast_level"]["n_breasts"] == 24
    assert set(m["subgroups"]["view"]) == {"CC", "MLO"} and set(m["subgroups"]["density"]) == {"A", "B"}
    assert m["meta"]["n_images"] == 48 and m["meta"]["max_dets"] == 3
    for f in ("report.md", "report.html", "per_image.jsonl", "plots/roc.png", "plots/examples.png"):
        assert (out / f).is_file(), f
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html and "src=\"plots/" not in html


def test_missing_and_failed_predictions(tmp_path):
    data = make_prepared_dataset(tmp_path / "ds", n_patients=6)
    rows = ground_truth_predictions(data, np.random.default_rng(1))
    rows[0] = {"file_name": rows[0]["file_name"], "error": "unreadable"}
    preds = _write_jsonl(tmp_path / "p.jsonl", rows)
    r = evaluate_split(data, tmp_path / "o", read_predictions(preds), EvaluationOptions(n_bootstrap=0), report=False)
    assert r.metrics["meta"]["n_failed_predictions"] == 1 and r.metrics["meta"]["n_images"] == len(rows) - 1
    _write_jsonl(tmp_path / "short.jsonl", rows[2:])
    with pytest.raises(ValueError, match="lack 2"):
        evaluate_split(data, tmp_path / "o2", read_predictions(tmp_path / "short.jsonl"), EvaluationOptions(),
                       report=False)


def test_unknown_split_and_bad_label(tmp_path):
    data = make_prepared_dataset(tmp_path / "ds", n_patients=3)
    with pytest.raises(ValueError, match="splits present"):
        load_split(data, "val")
    coco = json.loads((data / "annotations.json").read_text())
    coco["images"][0]["label"] = "maybe"
    (data / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="maybe"):
        load_split(data, "test")


def test_cli_evaluate(tmp_path, capsys):
    from mammodetr.cli import main

    data = make_prepared_dataset(tmp_path / "ds", n_patients=6)
    preds = _write_jsonl(tmp_path / "p.jsonl", ground_truth_predictions(data, np.random.default_rng(2), noise=1.0))
    rc = main(["evaluate", "--data", str(data), "--predictions", str(preds), "--out", str(tmp_path / "e"),
               "--bootstrap", "50", "--no-report"])
    assert rc == 0
    assert (tmp_path / "e" / "metrics.json").is_file()
    assert "map25=" in capsys.readouterr().out
    rc = main(["evaluate", "--data", str(data), "--predictions", str(tmp_path / "nope.jsonl"),
               "--out", str(tmp_path / "e2")])
    assert rc == 2


def test_val_threshold_reported_beside_default(tmp_path):
    from mammodetr.cli import main
    from mammodetr.metrics.classification import threshold_at_sensitivity

    data = make_prepared_dataset(tmp_path / "ds", n_patients=12)
    coco = json.loads((data / "annotations.json").read_text())
    for im in coco["images"]:
        im["split"] = "val" if int(im["patient_id"][1:]) % 2 else "test"
    (data / "annotations.json").write_text(json.dumps(coco))
    rows = ground_truth_predictions(data, np.random.default_rng(3))
    preds = _write_jsonl(tmp_path / "all.jsonl", rows)
    out = tmp_path / "e"
    assert main(["evaluate", "--data", str(data), "--predictions", str(preds), "--out", str(out),
                 "--bootstrap", "0", "--no-report", "--val-threshold-from", str(preds)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    val_names = {im["file_name"] for im in coco["images"] if im["split"] == "val"}
    labels = {im["file_name"]: int(im["label"] == "malignant") for im in coco["images"]}
    val = [r for r in rows if r["file_name"] in val_names]
    expected = threshold_at_sensitivity([labels[r["file_name"]] for r in val], [r["p_malignant"] for r in val], 0.9)
    v = m["operating_points"]["val_threshold"]
    assert v["threshold"] == pytest.approx(expected) and "val split" in v["source"]
    assert m["meta"]["threshold"] == 0.5 and m["meta"]["n_images"] == 24
