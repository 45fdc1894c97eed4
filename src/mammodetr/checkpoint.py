"""Checkpoints: ``model.safetensors`` + ``config.json`` (+ ``training_state.pt``) in one folder.

The model is rebuilt from the folder alone (``config.json`` holds the resolved run config). Writes are
atomic at the folder level: everything goes into ``<name>.tmp`` first, then the previous folder is moved
to ``<name>.old``, the new one into place, and ``.old`` removed. A kill at any point leaves either the
new or the previous checkpoint loadable; ``resolve_checkpoint`` falls back to ``.old`` when needed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"


class CheckpointError(ValueError):
    """A checkpoint folder that is missing or cannot be used."""


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP and torch.compile wrap the module; the file must hold the plain module's keys.
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    config: dict,
    *,
    meta: dict | None = None,
    training_state: dict | None = None,
) -> Path:
    """Atomically write a checkpoint folder.

    Args:
        directory: target folder (e.g. ``run/checkpoints/best``).
        model: the model (DDP/compiled wrappers are unwrapped).
        config: the resolved run config as a plain dict (must contain ``model``).
        meta: epoch, metrics and the like, stored in ``config.json`` under ``meta``.
        training_state: optimizer/scheduler/scaler/RNG state; only tensors, numbers, strings, lists and
            dicts, so it loads with ``weights_only=True``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    _write_json(tmp / CONFIG_FILE, {**config, "meta": meta or {}})
    if training_state is not None:
        torch.save(training_state, tmp / STATE_FILE)
    _fsync_dir(tmp)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its ``checkpoints/best``).

    Falls back to ``<name>.old`` when a save was interrupted between its two renames.
    """
    path = Path(path)
    candidates = [path]
    if (path / "checkpoints").is_dir():
        candidates = [path / "checkpoints" / "best", path / "checkpoints" / "last"]
    for c in candidates:
        for d in (c, c.with_name(c.name + ".old")):
            if (d / MODEL_FILE).is_file() and (d / CONFIG_FILE).is_file():
                return d
    raise CheckpointError(f"{path}: no checkpoint found (expected {MODEL_FILE} and {CONFIG_FILE}, or a run folder)")


def read_config(path: str | Path) -> dict:
    ckpt = resolve_checkpoint(path)
    try:
        return json.loads((ckpt / CONFIG_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: not valid JSON ({exc})") from exc


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint folder (or run folder) and load its weights strictly.

    Returns:
        (model in eval mode, the resolved config dict stored with it).
    """
    from safetensors.torch import load_file

    from mammodetr.models import ModelConfig, build_model

    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    if "model" not in config:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: has no 'model' section")
    model_cfg = ModelConfig.from_dict({**config["model"], "pretrained": "none"})  # weights come from the file
    model = build_model(model_cfg)
    try:
        state = load_file(str(ckpt / MODEL_FILE), device=str(map_location))
    except Exception as exc:
        raise CheckpointError(f"{ckpt / MODEL_FILE}: not a readable safetensors file ({exc})") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt}: weights do not fit the stored config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(map_location).eval(), config


def load_training_state(path: str | Path) -> dict:
    ckpt = resolve_checkpoint(path)
    f = ckpt / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{ckpt}: has no {STATE_FILE} (a weights-only checkpoint cannot be resumed)")
    return torch.load(f, map_location="cpu", weights_only=True)
