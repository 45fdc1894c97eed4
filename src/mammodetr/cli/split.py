"""``mammodetr split``: patient-level, label-stratified train/val/test split of a prepared dataset."""

from __future__ import annotations

import argparse

from mammodetr.cli.options import default_of
from mammodetr.data.split import format_counts, split_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset folder (holding annotations.json)")
    fractions, seed = default_of(split_dataset, "fractions"), default_of(split_dataset, "seed")
    parser.add_argument("--fractions", type=float, nargs=3, default=fractions, metavar=("TRAIN", "VAL", "TEST"),
                        help=f"split fractions, summing to 1 (default: {' '.join(map(str, fractions))})")
    parser.add_argument("--seed", type=int, default=seed, help=f"random seed (default: {seed})")


def run(args: argparse.Namespace) -> int:
    summary = split_dataset(args.data, args.fractions, args.seed)
    if summary["official_test_kept"]:
        print("kept the dataset's official test split; validation carved out of training by patient")
        if summary["patients_moved_to_test"]:
            print(f"{summary['patients_moved_to_test']} patient(s) had images in both official splits: "
                  "all their images are in test")
    print(format_counts(summary["counts"]))
    print(f"wrote split into {args.data}/annotations.json (report: {args.data}/split_report.json)")
    return 0
