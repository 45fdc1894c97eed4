"""``mammodetr synth``: write a synthetic mammography dataset (DICOM or 16-bit PNG) plus ``table.csv``.

The generator's knobs (``--p-normal``, ``--lesion-size``, ...) are the fields of
:class:`~mammodetr.data.synth.SynthOptions`, with its defaults and help texts.
"""

from __future__ import annotations

import argparse
import dataclasses

from mammodetr.cli.options import add_dataclass_flags, default_of, given
from mammodetr.data.synth import SynthOptions, generate_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size, fmt, seed = (default_of(generate_dataset, k) for k in ("image_size", "fmt", "seed"))
    parser.add_argument("--out", required=True, help="output folder (images/ and table.csv are written there)")
    parser.add_argument("--patients", type=int, default=20, help="number of patients, four views each (default: 20)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=size,
                        help=f"image height and width in pixels (default: {size[0]} {size[1]}; a full field is "
                             f"about 3000 2400)")
    parser.add_argument("--format", choices=("dicom", "png"), default=fmt, help=f"image format (default: {fmt})")
    parser.add_argument("--seed", type=int, default=seed, help=f"random seed; output is deterministic given it "
                                                               f"(default: {seed})")
    parser.add_argument("--jpeg2000", action="store_true", help="DICOM only: JPEG 2000 lossless compression")
    add_dataclass_flags(parser, SynthOptions)
    parser.add_argument("--contrast-scale", type=float, default=1.0,
                        help="multiply the three lesion contrasts (<1 makes lesions subtler; default: 1.0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    options = dataclasses.replace(SynthOptions(), **given(args, SynthOptions))
    if args.contrast_scale != 1.0:
        options = dataclasses.replace(options, **{k: getattr(options, k) * args.contrast_scale for k in
                                                  ("benign_contrast", "malignant_contrast", "calc_contrast")})
    table = generate_dataset(args.out, n_patients=args.patients, image_size=tuple(args.size), fmt=args.format,
                             seed=args.seed, options=options, jpeg2000=args.jpeg2000, progress=not args.no_progress)
    print(f"wrote {args.patients * 4} images and {table}")
    return 0
