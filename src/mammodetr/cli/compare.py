"""``mammodetr compare``: Table-1-style comparison of evaluated runs with DeLong tests."""

from __future__ import annotations

import argparse

from mammodetr.evaluation.compare import compare_runs, comparison_markdown, load_run, write_comparison


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_OR_METRICS",
                        help="evaluation folders (metrics.json + per_image.jsonl) or metrics.json files")
    parser.add_argument("--out", required=True, help="output folder (comparison.md, comparison.json)")
    parser.add_argument("--names", nargs="+", help="column names, one per run (default: folder names)")
    parser.add_argument("--reference", help="run name the DeLong tests compare against (default: the first)")
    parser.add_argument("--bootstrap", type=int, default=2000,
                        help="patient-bootstrap resamples for the AUC-difference interval (0 = off; default: 2000)")


def run(args: argparse.Namespace) -> int:
    if args.names and len(args.names) != len(args.runs):
        raise ValueError(f"{len(args.names)} names for {len(args.runs)} runs")
    runs = [load_run(p, (args.names or [None] * len(args.runs))[i]) for i, p in enumerate(args.runs)]
    result = compare_runs(runs, args.reference, n_bootstrap=args.bootstrap)
    md, _ = write_comparison(result, args.out)
    print(comparison_markdown(result))
    print(f"wrote {md}")
    return 0
