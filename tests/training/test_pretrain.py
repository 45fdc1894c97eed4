"""mammodetr pretrain: SimSiam on unlabelled images; the loss falls, the weights load into train, resume is exact."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mammodetr.cli import main as cli
from mammodetr.config import ModelConfig
from mammodetr.models.backbone import build_backbone
from mammodetr.models.detr import build_model
from mammodetr.training import pretrain as pretrain_mod

TINY = ["--backbone", "test_convnext", "--image-size", "64", "--batch-size", "6", "--workers", "0", "--device", "cpu",
        "--proj-dim", "32", "--pred-dim", "8", "--warmup-epochs", "0", "--no-progress"]


def _pretrain(data, out, *extra):
    return cli(["pretrain", "--data", str(data), "--out", str(out), *TINY, *extra])


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_the_weights_load_into_train(tiny_dataset, tmp_path):
    out = tmp_path / "ssl"
    assert _pretrain(tiny_dataset, out, "--epochs", "16", "--lr", "1e-2") == 0
    losses = _losses(out)
    # Negative cosine: lower is better. Epoch to epoch it is noisy on 18 images, so means of 4 are compared.
    assert len(losses) == 16 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    info = json.loads((out / "backbone.json").read_text())
    # 6 patients x 4 views, split 0.5/0.25/0.25: the test split is left out of pretraining
    test_images = sum(im["split"] == "test" for im in json.loads((tiny_dataset / "annotations.json").read_text())
                      ["images"])
    assert info["images"] == 24 - test_images and info["epochs_done"] == 16 and info["backbone"] == "test_convnext"
    saved = load_file(str(out / "backbone.safetensors"))
    model = build_model(ModelConfig(backbone="test_convnext", pretrained=str(out / "backbone.safetensors"),
                                    d_model=32, nheads=4, dec_layers=2, dim_feedforward=64))
    body = model.backbone.body.state_dict()
    assert saved.keys() == body.keys()
    for k, v in saved.items():
        assert torch.equal(body[k], v), k
    fresh = build_backbone("test_convnext").body.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in saved.items())  # pretraining changed the weights
    run = tmp_path / "run"
    assert cli(["train", "--data", str(tiny_dataset), "--out", str(run), "--backbone", "test_convnext",
                "--pretrained", str(out / "backbone.safetensors"), "--image-size", "64", "--batch-size", "4",
                "--workers", "0", "--epochs", "1", "--no-progress", "--set", "model.d_model=32",
                "--set", "model.dec_layers=2", "--set", "model.dim_feedforward=64"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["optim"]["backbone_lr_mult"] == 0.1  # auto: a pretrained backbone keeps DETR's 0.1


def test_resume_after_ctrl_c_equals_a_straight_run(tiny_dataset, tmp_path, monkeypatch):
    assert _pretrain(tiny_dataset, tmp_path / "straight", "--epochs", "2") == 0
    original, calls = pretrain_mod.SimSiam.forward, {"n": 0}

    def interrupting(self, view1, view2):
        calls["n"] += 1
        if calls["n"] == 3 + 1:  # 18 images, batch 6: 3 steps per epoch; the 2nd step of epoch 2
            raise KeyboardInterrupt
        return original(self, view1, view2)

    monkeypatch.setattr(pretrain_mod.SimSiam, "forward", interrupting)
    assert _pretrain(tiny_dataset, tmp_path / "split", "--epochs", "2") == 130
    monkeypatch.setattr(pretrain_mod.SimSiam, "forward", original)
    assert cli(["pretrain", "--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    a, b = (load_file(str(tmp_path / r / "backbone.safetensors")) for r in ("straight", "split"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "split")


def test_a_folder_of_image_files_is_prepared_once_and_used(tiny_dataset, tmp_path):
    raw = tiny_dataset.parent / "raw" / "images"
    out = tmp_path / "ssl"
    assert _pretrain(raw, out, "--epochs", "1", "--batch-size", "8") == 0
    info = json.loads((out / "backbone.json").read_text())
    assert info["source"] == "image files" and info["images"] == 24
    cached = sorted((out / "cache").rglob("*.npy"))
    assert len(cached) == 24 and all("p_" not in f.name for f in cached)  # numbered, never named after patients
    assert cli(["pretrain", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0  # the cache is reused
    assert sorted((out / "cache").rglob("*.npy")) == cached and len(_losses(out)) == 2


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "1"], "already holds a pretraining run"),
    (["--batch-size", "64"], "batch_size 64"),
    (["--precision", "fp8"], "precision must be"),
])
def test_user_errors_are_one_line(tiny_dataset, tmp_path, capsys, argv, message):
    out = tmp_path / "ssl"
    if message.startswith("already"):
        assert _pretrain(tiny_dataset, out, "--epochs", "1") == 0
    capsys.readouterr()
    assert _pretrain(tiny_dataset, out, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert cli(["pretrain", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"), *TINY]) == 2
