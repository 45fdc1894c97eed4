"""``mammodetr synth``: write a synthetic mammography dataset (DICOM or 16-bit PNG) plus ``table.csv``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (images/ and table.csv are written there)")
    parser.add_argument("--patients", type=int, default=20, help="number of patients, four views each (default 20)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(256, 208),
                        help="image height and width in pixels (default 256 208; full field is about 3000 2400)")
    parser.add_argument("--format", choices=("dicom", "png"), default="png", help="image format (default png)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; output is deterministic given it")
    parser.add_argument("--jpeg2000", action="store_true", help="DICOM only: JPEG 2000 lossless compression")
    parser.add_argument("--p-normal", type=float, default=None, help="fraction of normal patients (default 0.4)")
    parser.add_argument("--p-benign", type=float, default=None, help="fraction of benign patients (default 0.3)")
    parser.add_argument("--lesion-size", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="lesion diameter range as a fraction of breast width (default 0.10 0.20)")
    parser.add_argument("--contrast-scale", type=float, default=1.0,
                        help="multiply all lesion contrasts (default 1.0; <1 makes lesions subtler)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import sys

    from mammodetr.data.synth import SynthOptions, generate_dataset

    base = SynthOptions()
    changes = {}
    if args.p_normal is not None:
        changes["p_normal"] = args.p_normal
    if args.p_benign is not None:
        changes["p_benign"] = args.p_benign
    if args.lesion_size is not None:
        changes["lesion_size"] = tuple(args.lesion_size)
    if args.contrast_scale != 1.0:
        changes.update(
            benign_contrast=base.benign_contrast * args.contrast_scale,
            malignant_contrast=base.malignant_contrast * args.contrast_scale,
            calc_contrast=base.calc_contrast * args.contrast_scale,
        )
    try:
        options = dataclasses.replace(base, **changes)
        table = generate_dataset(
            args.out, n_patients=args.patients, image_size=tuple(args.size), fmt=args.format, seed=args.seed,
            options=options, jpeg2000=args.jpeg2000, progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"mammodetr synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.patients * 4} images and {table}")
    return 0
