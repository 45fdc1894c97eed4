"""``mammodetr pretrain``: self-supervised pretraining of a backbone on unlabelled mammograms (SimSiam).

Every flag is a field of :class:`~mammodetr.config.PretrainConfig` (type, default and help from the dataclass).
The result, ``OUT/backbone.safetensors``, is used with ``mammodetr train --pretrained OUT/backbone.safetensors``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mammodetr.cli.options import add_dataclass_flags, given
from mammodetr.config import PretrainConfig, apply_overrides
from mammodetr.training.pretrain import pretrain


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataclass_flags(p, PretrainConfig)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a pretraining run from RUN_DIR/checkpoints/last "
                                                       "(its config.json, with the flags given on top)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def resolve_config(args: argparse.Namespace) -> PretrainConfig:
    if args.resume:
        stored = Path(args.resume) / "config.json"
        if not stored.is_file():
            raise ValueError(f"{stored}: not found; --resume needs a folder written by mammodetr pretrain")
        cfg = PretrainConfig.from_dict(json.loads(stored.read_text(encoding="utf-8")))
    else:
        cfg = PretrainConfig()
    apply_overrides(cfg, given(args, PretrainConfig))
    if args.resume:
        cfg.out = str(args.resume)
    if not args.print_config:
        cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    summary = pretrain(cfg, resume=bool(args.resume), progress=not args.no_progress)
    print(f"{summary['stopped']} after {summary['epochs_run']} epoch(s) in {summary['seconds']:.0f} s; "
          f"last loss {summary['loss']:.4f}")
    print(f"backbone weights: {summary['backbone_file']}")
    print(f"use them with: mammodetr train --backbone {cfg.backbone} --pretrained {summary['backbone_file']} ...")
    return 0 if not summary["stopped"].startswith("interrupted") else 130
