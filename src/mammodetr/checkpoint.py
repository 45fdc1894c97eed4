"""Checkpoints: ``model.safetensors`` + ``config.json`` + ``meta.json`` (+ ``training_state.pt``) in one folder.

``config.json`` is the resolved :class:`~mammodetr.config.RunConfig` and nothing else, so the model is rebuilt
from the folder alone and the config loads back as the same type. ``meta.json`` holds what describes this
particular file: package versions, the time, the epoch and validation metrics, and the SHA-256 of
``model.safetensors``, which :func:`load_model` verifies (a flipped byte in the weights is refused, not used).

Writes are atomic at the folder level: everything goes into ``<name>.tmp`` first, then the previous folder is
moved to ``<name>.old``, the new one into place, and ``.old`` removed. A kill at any point leaves either the new
or the previous checkpoint loadable; :func:`resolve_checkpoint` falls back to ``.old`` when needed.

Checkpoints written by mammodetr 0.1.0 (metadata inside ``config.json``, no checksum) still load: see
:func:`read_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

from mammodetr._version import __version__
from mammodetr.atomic import dumps
from mammodetr.config import RunConfig
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.models.detr import build_model
from mammodetr.outputs import write_error

__all__ = ["MODEL_FILE", "CONFIG_FILE", "META_FILE", "STATE_FILE", "CheckpointError", "Checkpoint",
           "save_checkpoint", "resolve_checkpoint", "read_checkpoint", "verify_weights", "load_checkpoint",
           "load_model", "restore_weights", "load_training_state", "file_sha256", "weights_sha256", "unwrap_model",
           "write_checkpoint_folder"]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
STATE_FILE = "training_state.pt"
FORMAT = 2  # 1: mammodetr 0.1.0 (meta inside config.json); 2: config.json + meta.json with the weights' SHA-256


class CheckpointError(ValueError):
    """A checkpoint folder that is missing or cannot be used."""


@dataclass
class Checkpoint:
    """A checkpoint folder's description (the weights are read by :func:`load_model`).

    Attributes:
        path: the checkpoint folder.
        config: the run config the model was trained with.
        meta: versions, time, epoch, validation metrics, ``weights_sha256`` (absent in 0.1.0 checkpoints).
    """

    path: Path
    config: RunConfig
    meta: dict


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in unwrap_model(model).state_dict().items()}


_SAFETENSORS_META = {"format": "pt"}


def weights_sha256(model: nn.Module) -> str:
    """The SHA-256 that ``model.safetensors`` of ``model`` would have (what ``meta.json`` records), in memory."""
    return hashlib.sha256(save(_state(model), metadata=_SAFETENSORS_META)).hexdigest()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and ``torch.compile`` wrappers (whose keys a checkpoint file holds)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def save_checkpoint(directory: str | Path, model: nn.Module, config: RunConfig, *, meta: dict | None = None,
                    training_state: dict | None = None) -> Path:
    """Atomically write a checkpoint folder.

    Args:
        directory: target folder (e.g. ``run/checkpoints/best``).
        model: the model (DDP/compiled wrappers are unwrapped).
        config: the resolved run config.
        meta: epoch, metrics and the like, stored in ``meta.json`` with the versions and the weights' SHA-256.
        training_state: optimizer/scheduler/scaler/RNG state; only tensors, numbers, strings, lists and
            dicts, so it loads with ``weights_only=True``.

    Raises:
        OutputWriteError: the folder cannot be written (disk full, read-only; safetensors and torch report these
            as their own error types, turned into this one line); the temporary folder is removed and an earlier
            checkpoint at ``directory`` is left untouched.
    """
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap_model(model).state_dict().items()}
    return write_checkpoint_folder(directory, state, lambda tmp: {CONFIG_FILE: dumps(config.to_dict()),
                                                                  META_FILE: dumps(_meta(tmp / MODEL_FILE, meta))},
                                   training_state=training_state)


def write_checkpoint_folder(directory: str | Path, weights: dict[str, torch.Tensor], texts, *,
                            training_state: dict | None = None, weights_file: str = MODEL_FILE) -> Path:
    """Atomically write a folder of weights (safetensors), text files and an optional training state.

    Args:
        directory: the target folder.
        weights: tensors for ``weights_file``.
        texts: ``{file name: text}``, or a function of the temporary folder (after the weights are written there)
            returning it, for texts that describe the weights (e.g. their SHA-256).
        training_state: written to ``training_state.pt`` (tensors and plain values only).
        weights_file: the weights' file name.

    Raises:
        OutputWriteError: the folder cannot be written; the temporary folder is removed, an earlier ``directory``
            is kept.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / weights_file),
                  metadata=_SAFETENSORS_META)
        for name, text in (texts(tmp) if callable(texts) else texts).items():
            _write(tmp / name, text)
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)
        _fsync_dir(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception):  # everything above writes a file: its failure is the disk's
            raise write_error(directory, exc, "not saved; the checkpoint there before, if any, is unchanged") from exc
        raise
    _swap_into_place(tmp, directory)
    return directory


def _meta(weights: Path, extra: dict | None) -> dict:
    return {**(extra or {}), "format": FORMAT, "mammodetr": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "weights_sha256": file_sha256(weights)}


