"""``mammodetr gradcam``: Grad-CAM heatmaps of the malignancy logit for image files.

``--out`` gets one overlay per input (mirroring the inputs' folders) and ``gradcam.json``; it may not be, lie
inside or contain an input or the checkpoint, and a folder that is not empty is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mammodetr.atomic import write_json
from mammodetr.checkpoint import resolve_checkpoint
from mammodetr.explain.gradcam import DEFAULT_TARGET_LAYER
from mammodetr.explain.heatmap import explain_files
from mammodetr.inference.inputs import collect_inputs
from mammodetr.inference.predictor import Predictor
from mammodetr.outputs import claim_outputs, move_all_aside


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="DICOM/PNG/TIFF files or folders")
    parser.add_argument("--out", required=True, help="output folder for the overlays")
    parser.add_argument("--target-layer", default=None,
                        help=f"dotted module path (default: {DEFAULT_TARGET_LAYER}, the classifier's input map)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    parser.add_argument("--no-verify", action="store_true",
                        help="load weights whose SHA-256 differs from the one recorded (hand-edited weights)")
    parser.add_argument("--overwrite", action="store_true",
                        help="a non-empty --out folder is moved aside to NAME.replaced-<date>-<time> (never deleted) "
                             "instead of being refused")


def run(args: argparse.Namespace) -> int:
    collect_inputs(args.images)  # a missing input stops here
    inputs = [("", i) for i in args.images] + [("--checkpoint", resolve_checkpoint(args.checkpoint))]
    aside = claim_outputs({"--out": args.out}, inputs, overwrite=args.overwrite)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, verify=not args.no_verify)
    for line in move_all_aside(aside):
        print(line, file=sys.stderr)
    records = explain_files(predictor, args.images, args.out, target_layer=args.target_layer)
    write_json(Path(args.out) / "gradcam.json", records)
    n_err = sum("error" in r for r in records)
    for r in records:
        print(f"{r['file_name']}: {r.get('overlay') or 'error: ' + r['error']}")
    print(f"wrote {len(records) - n_err} overlays to {args.out} ({n_err} failed)")
    return 0 if len(records) > n_err else 1
