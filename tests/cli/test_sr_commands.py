"""``predict --dicom-sr`` and ``sr-read`` end to end with a real (tiny, untrained) checkpoint and raw DICOMs."""

import json

import numpy as np
import pytest

from mammodetr.cli import main

pytest.importorskip("highdicom")

TINY = dict(backbone="convnextv2_tiny", pretrained="none",
            backbone_options={"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]},
            d_model=32, nheads=4, dim_feedforward=64, dec_layers=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from mammodetr import ModelConfig, RunConfig, build_model
    from mammodetr.checkpoint import save_checkpoint
    from mammodetr.data.preprocess import PrepareOptions
    from mammodetr.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("sr_cli")
    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(**TINY))
    config.data.image_size, config.data.letterbox = 64, True
    config.data.prepare = PrepareOptions(max_side=96, flip_to="L")
    ckpt = save_checkpoint(root / "ckpt", build_model(config.model), config)
    generate_dataset(root / "raw", n_patients=1, image_size=(160, 128), fmt="dicom", seed=2, progress=False)
    return ckpt, root / "raw" / "images"


def test_predict_writes_srs_that_sr_read_prints(setup, tmp_path, capsys):
    ckpt, images = setup
    out, sr_dir = tmp_path / "pred.jsonl", tmp_path / "sr"
    assert main(["predict", "--checkpoint", str(ckpt), str(images), "--out", str(out), "--dicom-sr", str(sr_dir),
                 "--sr-min-score", "0", "--no-progress"]) == 0
    assert "DICOM SR: 4 written" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and len(list(sr_dir.iterdir())) == 4
    sha = json.loads((ckpt / "meta.json").read_text())["weights_sha256"]
    for row in rows:
        assert main(["sr-read", "--json", row["dicom_sr"]]) == 0
        f = json.loads(capsys.readouterr().out)
        assert abs(100 * f["p_malignant"] - 100 * row["p_malignant"]) <= 0.01
        assert len(f["regions"]) == len(row["boxes"]) == 3  # --sr-min-score 0 keeps every box
        np.testing.assert_allclose([r["box_xyxy"] for r in f["regions"]], row["boxes"], atol=0.5)
        assert f["algorithm"]["model_sha256"] == sha and f["algorithm"]["sr_min_score"] == "0"
    assert main(["sr-read", rows[0]["dicom_sr"]]) == 0
    assert "malignancy probability" in capsys.readouterr().out


def test_sr_read_on_a_file_that_is_not_our_sr_is_one_line(setup, capsys):
    _, images = setup
    image = sorted(images.glob("*.dcm"))[0]
    assert main(["sr-read", str(image)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (f"mammodetr sr-read: {image}: not a DICOM SR written by mammodetr "
                                    "(not a Comprehensive SR; Modality MG)")
