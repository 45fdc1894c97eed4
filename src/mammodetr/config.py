"""The run configuration: one typed tree, with YAML files and CLI flags as layers over the defaults.

``RunConfig`` = model + loss + tasks + data + optim + train. Defaults are the paper's where it states them
(512 px, batch 32, lr 1e-4, 400 epochs, patience 150, 3 queries, focal image loss, lambdas 5/2/1).
The choices it does not state are documented here and in docs/training.md. A field whose default depends on
others is None ("auto") and is decided by :meth:`RunConfig.resolve_auto` when a run starts; the decided value is
what the run folder records.

The resolved config is saved with every run and checkpoint and loads back as the same type:
``RunConfig.from_dict(cfg.to_dict()) == cfg``. ``data.prepare`` records how the training dataset was prepared,
so prediction on raw files repeats exactly that preparation.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints

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
        augment: augmentation preset for training ("none", "light", "strong", "mammo"; docs/data.md).
        balance: class-balanced sampling: each epoch draws its images with replacement so that malignant and
            other images come equally often (deterministic in (seed, epoch); resumable; sharded across processes).
        train_split, val_split: split names used for training and validation.
        workers: DataLoader worker processes per process (0 = load in the main process).
        prepare: how the dataset was prepared (read from its annotations.json by the trainer; prediction on raw
            files repeats it). None for datasets written before this was recorded.
    """

    path: str = ""
    image_size: int = 512
    letterbox: bool = False
    augment: str = "light"
    balance: bool = False
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
        backbone_lr_mult: backbone lr = lr * this; None = auto: 0.1 for a pretrained backbone (DETR practice),
            1.0 with ``model.pretrained: none`` (a random backbone must learn as fast as the heads). The value used
            is written into the run's config.json.
        weight_decay: AdamW weight decay (DETR: 1e-4); not applied to norms and biases.
        grad_clip: max global gradient norm (DETR: 0.1); 0 disables clipping.
        schedule: "cosine" (to ``min_lr_ratio`` * lr), "step" (x0.1 at ``step_epochs``) or "constant".
        warmup_epochs: linear warm-up length.
        min_lr_ratio: the cosine schedule ends at lr * this.
        step_epochs: epochs at which the step schedule multiplies the lr by 0.1.
    """

    lr: float = 1e-4
    backbone_lr_mult: float | None = None
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
        ema: decay of an exponential moving average of the weights (e.g. 0.999, with the usual warm-up
            min(decay, (1 + n) / (10 + n)) over the first steps); validation, the best checkpoint and export use
            the averaged weights. 0 = off.
        tta: horizontal-flip test-time augmentation in validation (probabilities averaged, boxes mapped back and
            merged); ``predict``, ``evaluate`` and ``serve`` use it by default for this model.
        log_every: every N optimizer steps, read the losses for the progress bar (reading waits for the GPU) and
            measure each task's gradient norm on the last shared layer (read once per epoch, in metrics.jsonl).
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
    ema: float = 0.0
    tta: bool = False
    log_every: int = 20
    keep_host_memory: bool = True


TASK_BALANCE_METHODS = ("fixed", "uncertainty", "gradnorm")


@dataclass
class TaskConfig:
    """How the image loss and the detection losses are combined into the training loss (docs/training.md).

    The criterion's weights (``loss.weight_*``) apply first; then L = w_cls * L_image + w_det * lambda * L_det,
    where L_image = weight_cls * loss_cls and L_det sums weight_bbox * L1 + weight_giou * GIoU + weight_obj * obj
    over the decoder layers.

    Attributes:
        method: "fixed" (w = 1), "uncertainty" (learned task uncertainties, Kendall et al. 2018:
            exp(-s_t) L_t + s_t, s_t trained with the model) or "gradnorm" (every ``gradnorm_every`` steps, w_det
            is set so that both tasks' gradients on the last shared layer have the same norm; smoothed).
        det_weight: lambda, the weight of the detection losses against the image loss; 0 = classification only.
        det_layers: "sum" adds the decoder layers' detection losses (DETR); "mean" averages them, so the number of
            decoder layers does not multiply the detection weight.
        det_warmup_epochs: lambda rises linearly from 0 to ``det_weight`` over this many epochs (0 = from the
            start), so the shared backbone first learns the image task.
        uncertainty_lr: learning rate of the uncertainty weights s_t (scalars, no weight decay).
        gradnorm_every: steps between the gradient-norm measurements of "gradnorm".
        gradnorm_momentum: smoothing of w_det (in log space) between measurements.
    """

    method: Literal["fixed", "uncertainty", "gradnorm"] = "fixed"
    det_weight: float = 1.0
    det_layers: Literal["sum", "mean"] = "sum"
    det_warmup_epochs: float = 0.0
    uncertainty_lr: float = 0.01
    gradnorm_every: int = 10
    gradnorm_momentum: float = 0.9


@dataclass
class RunConfig:
    """Everything a run is: the model, its losses and how the tasks are balanced, the data, the optimiser and the
    training loop."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
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
        if not 0.0 <= t.ema < 1.0:
            raise ValueError(f"train.ema must be in [0, 1) (0 = off), got {t.ema}")
        if t.log_every < 0:
            raise ValueError(f"train.log_every must be >= 0, got {t.log_every}")
        self._validate_tasks()

    def _validate_tasks(self) -> None:
        k = self.tasks
        if k.method not in TASK_BALANCE_METHODS:
            raise ValueError(f"tasks.method must be one of {', '.join(TASK_BALANCE_METHODS)}, got {k.method!r}")
        if k.det_layers not in ("sum", "mean"):
            raise ValueError(f"tasks.det_layers must be sum or mean, got {k.det_layers!r}")
        if k.det_weight < 0 or k.det_warmup_epochs < 0:
            raise ValueError("tasks.det_weight and tasks.det_warmup_epochs must be >= 0")
        if k.gradnorm_every < 1 or not 0.0 <= k.gradnorm_momentum < 1.0:
            raise ValueError("tasks.gradnorm_every must be >= 1 and tasks.gradnorm_momentum in [0, 1)")

    def resolve_auto(self) -> list[str]:
        """Fill the fields whose default depends on others (None = auto), in place; returns what was decided.

        ``optim.backbone_lr_mult``: 0.1 with a pretrained backbone, 1.0 from scratch.
        """
        notes = []
        if self.optim.backbone_lr_mult is None:
            scratch = self.model.pretrained in ("none", "", None)
            self.optim.backbone_lr_mult = 1.0 if scratch else 0.1
            notes.append(f"backbone lr multiplier {self.optim.backbone_lr_mult:g} (auto: "
                         f"{'training from scratch' if scratch else 'pretrained backbone'})")
        return notes


@dataclass
class PretrainConfig:
    """Self-supervised pretraining of a backbone on unlabelled mammograms (``mammodetr pretrain``).

    Attributes:
        data: a prepared dataset folder (labels ignored), or a folder of DICOM/PNG/TIFF files (prepared on the fly
            as ``mammodetr prepare`` would, once, into ``OUT/cache``).
        splits: splits of a prepared dataset to use; None = every image but the test split (test images must not
            shape the model that is tested on them).
        out: run folder (``backbone.safetensors`` + ``backbone.json``, checkpoints, metrics.jsonl).
        backbone: registry name or timm name (as ``train --backbone``).
        backbone_options: extra backbone arguments (as ``model.backbone_options``).
        pretrained: start from these weights ("none", "hub" or a file), e.g. to adapt ImageNet weights to
            mammograms.
        method: the objective; "simsiam" (Chen & He 2021: two views, a predictor, stop-gradient; no negatives, so
            small batches work).
        image_size: square input side (use the size ``train`` will use).
        letterbox: keep the aspect ratio and pad (as ``data.letterbox``).
        epochs: passes over the images.
        batch_size: images per step over all processes (each gives two views); at least 2 per process.
        lr: AdamW learning rate (cosine schedule after the warm-up).
        weight_decay: AdamW weight decay (not on norms and biases).
        warmup_epochs: linear warm-up length.
        proj_dim: width of the projection MLP (3 layers) and of the embedding.
        pred_dim: bottleneck width of the predictor MLP.
        precision: "fp32", "bf16" or "fp16" (CUDA).
        seed: global seed (views are a function of (seed, epoch, image)).
        device: "auto", "cpu" or "cuda".
        workers: DataLoader worker processes.
        max_steps_per_epoch: cap the steps of an epoch (smoke runs); 0 = no cap.
    """

    data: str = ""
    splits: tuple[str, ...] | None = None
    out: str = "runs/pretrain"
    backbone: str = "resnet50"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    pretrained: str = "none"
    method: Literal["simsiam"] = "simsiam"
    image_size: int = 512
    letterbox: bool = False
    epochs: int = 100
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    proj_dim: int = 512
    pred_dim: int = 128
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    max_steps_per_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        return apply_overrides(cls(), d)

    def validate(self) -> None:
        if not self.data:
            raise ValueError("no data: pass --data (a prepared dataset folder, or a folder of DICOM/PNG files)")
        if self.method != "simsiam":
            raise ValueError(f"pretrain method must be simsiam, got {self.method!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")


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
