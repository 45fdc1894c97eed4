"""``mammodetr gradcam``: Grad-CAM heatmaps of the malignancy logit for image files."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="DICOM/PNG/TIFF files or folders")
    parser.add_argument("--out", required=True, help="output folder for the overlays")
    parser.add_argument("--target-layer", default=None,
                        help="dotted module path (default: projections.-1, the classifier's input map)")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mammodetr.checkpoint import load_model
    from mammodetr.evaluation.gradcam import gradcam_files

    try:
        model, config = load_model(args.checkpoint)
        records = gradcam_files(model.to(args.device), config, args.images, args.out, device=args.device,
                                target_layer=args.target_layer)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}")
        return 2
    index = Path(args.out) / "gradcam.json"
    index.write_text(json.dumps(records, indent=2) + "\n")
    n_err = sum("error" in r for r in records)
    for r in records:
        print(f"{r['file_name']}: {r.get('overlay') or 'error: ' + r['error']}")
    print(f"wrote {len(records) - n_err} overlays to {args.out} ({n_err} failed)")
    return 0 if len(records) > n_err else 1
