"""``mammodetr cv``: k-fold cross-validation of a training recipe, pooled into one evaluation report.

Every ``train`` flag sets the recipe (the same flags, generated from the config dataclasses); the fold flags
(``--folds``, ``--val-fraction``, ...) are the fields of :class:`~mammodetr.cv.plan.CVOptions`. Running the same
command again resumes: finished folds are skipped and an interrupted fold continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

from mammodetr.cli.options import add_dataclass_flags, given
from mammodetr.cli.train import add_config_arguments, apply_config_arguments
from mammodetr.config import RunConfig, TrainConfig
from mammodetr.cv.plan import CVOptions
from mammodetr.cv.runner import cross_validate
from mammodetr.cv.summary import format_cv_summary
from mammodetr.training.engine import NonFiniteLossError

DEFAULT_OUT = "runs/cv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    add_dataclass_flags(p, CVOptions, rename={"n_bootstrap": "--bootstrap"})
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe and fold options, then exit")


def resolve(args: argparse.Namespace) -> tuple[RunConfig, CVOptions]:
    cfg = apply_config_arguments(RunConfig(), args)
    if cfg.train.out == TrainConfig().out:  # train's default folder name would mislead here
        cfg.train.out = DEFAULT_OUT
    cfg.validate()
    if not cfg.data.path and not args.print_config:
        raise ValueError("no dataset: pass --data DATASET (a folder written by mammodetr prepare + split)")
    return cfg, CVOptions(**given(args, CVOptions))


def run(args: argparse.Namespace) -> int:
    cfg, options = resolve(args)
    if args.print_config:
        print(json.dumps({"cv": options.to_dict(), "config": cfg.to_dict()}, indent=2))
        return 0
    try:
        summary = cross_validate(cfg, options, progress=not args.no_progress)
    except NonFiniteLossError as exc:
        print(f"mammodetr cv: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"mammodetr cv: interrupted{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
        return 130
    print(format_cv_summary(summary))
    return 0
