import json

import numpy as np
import pytest

from mammodetr.evaluation.compare import compare_runs, load_run
from mammodetr.evaluation.evaluate import evaluate_split
from mammodetr.inference.predictions import read_predictions
from mammodetr.metrics.delong import delong_test
from mammodetr.metrics.scoring import EvaluationOptions

from ._synthetic import ground_truth_predictions, make_prepared_dataset


def _eval(tmp_path, data, name, seed, noise):
    rows = ground_truth_predictions(data, np.random.default_rng(seed), noise=noise)
    p = tmp_path / f"{name}.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate_split(data, tmp_path / name, read_predictions(p), EvaluationOptions(n_bootstrap=100), report=False)
    return tmp_path / name, rows


def test_compare_table_and_delong_against_direct_computation(tmp_path):
    from mammodetr.cli import main

    data = make_prepared_dataset(tmp_path / "ds", n_patients=9)
    a_dir, a_rows = _eval(tmp_path, data, "runA", 0, 1.0)
    b_dir, b_rows = _eval(tmp_path, data, "runB", 5, 4.0)
    # make run B's scores noisier so the AUCs differ
    rng = np.random.default_rng(9)
    for r in b_rows:
        r["p_malignant"] = float(np.clip(r["p_malignant"] * 0.5 + rng.uniform(0, 0.5), 0, 1))
    (tmp_path / "runB.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b_rows))
    evaluate_split(data, b_dir, read_predictions(tmp_path / "runB.jsonl"), EvaluationOptions(n_bootstrap=100),
                   report=False)
    res = compare_runs([load_run(a_dir), load_run(b_dir)], reference="runA")
    t = res["delong"]["runB"]
    names = [r["file_name"] for r in a_rows]
    labels = {im["file_name"]: int(im["label"] == "malignant")
              for im in json.loads((data / "annotations.json").read_text())["images"]}
    direct = delong_test([labels[n] for n in names], [r["p_malignant"] for r in b_rows],
                         [r["p_malignant"] for r in a_rows])
    assert t["difference"] == pytest.approx(direct.difference) and t["p_value"] == pytest.approx(direct.p_value)
    lo, hi = t["patient_bootstrap"]["ci_difference"]
    assert lo <= t["difference"] <= hi
    auc_row = next(r for r in res["rows"] if r["metric"] == "AUC")
    best = max(auc_row["values"], key=lambda k: auc_row["values"][k])
    assert auc_row["best"] == [best]
    rc = main(["compare", str(a_dir), str(b_dir), "--out", str(tmp_path / "cmp")])
    assert rc == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| AUC |" in md and "**" in md and "DeLong" in md


def test_delong_skipped_for_different_test_sets(tmp_path):
    d1 = make_prepared_dataset(tmp_path / "d1", n_patients=6)
    d2 = make_prepared_dataset(tmp_path / "d2", n_patients=9)
    a, _ = _eval(tmp_path, d1, "a", 0, 0.0)
    b, _ = _eval(tmp_path, d2, "b", 0, 0.0)
    res = compare_runs([load_run(a), load_run(b)])
    assert "different test sets" in res["delong"]["b"]["skipped"]
    with pytest.raises(ValueError, match="no metrics.json"):
        load_run(tmp_path / "ds_missing")
