"""The ``mammodetr`` command line: one subcommand per module in this package.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only
when their command runs, so ``mammodetr --help`` stays fast and a missing optional dependency only affects the
command that needs it.

Errors: a user error (a bad path or value, an unreadable input: ``ValueError``/``OSError``) is one line on
stderr and exit code 2; anything else is an internal failure, one line and exit code 1. ``--debug`` adds the
traceback to either, and turns on mammodetr's DEBUG log lines (such as a decoder's own report on a corrupt file).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("mammodetr.cli.synth", "generate a synthetic mammography dataset (DICOM or PNG + table)"),
    "prepare": ("mammodetr.cli.prepare", "convert a dataset (coco/csv/mias/cbis-ddsm/vindr) into a prepared folder"),
    "split": ("mammodetr.cli.split", "patient-level, label-stratified train/val/test split"),
    "train": ("mammodetr.cli.train", "train a multi-task DETR model"),
    "pretrain": ("mammodetr.cli.pretrain", "self-supervised pretraining of a backbone on unlabelled images"),
    "cv": ("mammodetr.cli.cv", "k-fold cross-validation: a run per fold, out-of-fold predictions in one report"),
    "predict": ("mammodetr.cli.predict", "predict malignancy and lesion boxes for images"),
    "export": ("mammodetr.cli.export", "export a checkpoint to ONNX for onnxruntime (needs mammodetr[onnx])"),
    "sr-read": ("mammodetr.cli.sr_read", "print the findings of a DICOM SR written by predict --dicom-sr"),
    "evaluate": ("mammodetr.cli.evaluate", "compute metrics and write a report for a dataset split"),
    "compare": ("mammodetr.cli.compare", "compare runs in a Table-1-style table with DeLong tests"),
    "gradcam": ("mammodetr.cli.gradcam", "Grad-CAM heatmaps on the malignancy logit"),
    "serve": ("mammodetr.cli.serve", "reader-assist viewer in the browser (research use only)"),
    "demo": ("mammodetr.cli.demo", "synthetic data -> prepare -> split -> train -> evaluate, offline"),
}
# Commands whose progress is worth an INFO line per step (epochs, phases); the others log warnings only.
_CHATTY = {"train", "pretrain", "cv", "demo", "evaluate"}


def _module(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = argparse.ArgumentParser(prog="mammodetr", description=__doc__.splitlines()[0], parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        # Only the chosen command's module is imported to fill in its arguments.
        if name == command:
            _module(name).add_arguments(p)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        # "[Errno 30] Read-only file system: 'runs/x'" -> "runs/x: Read-only file system"
        text = f"{exc.filename}: {exc.strerror}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    else:
        text = str(exc)
    text = " ".join(text.split())
    return text or type(exc).__name__


def _setup_logging(command: str, debug: bool = False) -> None:
    timed = command in ("train", "pretrain", "cv", "demo")
    fmt = "%(asctime)s %(levelname)s %(message)s" if timed else "%(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO if command in _CHATTY else logging.WARNING, format=fmt, stream=sys.stderr)
    if debug:  # our own details (e.g. a decoder's log lines and tracebacks for a corrupt file), not every library's
        logging.getLogger("mammodetr").setLevel(logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    args = build_parser(command).parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    debug = getattr(args, "debug", False)
    _setup_logging(args.command, debug)
    try:
        return int(_module(args.command).run(args) or 0)
    except KeyboardInterrupt:
        print(f"mammodetr {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        if debug:
            traceback.print_exc()
        print(f"mammodetr {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            traceback.print_exc()
        print(f"mammodetr {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              f"(run with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1
