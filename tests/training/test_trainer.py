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


def _interrupt_and_resume(tiny_dataset, tmp_path, monkeypatch, *extra):
    """A straight 2-epoch run, and the same run stopped by Ctrl-C in epoch 2 then resumed: (straight, split)."""
    assert _train(tiny_dataset, tmp_path / "straight", "--epochs", "2", "--augment", "light", *extra) == 0
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
    assert _train(tiny_dataset, tmp_path / "split", "--epochs", "2", "--augment", "light", *extra) == 130
    monkeypatch.setattr(crit.SetCriterion, "forward", original)
    meta = json.loads((tmp_path / "split" / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["interrupted"] and meta["epoch"] == 1 and meta["batch_in_epoch"] == 1
    assert cli(["train", "--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    _assert_same(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    return tmp_path / "straight", tmp_path / "split"


def test_resume_equals_straight_run(tiny_dataset, tmp_path, monkeypatch):
    _interrupt_and_resume(tiny_dataset, tmp_path, monkeypatch)


@pytest.mark.parametrize("aid", [
    ["--ema", "0.9"],
    ["--balance"],
    ["--task-balance", "uncertainty", "--det-warmup-epochs", "1.5"],
    ["--task-balance", "gradnorm", "--set", "tasks.gradnorm_every=1", "--log-every", "1", "--det-layers", "mean"],
], ids=["ema", "balance", "uncertainty", "gradnorm"])
def test_resume_equals_straight_run_with_each_small_data_aid(tiny_dataset, tmp_path, monkeypatch, aid):
    straight, split = _interrupt_and_resume(tiny_dataset, tmp_path, monkeypatch, *aid)
    a, b = (torch.load(r / "checkpoints" / "last" / "training_state.pt", weights_only=True) for r in (straight, split))
    assert a["tasks"].keys() == b["tasks"].keys()
    for k in a["tasks"]:
        assert torch.equal(a["tasks"][k], b["tasks"][k]), k  # learned task weights / gradnorm scale resume too
    if "--ema" in aid:
        assert a["ema"] == b["ema"] == {"updates": 6}
        _assert_same(a["model"], b["model"])  # the raw weights, beside the averaged ones in model.safetensors
        averaged = _weights(straight)
        assert any(not torch.equal(averaged[k], v) for k, v in a["model"].items() if k in averaged)


def test_ema_weights_are_what_is_validated_and_saved(tiny_dataset, tmp_path, monkeypatch):
    from mammodetr.training import ema as ema_mod

    seen = {"start": None, "raw": []}
    original_init, original_update = ema_mod.ModelEma.__init__, ema_mod.ModelEma.update

    def init(self, model, decay):
        original_init(self, model, decay)
        seen["start"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model):
        seen["raw"].append({k: v.detach().clone() for k, v in model.state_dict().items()})
        original_update(self, model)

    monkeypatch.setattr(ema_mod.ModelEma, "__init__", init)
    monkeypatch.setattr(ema_mod.ModelEma, "update", update)
    run = tmp_path / "run"
    assert _train(tiny_dataset, run, "--epochs", "2", "--ema", "0.5") == 0
    # The average written by hand from the raw weights after each optimizer step (2 epochs x 3 steps).
    want = {k: v.double() for k, v in seen["start"].items() if v.dtype.is_floating_point}
    for n, raw in enumerate(seen["raw"]):
        d = min(0.5, (1 + n) / (10 + n))
        want = {k: d * v + (1 - d) * raw[k].double() for k, v in want.items()}
    saved = _weights(run)
    assert len(seen["raw"]) == 6
    for k, v in want.items():
        torch.testing.assert_close(saved[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
    state = torch.load(run / "checkpoints" / "last" / "training_state.pt", weights_only=True)
    _assert_same(state["model"], seen["raw"][-1])  # the raw weights travel in the training state
    best = json.loads((run / "checkpoints" / "best" / "meta.json").read_text())["epoch"]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[best - 1]["val_score"] == max(m["val_score"] for m in metrics)


def test_header_and_auto_backbone_multiplier_are_logged_without_progress(tiny_dataset, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="mammodetr.train"):
        assert _train(tiny_dataset, tmp_path / "run", "--epochs", "1") == 0
    text = caplog.text
    ds = json.loads((tiny_dataset / "annotations.json").read_text())["images"]
    n_train = sum(im["split"] == "train" for im in ds)
    assert f"train {n_train} images of" in text and "val " in text
    assert "backbone lr multiplier 1 (auto: training from scratch)" in text
    for topic in ("model     :", "precision :", "schedule  : 3 optimizer steps per epoch", "parameters", "ETA"):
        assert topic in text, topic
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["backbone_lr_mult"] == 1.0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mammodetr.train"):
        assert _train(tiny_dataset, tmp_path / "set", "--epochs", "1", "--set", "optim.backbone_lr_mult=0.5") == 0
    assert "backbone lr multiplier 0.5," in caplog.text and "auto" not in caplog.text.split("optimiser :")[1][:80]


def test_each_task_loss_and_its_gradient_norm_are_logged(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert _train(tiny_dataset, run, "--epochs", "1", "--log-every", "1") == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("train_task_image", "train_task_det", "train_grad_norm_image", "train_grad_norm_det",
                "train_grad_ratio_det_image", "train_w_det", "train_det_lambda"):
        assert key in record and math.isfinite(record[key]), key
    assert record["train_grad_norm_image"] > 0 and record["train_grad_norm_det"] > 0


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
