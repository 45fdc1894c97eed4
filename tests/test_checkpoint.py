"""Checkpoints: the config loads back as the same type, weights are verified, and 0.1.0 checkpoints still load."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from mammodetr.checkpoint import CheckpointError, load_checkpoint, load_model, read_checkpoint, save_checkpoint
from mammodetr.config import RunConfig
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.models.config import ModelConfig
from mammodetr.models.detr import build_model

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_0_1_0"
TINY = ModelConfig(backbone="test_efficientnet", pretrained="none", d_model=16, nheads=2, dec_layers=2,
                   dim_feedforward=16, n_points=1)


def _saved(tmp_path) -> Path:
    cfg = RunConfig(model=TINY)
    cfg.data.prepare = PrepareOptions(flip_to="L", max_side=512)
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "best", build_model(TINY), cfg, meta={"epoch": 3, "val": {"auc": float("nan")}})


def test_round_trip_config_and_meta(tmp_path):
    path = _saved(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "meta.json", "model.safetensors"]
    raw = json.loads((path / "config.json").read_text())
    assert "meta" not in raw  # the config is the RunConfig alone
    model, ckpt = load_checkpoint(path)
    assert isinstance(ckpt.config, RunConfig) and ckpt.config.data.prepare == PrepareOptions(flip_to="L", max_side=512)
    assert RunConfig.from_dict(raw) == ckpt.config
    assert ckpt.meta["epoch"] == 3 and ckpt.meta["val"]["auc"] is None  # strict JSON: NaN written as null
    assert len(ckpt.meta["weights_sha256"]) == 64 and ckpt.meta["format"] == 2
    assert not model.training


def test_flipped_byte_in_the_weights_is_refused(tmp_path):
    path = _saved(tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's values: still a valid safetensors file
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the SHA-256.*--no-verify"):
        load_model(path)
    model, _ = load_model(path, verify=False)  # hand-edited weights, on purpose
    assert model is not None


def test_checkpoint_of_0_1_0_still_loads_with_the_same_outputs(tmp_path):
    # Written by mammodetr 0.1.0: metadata (with NaN) inside config.json, no meta.json, no checksum.
    ckpt = read_checkpoint(FIXTURE)
    assert ckpt.meta["format"] == 1 and ckpt.meta["epoch"] == 1 and "weights_sha256" not in ckpt.meta
    assert ckpt.config.model.backbone == "test_efficientnet" and ckpt.config.data.prepare.crop is True
    model, config = load_model(FIXTURE)
    expected = json.loads((FIXTURE / "expected_outputs.json").read_text())
    x = torch.linspace(0, 1, 2 * 64 * 64).reshape(2, 1, 64, 64)
    with torch.no_grad():
        out = model(x)
    for key in ("image_logits", "pred_boxes", "pred_obj_logits"):
        torch.testing.assert_close(out[key], torch.tensor(expected[key]), rtol=1e-5, atol=1e-6)
    # saving it again writes the current layout
    copy = save_checkpoint(tmp_path / "migrated", model, config)
    assert read_checkpoint(copy).meta["format"] == 2


def test_preparation_recorded_before_masking_means_unmasked(tmp_path):
    """0.1.0 recorded data.prepare without the masking fields: raw files must not be masked for that model."""
    assert "mask_background" not in json.loads((FIXTURE / "config.json").read_text())["data"]["prepare"]
    old = read_checkpoint(FIXTURE).config.data.prepare
    assert old.mask_background is False and old.crop is True
    # A checkpoint written now records masking either way and reads back as written.
    for masked in (True, False):
        cfg = RunConfig(model=TINY)
        cfg.data.prepare = PrepareOptions(mask_background=masked, mask_margin=0.02)
        path = save_checkpoint(tmp_path / f"m{masked}", build_model(TINY), cfg)
        assert read_checkpoint(path).config.data.prepare == cfg.data.prepare


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = (path / "model.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mammodetr.checkpoint.save_file", full_disk)
    with pytest.raises(OSError, match="(?i)no space left"):
        save_checkpoint(path, build_model(TINY), RunConfig(model=TINY))
    assert (path / "model.safetensors").read_bytes() == before
    assert not path.with_name("best.tmp").exists()
    load_model(path)


def test_missing_and_broken_checkpoints_are_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_model(tmp_path)
    path = _saved(tmp_path)
    shutil.copy(path / "config.json", tmp_path / "config.bak")
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_model(path)
    cfg = json.loads((tmp_path / "config.bak").read_text())
    cfg["model"]["no_such_key"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="no_such_key"):
        load_model(path)
