"""The run configuration: one typed tree, with YAML files and CLI flags as layers over the defaults.

``RunConfig`` = model + loss + data + optim + train. Defaults are the paper's where it states them
(512 px, batch 32, lr 1e-4, 400 epochs, patience 150, 3 queries, focal image loss, lambdas 5/2/1).
The choices it does not state are documented here and in docs/training.md.

The resolved config is saved with every run and checkpoint and loads back as the same type:
``RunConfig.from_dict(cfg.to_dict()) == cfg``. ``data.prepare`` records how the training dataset was prepared,
so prediction on raw files repeats exactly that preparation.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from mammodetr.atomic import write_json
from mammodetr.data.model_input import InputGeometry
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.models.config import LossConfig, ModelConfig


@dataclass
class DataConfig:
    """Attributes:
        path: prepared dataset folder (``mammodetr prepare`` + ``mammodetr split``).
        image_size: square model input side (paper: 512).
        letterbox: keep the aspect ratio and pad, instead of the paper's plain resize.
        augment: augmentation preset for training ("none", "light", "strong").
        train_split, val_split: split names used for training and validation.
        workers: DataLoader worker processes per process (0 = load in the main process).
        prepare: how the dataset was prepared (read from its annotations.json by the trainer; prediction on raw
            files repeats it). None for datasets written before this was recorded.
    """

    path: str = ""
    image_size: int = 512
    letterbox: bool = False
    augment: str = "light"
    train_split: str = "train"
    val_split: str = "val"
    workers: int = 4
    prepare: PrepareOptions | None = None

    @property
    def geometry(self) -> InputGeometry:
        """How a prepared image becomes the model input."""
        return InputGeometry(self.image_size, self.letterbox)


@dataclass
class OptimConfig:
    """Attributes:
        lr: AdamW learning rate of the heads (paper: 1e-4).
        backbone_lr_mult: backbone lr = lr * this (DETR practice: 0.1 for a pretrained backbone).
        weight_decay: AdamW weight decay (DETR: 1e-4); not applied to norms and biases.
        grad_clip: max global gradient norm (DETR: 0.1); 0 disables clipping.
        schedule: "cosine" (to ``min_lr_ratio`` * lr), "step" (x0.1 at ``step_epochs``) or "constant".
        warmup_epochs: linear warm-up length.
        min_lr_ratio: the cosine schedule ends at lr * this.
        step_epochs: epochs at which the step schedule multiplies the lr by 0.1.
    """

    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: int = 1
    min_lr_ratio: float = 0.01
    step_epochs: list[int] = field(default_factory=lambda: [300])


@dataclass
class TrainConfig:
    """Attributes:
        out: run folder.
        epochs: maximum epochs (paper: 400).
        batch_size: global batch size (paper: 32) = per-process micro batch x accumulation x processes.
        accum_steps: gradient accumulation steps (so batch 32 fits a small GPU).
        patience: early stopping after this many epochs without improvement of the monitored score (paper: 150).
        monitor: validation metric(s) for best/early stopping: comma-separated names from metrics.json,
            averaged (default "auc,recall25": one classification and one localisation number), or "loss".
        eval_every: validate every N epochs.
        precision: "fp32", "bf16" (CUDA or CPU autocast) or "fp16" (CUDA, with a grad scaler).
        channels_last: channels-last memory format (faster convolutions on GPUs and AMX CPUs).
        compile: ``torch.compile`` the model and the criterion.
        tf32: on CUDA, let float32 matrix products use TF32 tensor cores (as cuDNN convolutions already do):
            several times faster on Ampere and later GPUs, 10-bit mantissa in the products.
        seed: global seed; two CPU runs with the same seed give identical weights.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        tensorboard: also write TensorBoard event files.
        max_steps_per_epoch: cap the steps of an epoch (smoke runs); 0 = no cap.
        log_every: refresh the progress bar's loss every N optimizer steps (reading it waits for the GPU).
        keep_host_memory: on a CPU (Linux, glibc), keep memory freed during training in the process instead of
            returning it to the OS after every step: re-faulting it cost 10-25 % of a 512 px step. The process
            stays at its peak memory while training.
    """

    out: str = "runs/train"
    epochs: int = 400
    batch_size: int = 32
    accum_steps: int = 1
    patience: int = 150
    monitor: str = "auc,recall25"
    eval_every: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    tf32: bool = True
    seed: int = 0
    device: str = "auto"
    tensorboard: bool = False
    max_steps_per_epoch: int = 0
    log_every: int = 20
    keep_host_memory: bool = True


@dataclass
class RunConfig:
    """Everything a run is: the model, its losses, the data, the optimiser and the training loop."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        cfg = cls()
        apply_overrides(cfg, d)
        return cfg

    def validate(self) -> None:
        t = self.train
        if t.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be fp32, bf16 or fp16, got {t.precision!r}")
        if t.batch_size < 1 or t.accum_steps < 1 or t.batch_size % t.accum_steps:
            raise ValueError(f"train.batch_size ({t.batch_size}) must be a positive multiple of "
                             f"train.accum_steps ({t.accum_steps})")
        if t.log_every < 1:
            raise ValueError(f"train.log_every must be at least 1, got {t.log_every}")
        if self.optim.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"optim.schedule must be cosine, step or constant, got {self.optim.schedule!r}")
        if self.data.image_size < 32:
            raise ValueError("data.image_size must be at least 32")


