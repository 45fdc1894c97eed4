"""``mammodetr evaluate``: metrics.json + report for one split of a prepared dataset.

``--out`` may not be, lie inside or contain the dataset, the predictions file or the checkpoint, and a folder
that is not empty is refused unless ``--overwrite`` (which moves it aside).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mammodetr.checkpoint import file_sha256, resolve_checkpoint
from mammodetr.cli.options import add_dataclass_flags, default_of, given
from mammodetr.data.ground_truth import load_split
from mammodetr.evaluation.evaluate import evaluate_checkpoint, evaluate_split
from mammodetr.evaluation.report import fmt_pct
from mammodetr.inference.predictions import PredictionSet, read_predictions
from mammodetr.inference.predictor import Predictor
from mammodetr.metrics.classification import threshold_at_sensitivity
from mammodetr.metrics.scoring import EvaluationOptions, align_predictions
from mammodetr.outputs import claim_outputs, move_all_aside

# Set by the command itself, not by flags.
_DERIVED = ("threshold_source", "val_threshold", "val_threshold_source")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset folder (annotations.json + images/)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint or run folder: predict the split first")
    src.add_argument("--predictions", help="predictions.jsonl (boxes in the dataset images' pixels)")
    parser.add_argument("--out", required=True, help="output folder")
    add_dataclass_flags(parser, EvaluationOptions, exclude=_DERIVED, rename={"n_bootstrap": "--bootstrap"})
    parser.add_argument("--val-threshold-from", metavar="PREDICTIONS_OR_CHECKPOINT",
                        help="also report metrics at a threshold chosen on the validation split (predictions "
                             "file of the val split, or a checkpoint) at --val-target-sensitivity")
    parser.add_argument("--val-split", default="val", help="the validation split's name (default: val)")
    parser.add_argument("--val-target-sensitivity", type=float, default=0.90,
                        help="sensitivity the validation threshold must reach (default: 0.9)")
    batch = default_of(Predictor, "batch_size")
    parser.add_argument("--batch-size", type=int, default=batch, help=f"images per forward pass (default: {batch})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="horizontal-flip test-time augmentation (default: as the model was validated, its "
                             "train.tta)")
    parser.add_argument("--no-verify", action="store_true",
                        help="load weights whose SHA-256 differs from the one recorded (hand-edited weights)")
    parser.add_argument("--no-report", action="store_true", help="write metrics.json only")
    parser.add_argument("--overwrite", action="store_true",
                        help="a non-empty --out folder is moved aside to NAME.replaced-<date>-<time> (never deleted) "
                             "instead of being refused")


def _is_predictions_file(source: str) -> bool:
    return Path(source).is_file() and Path(source).suffix in (".jsonl", ".json")


def _predictions_from(source: str, args, split: str) -> PredictionSet:
    path = Path(source)
    if _is_predictions_file(source):
        return read_predictions(path)
    predictor = Predictor.from_checkpoint(path, device=args.device, batch_size=args.batch_size,
                                          verify=not args.no_verify, tta=args.tta)
    return predictor.predict_split(args.data, split)


def _val_threshold(args) -> tuple[float, str]:
    images = load_split(args.data, args.val_split)
    kept, aligned, _ = align_predictions(images, _predictions_from(args.val_threshold_from, args, args.val_split))
    t = threshold_at_sensitivity([im.label for im in kept], [p.p_malignant for p in aligned],
                                 args.val_target_sensitivity)
    return t, f"{args.val_split} split of {args.val_threshold_from}, sensitivity >= {args.val_target_sensitivity:g}"


def _options(args) -> EvaluationOptions:
    options = EvaluationOptions(**given(args, EvaluationOptions, exclude=_DERIVED))
    if args.threshold is not None:
        options = dataclasses.replace(options, threshold_source="--threshold")
    if args.val_threshold_from:
        t, source = _val_threshold(args)
        options = dataclasses.replace(options, val_threshold=t, val_threshold_source=source)
    return options


def _claim_out(args) -> list[Path]:
    """Refuse an --out that would mix with an input or an earlier evaluation, before anything runs."""
    def model(source: str | None) -> Path | None:
        if source is None or _is_predictions_file(source):
            return Path(source) if source else None
        return resolve_checkpoint(source)

    inputs = {"--data": args.data, "--predictions": args.predictions, "--checkpoint": model(args.checkpoint),
              "--val-threshold-from": model(args.val_threshold_from)}
    return claim_outputs({"--out": args.out}, inputs, overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    aside = _claim_out(args)
    options = _options(args)
    predictor = preds = None
    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size,
                                              verify=not args.no_verify, tta=args.tta)
    else:
        preds = read_predictions(args.predictions)
    for line in move_all_aside(aside):  # only once every input has been read
        print(line, file=sys.stderr)
    if predictor is not None:
        result = evaluate_checkpoint(predictor, args.data, args.out, options, split=args.split,
                                     checkpoint=args.checkpoint, report=not args.no_report)
    else:
        source = {"predictions": str(args.predictions), "predictions_hash": file_sha256(args.predictions)}
        result = evaluate_split(args.data, args.out, preds, options, split=args.split, source=source,
                                report=not args.no_report)
    m = result.metrics
    keys = ("accuracy", "auc", "sensitivity", "specificity", "f1", "iou_top1", "map50", "map25", "recall25")
    print(" ".join(f"{k}={fmt_pct(m[k])}%" for k in keys))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
