"""``mammodetr sr-read``: the findings of DICOM SRs written by ``predict --dicom-sr`` (no patient attribute)."""

from __future__ import annotations

import argparse
import sys

from mammodetr.atomic import dumps
from mammodetr.sr import format_findings, read_sr
from mammodetr.sr.writer import require_highdicom


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="SR files (.dcm)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file instead of text")


def run(args: argparse.Namespace) -> int:
    require_highdicom()
    failed = 0
    for name in args.files:
        try:
            findings = read_sr(name)
        except (ValueError, OSError) as exc:
            failed += 1
            print(f"mammodetr sr-read: {exc}", file=sys.stderr)
            continue
        print(dumps(findings.to_dict(), indent=None) if args.json else format_findings(findings))
    return 2 if failed else 0