def _coerce(value: Any, hint: Any) -> Any:
    """Turn a YAML/flag value into the field's type (strings from ``--set`` included)."""
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if isinstance(value, str) and origin in (list, tuple, dict):
        value = yaml.safe_load(value)
    if hint is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        return bool(value)
    if hint in (int, float):
        return hint(value)
    if origin is tuple:
        return tuple(value)
    if origin in (list, dict) and not isinstance(value, origin):
        raise ValueError(f"expected a {origin.__name__}, got {value!r}")
    return value


def _section_type(hint: Any) -> type | None:
    """The dataclass type of a field hint (``X`` or ``X | None``), else None."""
    for cand in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(cand) and isinstance(cand, type):
            return cand
    return None


def _updated_section(current: Any, cls: type, value: Any, prefix: str) -> Any:
    """A section (dataclass) with ``value`` applied, or None when ``value`` says none."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        return None
    if not isinstance(value, dict):
        raise ValueError(f"config key '{prefix}' is a section; give a mapping")
    return apply_overrides(current if current is not None else cls(), value, prefix=prefix + ".")


def _new_values(cfg: Any, overrides: dict[str, Any], prefix: str) -> dict[str, Any]:
    hints = get_type_hints(type(cfg))
    names = {f.name for f in fields(cfg)}
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(names))})")
        section_cls = _section_type(hints[key])
        if section_cls is not None:
            out[key] = _updated_section(getattr(cfg, key), section_cls, value, f"{prefix}{key}")
            continue
        try:
            out[key] = _coerce(value, hints[key])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config key '{prefix}{key}': {exc}") from exc
    return out


def apply_overrides(cfg: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Set dataclass fields from a nested dict, recursively; unknown keys are an error naming the key.

    Mutable sections are changed in place and returned; a frozen section (e.g. ``data.prepare``) is rebuilt with
    ``dataclasses.replace`` so its own checks run on the new values, and the new object is returned.
    """
    changes = _new_values(cfg, overrides, prefix)
    if cfg.__dataclass_params__.frozen:
        try:
            return dataclasses.replace(cfg, **changes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config section '{prefix.rstrip('.')}': {exc}") from exc
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["model.d_model=128", "train.epochs=5"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read config ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a mapping of sections")
    return data


def save_resolved(cfg: RunConfig, path: str | Path) -> None:
    write_json(path, cfg.to_dict())
