"""``mammodetr predict``: malignancy probability and lesion boxes for raw image files."""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM/PNG/TIFF files or folders")
    parser.add_argument("--out", required=True, help="predictions.jsonl to write")
    parser.add_argument("--overlay", metavar="DIR", help="also write images with boxes and scores drawn")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from mammodetr.checkpoint import load_model
    from mammodetr.evaluation.predict import predict_files
    from mammodetr.evaluation.predictions import PredictionError, write_predictions

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        model, config = load_model(args.checkpoint)
        results = predict_files(model.to(args.device), config, args.inputs, batch_size=args.batch_size,
                                device=args.device, overlay_dir=args.overlay)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    path = write_predictions(args.out, results)
    n_err = sum(isinstance(r, PredictionError) for r in results)
    print(f"wrote {path}: {len(results) - n_err} predictions, {n_err} failed")
    return 0 if len(results) > n_err or not results else 1
