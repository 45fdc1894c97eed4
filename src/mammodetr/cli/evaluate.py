"""``mammodetr evaluate``: metrics.json + report for one split of a prepared dataset."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset folder (annotations.json + images/)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint or run folder: predict the split first")
    src.add_argument("--predictions", help="predictions.jsonl (boxes in the dataset images' pixels)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.5, help="decision threshold on p_malignant")
    parser.add_argument("--val-threshold-from", metavar="PREDICTIONS_OR_CHECKPOINT",
                        help="also report metrics at a threshold chosen on the validation split (predictions "
                             "file of the val split, or a checkpoint) at --val-target-sensitivity")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--val-target-sensitivity", type=float, default=0.90)
    parser.add_argument("--bootstrap", type=int, default=2000, help="patient bootstrap resamples (0 = no CIs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-dets", type=int, default=None,
                        help="boxes per image kept (K); default: the model's queries / the most in the file")
    parser.add_argument("--images-with-boxes-only", action="store_true",
                        help="detection metrics on images with ground-truth boxes only")
    parser.add_argument("--froc-iou", type=float, default=0.25)
    parser.add_argument("--breast-aggregate", choices=("max", "mean"), default="max")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-report", action="store_true", help="write metrics.json only")


def _val_threshold(args) -> tuple[float, str]:
    from mammodetr.evaluation.classification import threshold_at_sensitivity
    from mammodetr.evaluation.evaluate import align_predictions, load_split

    images = load_split(args.data, args.val_split)
    src = Path(args.val_threshold_from)
    if src.is_file() and src.suffix in (".jsonl", ".json"):
        from mammodetr.evaluation.predictions import read_predictions

        preds = read_predictions(src)
    else:
        from mammodetr.checkpoint import load_model
        from mammodetr.evaluation.predict import predict_prepared

        model, config = load_model(src)
        preds = predict_prepared(model.to(args.device), config, args.data, [im.file_name for im in images],
                                 batch_size=args.batch_size, device=args.device)
    kept, aligned, _ = align_predictions(images, preds)
    t = threshold_at_sensitivity([im.label for im in kept], [p.p_malignant for p in aligned],
                                 args.val_target_sensitivity)
    return t, f"{args.val_split} split of {src}, sensitivity >= {args.val_target_sensitivity:g}"


def run(args: argparse.Namespace) -> int:
    from mammodetr.evaluation.evaluate import EvaluationOptions, evaluate_split
    from mammodetr.evaluation.report import fmt_pct

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    options = EvaluationOptions(
        threshold=args.threshold, threshold_source="default" if args.threshold == 0.5 else "--threshold",
        n_bootstrap=args.bootstrap, seed=args.seed, max_dets=args.max_dets,
        images_with_boxes_only=args.images_with_boxes_only, froc_iou=args.froc_iou,
        breast_aggregate=args.breast_aggregate,
    )
    try:
        if args.val_threshold_from:
            options.val_threshold, options.val_threshold_source = _val_threshold(args)
        result = evaluate_split(args.data, args.out, split=args.split, predictions_path=args.predictions,
                                checkpoint=args.checkpoint, options=options, batch_size=args.batch_size,
                                report=not args.no_report, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}")
        return 2
    m = result.metrics
    keys = ("accuracy", "auc", "sensitivity", "specificity", "f1", "iou_top1", "map50", "map25", "recall25")
    print(" ".join(f"{k}={fmt_pct(m[k])}%" for k in keys))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
