"""``mammodetr export``: a checkpoint as an ONNX model for onnxruntime (docs/deployment.md, "ONNX")."""

from __future__ import annotations

import argparse
import sys

from mammodetr.cli.options import add_dataclass_flags, given
from mammodetr.inference.onnx_export import ExportOptions, export_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    parser.add_argument("--out", required=True, metavar="MODEL_ONNX", help="the .onnx file to write")
    add_dataclass_flags(parser, ExportOptions)
    parser.add_argument("--overwrite", action="store_true",
                        help="an existing --out file is moved aside to NAME.replaced-<date>-<time> (never deleted) "
                             "once the new one passed its checks")
    parser.add_argument("--no-verify", action="store_true",
                        help="load weights whose SHA-256 differs from the one recorded (hand-edited weights)")


def run(args: argparse.Namespace) -> int:
    options = ExportOptions(**given(args, ExportOptions))
    result = export_checkpoint(args.checkpoint, args.out, options=options, overwrite=args.overwrite,
                               verify=not args.no_verify)
    if result.replaced is not None:
        print(f"--overwrite: moved the earlier {result.path} to {result.replaced}", file=sys.stderr)
    batch = options.fixed_batch() or "dynamic"
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {options.opset}, batch {batch}, "
          f"{options.precision}) in {result.seconds:.1f} s")
    if result.parity:
        errors = ", ".join(f"{k} {v:.1e}" for k, v in result.parity.items())
        print(f"onnxruntime vs PyTorch on synthetic images, max |difference|: {errors}")
    return 0
