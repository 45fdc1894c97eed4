"""``mammodetr train``: defaults (the paper's recipe) <- --config YAML <- flags <- --set key=value."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# flag -> (config path, type, help). Flags left unset do not override the YAML.
FLAGS: dict[str, tuple[str, type, str]] = {
    "--data": ("data.path", str, "prepared dataset folder (mammodetr prepare + split)"),
    "--backbone": ("model.backbone", str, "resnet50 | convnextv2_tiny | mambavision_t | dinov3_vitb16 | any timm name"),
    "--pretrained": ("model.pretrained", str, "none | hub | /path/to/weights (default hub)"),
    "--out": ("train.out", str, "run folder"),
    "--epochs": ("train.epochs", int, "maximum epochs (paper: 400)"),
    "--batch-size": ("train.batch_size", int, "global batch size (paper: 32)"),
    "--accum-steps": ("train.accum_steps", int, "gradient accumulation steps"),
    "--lr": ("optim.lr", float, "learning rate (paper: 1e-4)"),
    "--weight-decay": ("optim.weight_decay", float, "AdamW weight decay"),
    "--backbone-lr-mult": ("optim.backbone_lr_mult", float, "backbone lr multiplier"),
    "--grad-clip": ("optim.grad_clip", float, "max gradient norm (0 = off)"),
    "--schedule": ("optim.schedule", str, "cosine | step | constant"),
    "--patience": ("train.patience", int, "early-stopping patience in epochs (paper: 150)"),
    "--monitor": ("train.monitor", str, "validation metric(s) for best/early stop, e.g. auc,recall25 or loss"),
    "--eval-every": ("train.eval_every", int, "validate every N epochs"),
    "--image-size": ("data.image_size", int, "model input side (paper: 512)"),
    "--augment": ("data.augment", str, "augmentation preset: none | light | strong"),
    "--workers": ("data.workers", int, "DataLoader workers per process"),
    "--precision": ("train.precision", str, "fp32 | bf16 | fp16"),
    "--seed": ("train.seed", int, "random seed"),
    "--device": ("train.device", str, "auto | cpu | cuda"),
    "--feature-levels": ("model.feature_levels", int, "backbone levels fed to the decoder"),
    "--num-queries": ("model.num_queries", int, "object queries (paper: 3)"),
    "--max-steps-per-epoch": ("train.max_steps_per_epoch", int, "cap steps per epoch (smoke runs)"),
}
SWITCHES: dict[str, tuple[str, str]] = {
    "--letterbox": ("data.letterbox", "letterbox instead of plain resize"),
    "--channels-last": ("train.channels_last", "channels-last memory format"),
    "--compile": ("train.compile", "torch.compile the model"),
    "--tensorboard": ("train.tensorboard", "write TensorBoard logs"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="FILE.yaml", help="YAML config layer(s), applied in order")
    for flag, (_, typ, help_text) in FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=help_text)
    for flag, (_, help_text) in SWITCHES.items():
        p.add_argument(flag, action="store_true", default=None, help=help_text)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. model.d_model=128")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from RUN_DIR/checkpoints/last")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _flag_overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    items = [(flag, spec[0]) for flag, spec in FLAGS.items()] + [(flag, spec[0]) for flag, spec in SWITCHES.items()]
    for flag, path in items:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is None:
            continue
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def resolve_config(args: argparse.Namespace):
    from mammodetr.training.config import RunConfig, apply_overrides, load_yaml, parse_assignments

    if args.resume:
        stored = Path(args.resume) / "config.json"
        if not stored.is_file():
            raise ValueError(f"{stored}: not found; --resume needs a run folder written by mammodetr train")
        cfg = RunConfig.from_dict(json.loads(stored.read_text(encoding="utf-8")))
        cfg.train.out = str(args.resume)
    else:
        cfg = RunConfig()
    for path in args.config:
        apply_overrides(cfg, load_yaml(path))
    apply_overrides(cfg, _flag_overrides(args))
    apply_overrides(cfg, parse_assignments(args.set))
    if args.resume:
        cfg.train.out = str(args.resume)
    cfg.validate()
    if not cfg.data.path and not args.print_config:
        raise ValueError("no dataset: pass --data DATASET (a folder written by mammodetr prepare + split)")
    return cfg


def run(args: argparse.Namespace) -> int:
    from mammodetr.training.engine import NonFiniteLossError
    from mammodetr.training.trainer import format_summary, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        cfg = resolve_config(args)
    except ValueError as exc:
        print(f"mammodetr train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    try:
        summary = train(cfg, resume=bool(args.resume), progress=not args.no_progress)
    except NonFiniteLossError as exc:
        print(f"mammodetr train: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0 if not summary["stopped"].startswith("interrupted") else 130
