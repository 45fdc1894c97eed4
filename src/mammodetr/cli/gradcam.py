"""``mammodetr gradcam``: Grad-CAM heatmaps of the malignancy logit for image files."""

from __future__ import annotations

import argparse
from pathlib import Path

from mammodetr.atomic import write_json
from mammodetr.explain.gradcam import DEFAULT_TARGET_LAYER
from mammodetr.explain.heatmap import explain_files
from mammodetr.inference.predictor import Predictor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="DICOM/PNG/TIFF files or folders")
    parser.add_argument("--out", required=True, help="output folder for the overlays")
    parser.add_argument("--target-layer", default=None,
                        help=f"dotted module path (default: {DEFAULT_TARGET_LAYER}, the classifier's input map)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    parser.add_argument("--no-verify", action="store_true",
                        help="load weights whose SHA-256 differs from the one recorded (hand-edited weights)")


def run(args: argparse.Namespace) -> int:
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, verify=not args.no_verify)
    records = explain_files(predictor, args.images, args.out, target_layer=args.target_layer)
    write_json(Path(args.out) / "gradcam.json", records)
    n_err = sum("error" in r for r in records)
    for r in records:
        print(f"{r['file_name']}: {r.get('overlay') or 'error: ' + r['error']}")
    print(f"wrote {len(records) - n_err} overlays to {args.out} ({n_err} failed)")
    return 0 if len(records) > n_err else 1
