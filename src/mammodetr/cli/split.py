"""``mammodetr split``: patient-level, label-stratified train/val/test split of a prepared dataset."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset folder (holding annotations.json)")
    parser.add_argument("--fractions", type=float, nargs=3, default=[0.7, 0.15, 0.15],
                        metavar=("TRAIN", "VAL", "TEST"), help="split fractions, summing to 1")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from mammodetr.data.split import format_counts, split_dataset

    try:
        summary = split_dataset(args.data, args.fractions, args.seed)
    except ValueError as exc:
        print(f"mammodetr split: {exc}", file=sys.stderr)
        return 2
    if summary["official_test_kept"]:
        print("kept the dataset's official test split; validation carved out of training by patient")
        if summary["patients_moved_to_test"]:
            print(f"{summary['patients_moved_to_test']} patient(s) had images in both official splits: "
                  "all their images are in test")
    print(format_counts(summary["counts"]))
    print(f"wrote split into {args.data}/annotations.json (report: {args.data}/split_report.json)")
    return 0
