"""``mammodetr prepare``: convert a dataset into a prepared folder (16-bit PNGs + COCO annotations + report)."""

from __future__ import annotations

import argparse
import sys


def _birads_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated BI-RADS categories like 4,5, got {text!r}")
    if not values or any(v < 0 or v > 6 for v in values):
        raise argparse.ArgumentTypeError(f"BI-RADS categories must be 0-6, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mammodetr.data.converters import SOURCES

    parser.add_argument("--source", required=True, choices=list(SOURCES), help="input dataset format")
    parser.add_argument("--input", required=True, help="CSV/JSON file or dataset folder (see docs/data.md)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--images-dir", default=None, help="folder the table's image paths are relative to")
    parser.add_argument("--max-side", type=int, default=2048, help="cap on the long side (0 = no cap)")
    parser.add_argument("--flip-to", default="none", choices=["L", "R", "none"],
                        help="flip every breast to lie on this side of the image (default: keep)")
    parser.add_argument("--side-source", default="tag", choices=["tag", "image"],
                        help="where the breast's side comes from when flipping (tag: laterality, else pixels)")
    parser.add_argument("--no-crop", action="store_true", help="keep the whole image (no breast crop)")
    parser.add_argument("--crop-margin", type=float, default=0.02)
    parser.add_argument("--frame", type=int, default=None, help="frame to take from multi-frame DICOMs")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU cores)")
    parser.add_argument("--allow-for-processing", action="store_true",
                        help="accept DICOM 'FOR PROCESSING' (raw detector) images")
    parser.add_argument("--vindr-positive-birads", type=_birads_list, default=(4, 5),
                        help="VinDr: BI-RADS categories counted as malignant (default 4,5)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from mammodetr.data.converters import convert
    from mammodetr.data.prepare import prepare_dataset
    from mammodetr.data.preprocess import PrepareOptions

    try:
        options = PrepareOptions(
            crop=not args.no_crop,
            crop_margin=args.crop_margin,
            flip_to=None if args.flip_to == "none" else args.flip_to,
            side_source=args.side_source,
            max_side=args.max_side or None,
            allow_for_processing=args.allow_for_processing,
            frame=args.frame,
        )
        extra = {"images_dir": args.images_dir} if args.images_dir else {}
        if args.source == "vindr":
            extra["positive_birads"] = args.vindr_positive_birads
        conversion = convert(args.source, args.input, **extra)
    except ValueError as exc:
        print(f"mammodetr prepare: {exc}", file=sys.stderr)
        return 2
    report = prepare_dataset(conversion, args.out, options, workers=args.workers, progress=not args.no_progress)
    labels = ", ".join(f"{k} {v}" for k, v in report["labels"].items())
    print(f"prepared {report['images_prepared']} of {report['images_in_source']} images into {args.out} "
          f"({labels}; {report['images_with_boxes']} with boxes, {report['boxes']} boxes; "
          f"{report['images_reused_from_earlier_run']} reused, {report['images_skipped']} skipped, "
          f"{len(report['problems'])} problems; {report['seconds']:.1f} s)")
    print(f"report: {args.out}/prepare_report.json")
    return 0 if report["images_prepared"] > 0 else 1
