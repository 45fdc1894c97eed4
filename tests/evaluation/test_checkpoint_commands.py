"""predict / evaluate / gradcam commands end to end with a real (tiny, untrained) checkpoint."""

import json

import numpy as np
import pytest

from ._synthetic import make_prepared_dataset

TINY_CFG = dict(backbone="convnextv2_tiny", pretrained="none",
                backbone_options={"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]},
                d_model=32, nheads=4, dim_feedforward=64, dec_layers=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from mammodetr import ModelConfig, RunConfig, build_model
    from mammodetr.checkpoint import save_checkpoint
    from mammodetr.data.preprocess import PrepareOptions

    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(**TINY_CFG))
    config.data.image_size, config.data.letterbox, config.data.prepare = 64, True, PrepareOptions(max_side=96)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", build_model(config.model), config)


def test_evaluate_with_checkpoint_writes_gradcam_scores(checkpoint, tmp_path):
    from mammodetr.cli import main

    data = make_prepared_dataset(tmp_path / "ds", n_patients=3, size_hw=(80, 60))
    out = tmp_path / "ev"
    assert main(["evaluate", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--bootstrap", "50", "--batch-size", "4"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["meta"]["max_dets"] == 3 and m["meta"]["checkpoint"] == str(checkpoint)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and all(len(p["boxes"]) == 3 for p in preds)
    for p in preds:  # boxes lie inside the prepared image (60 x 80)
        b = np.asarray(p["boxes"])
        assert (b[:, [0, 2]] <= 60 + 1e-6).all() and (b[:, [1, 3]] <= 80 + 1e-6).all() and (b >= 0).all()
    g = json.loads((out / "gradcam.json").read_text())
    coco = json.loads((data / "annotations.json").read_text())
    assert g["n_images"] == len({a["image_id"] for a in coco["annotations"]})
    assert 0 <= g["pointing_game"] <= 1 and 0 <= g["energy_in_box"] <= 1
    assert g["target_layer"] == "projections.-1"
    assert "Grad-CAM localisation" in (out / "report.md").read_text()
    assert (out / "plots" / "gradcam.png").is_file()


def test_predict_and_gradcam_commands_on_png_files(checkpoint, tmp_path):
    from PIL import Image

    from mammodetr.cli import main

    imgs = tmp_path / "in"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        a = np.zeros((120, 90), np.uint16)
        a[10:110, 5:70] = (rng.random((100, 65)) * 40000 + 10000).astype(np.uint16)  # a "breast" on the left
        Image.fromarray(a).save(imgs / f"img{i}.png")
    (imgs / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "pred.jsonl"
    assert main(["predict", "--checkpoint", str(checkpoint), str(imgs), "--out", str(out),
                 "--overlay", str(tmp_path / "ov"), "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    bad = [r for r in rows if "error" in r]
    assert len(bad) == 1 and "bad.png" in bad[0]["error"]
    for r in rows:
        if "error" not in r:
            b = np.asarray(r["boxes"])
            assert b.shape == (3, 4) and (b[:, [0, 2]] <= 90).all() and (b[:, [1, 3]] <= 120).all()
            assert 0 <= r["p_malignant"] <= 1
    assert len(list((tmp_path / "ov").glob("*.png"))) == 3
    assert main(["gradcam", "--checkpoint", str(checkpoint), str(imgs / "img0.png"), "--out",
                 str(tmp_path / "cam")]) == 0
    assert (tmp_path / "cam" / "img0_gradcam.png").is_file()


def test_evaluate_without_grad_cam_package_still_scores(checkpoint, tmp_path, monkeypatch):
    import sys

    from mammodetr.cli import main

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as on a machine without the gradcam extra
    data = make_prepared_dataset(tmp_path / "ds", n_patients=2, size_hw=(80, 60))
    out = tmp_path / "ev"
    assert main(["evaluate", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--bootstrap", "20", "--batch-size", "4"]) == 0
    assert "auc" in json.loads((out / "metrics.json").read_text())
    assert not (out / "gradcam.json").exists()
    assert "mammodetr[gradcam]" in (out / "report.md").read_text()