def _swap_into_place(tmp: Path, directory: Path) -> None:
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def resolve_checkpoint(path: str | Path, config_file: str = CONFIG_FILE) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its ``checkpoints/best``).

    Falls back to ``<name>.old`` when a save was interrupted between its two renames. ``config_file`` is the JSON
    that marks a complete folder (``pretrain`` checkpoints hold ``pretrain.json``, not a model config).
    """
    path = Path(path)
    candidates = [path]
    if (path / "checkpoints").is_dir():
        candidates = [path / "checkpoints" / "best", path / "checkpoints" / "last"]
    for c in candidates:
        for d in (c, c.with_name(c.name + ".old")):
            if (d / MODEL_FILE).is_file() and (d / config_file).is_file():
                return d
    raise CheckpointError(f"{path}: no checkpoint found (expected {MODEL_FILE} and {config_file}, or a run folder)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))  # 0.1.0 wrote NaN for undefined metrics; json reads it
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _upgraded(raw: dict) -> dict:
    """A stored config with the keys it predates filled in with what their absence meant.

    ``data.prepare`` recorded before background masking existed means "not masked" (a model trained on such a
    dataset must see raw files prepared the same way).
    """
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("prepare"), dict):
        return {**raw, "data": {**data, "prepare": PrepareOptions.upgraded(data["prepare"])}}
    return raw


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Config and metadata of a checkpoint (or run) folder, migrating older layouts.

    0.1.0 stored its metadata under ``"meta"`` inside ``config.json`` and wrote no checksum; the metadata is
    taken from there and ``meta["format"]`` is 1. Keys added to the config later get what their absence meant
    (:func:`_upgraded`).

    Raises:
        CheckpointError: no checkpoint, unreadable files, or a config that is not a valid RunConfig.
    """
    ckpt = resolve_checkpoint(path)
    raw = _read_json(ckpt / CONFIG_FILE)
    if (ckpt / META_FILE).is_file():
        meta = _read_json(ckpt / META_FILE)
    else:
        meta = {"format": 1, **(raw.pop("meta", None) or {})}
    if "model" not in raw:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: has no 'model' section")
    try:
        config = RunConfig.from_dict(_upgraded(raw))
    except ValueError as exc:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: {exc}") from None
    return Checkpoint(ckpt, config, meta)


def verify_weights(ckpt: Checkpoint) -> None:
    """Refuse weights whose SHA-256 differs from the one recorded when they were saved."""
    expected = ckpt.meta.get("weights_sha256")
    if expected is None:
        return
    if file_sha256(ckpt.path / MODEL_FILE) != expected:
        raise CheckpointError(f"{ckpt.path / MODEL_FILE}: the weights do not match the SHA-256 recorded when they "
                              f"were saved (the file was changed or is corrupt); --no-verify loads it anyway")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    verify: bool = True) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model from a checkpoint folder (or run folder) and load its weights strictly.

    Args:
        path: checkpoint or run folder.
        map_location: device for the weights and the model.
        verify: check the weights against the SHA-256 in ``meta.json`` first.

    Returns:
        (model in eval mode, the checkpoint's config and metadata).
    """
    ckpt = read_checkpoint(path)
    if verify:
        verify_weights(ckpt)
    model = build_model(dataclasses.replace(ckpt.config.model, pretrained="none"))  # the weights come from the file
    load_weights(model, ckpt.path / MODEL_FILE, map_location)
    return model.to(map_location).eval(), ckpt


def load_model(path: str | Path, map_location: str | torch.device = "cpu", *,
               verify: bool = True) -> tuple[nn.Module, RunConfig]:
    """:func:`load_checkpoint`, returning ``(model in eval mode, the run config it was trained with)``."""
    model, ckpt = load_checkpoint(path, map_location, verify=verify)
    return model, ckpt.config


def restore_weights(model: nn.Module, path: str | Path, *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint's weights into an existing ``model`` (resuming a run), verified like :func:`load_checkpoint`.

    Raises:
        CheckpointError: no checkpoint, a SHA-256 mismatch (unless ``verify`` is False), or weights that do not fit.
    """
    ckpt = read_checkpoint(path)
    if verify:
        verify_weights(ckpt)
    load_weights(model, ckpt.path / MODEL_FILE)
    return ckpt


def load_weights(model: nn.Module, path: Path, map_location: str | torch.device = "cpu") -> None:
    """Load a ``model.safetensors`` into ``model``; every key must fit."""
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as exc:  # noqa: BLE001 - any reader failure is one clear line
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    missing, unexpected = unwrap_model(model).load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path.parent}: weights do not fit the stored config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


def load_training_state(path: str | Path, config_file: str = CONFIG_FILE) -> dict[str, Any]:
    ckpt = resolve_checkpoint(path, config_file)
    f = ckpt / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{ckpt}: has no {STATE_FILE} (a weights-only checkpoint cannot be resumed)")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the code the file holds: never.
        raise CheckpointError(f"{f}: refused: it holds Python objects that only a full unpickling could load, and "
                              f"that could run code; mammodetr writes training states of tensors and numbers "
                              f"only, so this file was not written by it") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt file is refused in one line
        raise CheckpointError(f"{f}: not a loadable training state ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None
