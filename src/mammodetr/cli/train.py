"""``mammodetr train``: defaults (the paper's recipe) <- --config YAML <- flags <- --set key=value.

Every flag below is a field of :class:`~mammodetr.config.RunConfig`; its type, help and default come from the
dataclass, so a default is written in one place only. ``--set section.key=value`` reaches every other field.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_type_hints

from mammodetr.cli.options import add_field_flag, nested
from mammodetr.config import RunConfig, apply_overrides, load_yaml, parse_assignments
from mammodetr.training.engine import NonFiniteLossError
from mammodetr.training.trainer import format_summary, train

# flag -> config path. The type, the help text and the default come from the config dataclasses.
FLAGS: dict[str, str] = {
    "--data": "data.path",
    "--backbone": "model.backbone",
    "--pretrained": "model.pretrained",
    "--out": "train.out",
    "--epochs": "train.epochs",
    "--batch-size": "train.batch_size",
    "--accum-steps": "train.accum_steps",
    "--lr": "optim.lr",
    "--weight-decay": "optim.weight_decay",
    "--backbone-lr-mult": "optim.backbone_lr_mult",
    "--grad-clip": "optim.grad_clip",
    "--schedule": "optim.schedule",
    "--patience": "train.patience",
    "--monitor": "train.monitor",
    "--eval-every": "train.eval_every",
    "--image-size": "data.image_size",
    "--letterbox": "data.letterbox",
    "--augment": "data.augment",
    "--workers": "data.workers",
    "--precision": "train.precision",
    "--channels-last": "train.channels_last",
    "--compile": "train.compile",
    "--tf32": "train.tf32",
    "--tensorboard": "train.tensorboard",
    "--seed": "train.seed",
    "--device": "train.device",
    "--feature-levels": "model.feature_levels",
    "--num-queries": "model.num_queries",
    "--max-steps-per-epoch": "train.max_steps_per_epoch",
    "--ema": "train.ema",
    "--balance": "data.balance",
    "--tta": "train.tta",
    "--log-every": "train.log_every",
    "--keep-host-memory": "train.keep_host_memory",
    "--task-balance": "tasks.method",
    "--det-weight": "tasks.det_weight",
    "--det-layers": "tasks.det_layers",
    "--det-warmup-epochs": "tasks.det_warmup_epochs",
}


def _section_class(path: str) -> tuple[type, str]:
    section, name = path.split(".")
    return get_type_hints(RunConfig)[section], name


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """``--config``, every flag of :data:`FLAGS` and ``--set``: the recipe (``train`` and ``cv`` share them)."""
    p.add_argument("--config", action="append", default=[], metavar="FILE.yaml",
                   help="YAML config layer(s), applied in order")
    for flag, path in FLAGS.items():
        cls, name = _section_class(path)
        add_field_flag(p, cls, name, flag, dest=path.replace(".", "__"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. model.d_model=128")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from RUN_DIR/checkpoints/last")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds an earlier run: its contents are moved aside to "
                        "NAME.replaced-<date>-<time> (never deleted) once the data and the model are ready; without "
                        "--overwrite or --resume an existing, non-empty --out is refused")
    p.add_argument("--no-verify", action="store_true",
                   help="with --resume: load weights whose SHA-256 differs from the one recorded (hand-edited weights)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _flag_overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    for path in FLAGS.values():
        value = getattr(args, path.replace(".", "__"))
        if value is not None:
            section, leaf = path.split(".")
            out.setdefault(section, {}).update(nested(leaf, value))
    return out


def apply_config_arguments(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The layers over ``cfg``, in order: ``--config`` files, then the flags, then ``--set``."""
    for path in args.config:
        apply_overrides(cfg, load_yaml(path))
    apply_overrides(cfg, _flag_overrides(args))
    apply_overrides(cfg, parse_assignments(args.set))
    return cfg


def resolve_config(args: argparse.Namespace) -> RunConfig:
    if args.resume:
        stored = Path(args.resume) / "config.json"
        if not stored.is_file():
            raise ValueError(f"{stored}: not found; --resume needs a run folder written by mammodetr train")
        cfg = RunConfig.from_dict(json.loads(stored.read_text(encoding="utf-8")))
    else:
        cfg = RunConfig()
    apply_config_arguments(cfg, args)
    if args.resume:
        cfg.train.out = str(args.resume)
    cfg.validate()
    if not cfg.data.path and not args.print_config:
        raise ValueError("no dataset: pass --data DATASET (a folder written by mammodetr prepare + split)")
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        cfg.resolve_auto()  # show what the run would use
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite starts it again: pass one of them")
    try:
        summary = train(cfg, resume=bool(args.resume), overwrite=args.overwrite, verify=not args.no_verify,
                        progress=not args.no_progress)
    except NonFiniteLossError as exc:
        print(f"mammodetr train: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0 if not summary["stopped"].startswith("interrupted") else 130
