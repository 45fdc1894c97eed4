import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from mammodetr.checkpoint import load_model, resolve_checkpoint
from mammodetr.cli import main as cli
from mammodetr.config import RunConfig
from tests.training.conftest import TINY_MODEL


def _weights(run, which="last"):
    return load_file(str(run / "checkpoints" / which / "model.safetensors"))


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _train(data, out, *extra):
    return cli(["train", "--data", str(data), "--out", str(out), *TINY_MODEL, *extra])


def test_cli_path_prepare_split_train_evaluate(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert _train(tiny_dataset, run, "--epochs", "2", "--augment", "light") == 0
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_loss_cls", "train_loss_bbox", "train_loss_giou", "train_loss_obj",
                "train_loss_bbox_0", "val_auc", "val_recall25", "val_map50", "val_loss", "train_lr"):
        assert key in records[0], key
    assert all(math.isfinite(r["train_loss"]) for r in records)
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["model"]["backbone"] == "test_convnext" and resolved["data"]["image_size"] == 64
    assert resolved["loss"]["weight_bbox"] == 5.0 and resolved["train"]["patience"] == 150
    model, config = load_model(run)
    assert isinstance(config, RunConfig) and config.data.prepare.crop is True  # the preparation travels with it
    assert RunConfig.from_dict(resolved) == config  # the run folder's config.json is the same config
    out = model(torch.rand(1, 1, 64, 64))
    assert out["pred_boxes"].shape == (1, 3, 4)
    ev = tmp_path / "eval"
    assert cli(["evaluate", "--data", str(tiny_dataset), "--split", "test", "--checkpoint", str(run), "--out", str(ev),
                "--bootstrap", "50"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    expected_keys = ("accuracy", "auc", "sensitivity", "specificity", "f1", "f1_weighted", "iou", "iou_top1",
                     "map50", "map25", "recall25")
    for key in expected_keys:
        assert key in metrics


def test_same_seed_gives_identical_weights(tiny_dataset, tmp_path):
    assert _train(tiny_dataset, tmp_path / "a", "--epochs", "1", "--seed", "3", "--augment", "light") == 0
    assert _train(tiny_dataset, tmp_path / "b", "--epochs", "1", "--seed", "3", "--augment", "light") == 0
    _assert_same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert _train(tiny_dataset, tmp_path / "c", "--epochs", "1", "--seed", "4", "--augment", "light") == 0
    c = _weights(tmp_path / "c")
    assert any(not torch.equal(v, c[k]) for k, v in _weights(tmp_path / "a").items())


def test_resume_equals_straight_run(tiny_dataset, tmp_path, monkeypatch):
    assert _train(tiny_dataset, tmp_path / "straight", "--epochs", "2", "--augment", "light") == 0
    # Second run: Ctrl-C after the first optimizer step of epoch 2, then --resume.
    from mammodetr.models import criterion as crit

    original, calls = crit.SetCriterion.forward, {"train": 0}

    def interrupting_forward(self, outputs, targets):
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] == 3 + 2:  # 3 training batches per epoch (12 images, batch 4): 2nd batch of epoch 2
                raise KeyboardInterrupt
        return original(self, outputs, targets)

    monkeypatch.setattr(crit.SetCriterion, "forward", interrupting_forward)
    assert _train(tiny_dataset, tmp_path / "split", "--epochs", "2", "--augment", "light") == 130
    monkeypatch.setattr(crit.SetCriterion, "forward", original)
    meta = json.loads((tmp_path / "split" / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["interrupted"] and meta["epoch"] == 1 and meta["batch_in_epoch"] == 1
    assert cli(["train", "--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    _assert_same(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_non_finite_loss_stops_with_message_and_keeps_checkpoint(tiny_dataset, tmp_path, capsys, monitor_nan):
    run = tmp_path / "run"
    assert _train(tiny_dataset, run, "--epochs", "1") == 0
    before = _weights(run)
    monitor_nan()
    code = cli(["train", "--resume", str(run), "--epochs", "2", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "epoch 2, step 1" in err and "last good checkpoint" in err
    _assert_same(before, _weights(run))
    load_model(run / "checkpoints" / "last")


@pytest.fixture
def monitor_nan(monkeypatch):
    """Make the criterion return NaN from its next call on."""

    def arm():
        from mammodetr.models import criterion as crit

        original = crit.SetCriterion.forward

        def nan_forward(self, outputs, targets):
            losses = original(self, outputs, targets)
            losses["loss"] = losses["loss"] * float("nan")
            return losses

        monkeypatch.setattr(crit.SetCriterion, "forward", nan_forward)

    return arm


def test_failed_rename_leaves_a_loadable_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    from mammodetr import checkpoint as ckpt_mod

    run = tmp_path / "run"
    assert _train(tiny_dataset, run, "--epochs", "1") == 0
    before = _weights(run)
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # old -> .old done; new -> final fails (as if killed between the renames)
            raise OSError("simulated crash during rename")
        return real_replace(src, dst)

    model, config = load_model(run / "checkpoints" / "last")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    monkeypatch.setattr(ckpt_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        ckpt_mod.save_checkpoint(run / "checkpoints" / "last", model, config)
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    found = resolve_checkpoint(run / "checkpoints" / "last")
    assert found.name == "last.old"
    reloaded, _ = load_model(run / "checkpoints" / "last")
    _assert_same(before, {k: v for k, v in reloaded.state_dict().items() if k in before})


def test_unreadable_image_is_reported_and_skipped(tiny_dataset, tmp_path):
    import shutil

    data = tmp_path / "ds"
    shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns("cache"))
    images = json.loads((data / "annotations.json").read_text())["images"]
    bad = next(im for im in images if im["split"] == "train")
    (data / bad["file_name"]).write_bytes(b"not a png")
    run = tmp_path / "run"
    assert _train(data, run, "--epochs", "1") == 0
    skipped = [json.loads(line) for line in (run / "skipped_samples.jsonl").read_text().splitlines()]
    assert {s["file_name"] for s in skipped} == {bad["file_name"]}
    assert bad["file_name"] in skipped[0]["error"] or "png" in skipped[0]["error"].lower()
    assert (run / "checkpoints" / "last" / "model.safetensors").is_file()


def test_bf16_autocast_and_accumulation_on_cpu(tiny_dataset, tmp_path, capsys):
    assert _train(tiny_dataset, tmp_path / "acc1", "--epochs", "1") == 0
    assert _train(tiny_dataset, tmp_path / "acc2", "--epochs", "1", "--accum-steps", "2", "--precision", "bf16",
                  "--channels-last") == 0
    one = json.loads((tmp_path / "acc1" / "metrics.jsonl").read_text().splitlines()[0])
    two = json.loads((tmp_path / "acc2" / "metrics.jsonl").read_text().splitlines()[0])
    # 12 training images, global batch 4: 3 optimizer steps; with 2 accumulation steps of 2 images, still 3
    assert one["train_optimizer_steps"] == 3 and two["train_optimizer_steps"] == 3
    assert math.isfinite(two["train_loss"]) and two["val_loss"] is not None
    assert cli(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "x"), "--precision", "fp8"]) == 2
    assert "train.precision must be fp32, bf16 or fp16" in capsys.readouterr().err


def test_bf16_on_a_cpu_without_channels_last_says_what_is_faster(tiny_dataset, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="mammodetr.train"):
        assert _train(tiny_dataset, tmp_path / "r", "--epochs", "1", "--max-steps-per-epoch", "1",
                      "--precision", "bf16") == 0
    assert "bf16 on a CPU without --channels-last" in caplog.text
