"""The ``mammodetr`` command line: one subcommand per module in this package.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``mammodetr --help`` stays fast
and a missing optional dependency only affects the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("mammodetr.cli.synth", "generate a synthetic mammography dataset (DICOM or PNG + table)"),
    "prepare": ("mammodetr.cli.prepare", "convert a dataset (coco/csv/mias/cbis-ddsm/vindr) into a prepared folder"),
    "split": ("mammodetr.cli.split", "patient-level, label-stratified train/val/test split"),
    "train": ("mammodetr.cli.train", "train a multi-task DETR model"),
    "predict": ("mammodetr.cli.predict", "predict malignancy and lesion boxes for images"),
    "evaluate": ("mammodetr.cli.evaluate", "compute metrics and write a report for a dataset split"),
    "compare": ("mammodetr.cli.compare", "compare runs in a Table-1-style table with DeLong tests"),
    "gradcam": ("mammodetr.cli.gradcam", "Grad-CAM heatmaps on the malignancy logit"),
    "demo": ("mammodetr.cli.demo", "synthetic data -> prepare -> split -> train -> evaluate, offline"),
}


def _module(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammodetr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported to fill in its arguments.
        if name == command:
            _module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    args = build_parser(command).parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    return int(_module(args.command).run(args) or 0)
