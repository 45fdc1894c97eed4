"""Cell cleaning and CSV reading shared by the converters."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mammodetr.data.laterality import normalise_laterality

__all__ = ["clean_text", "normalise_laterality", "normalise_split", "read_csv_rows"]


def normalise_split(value) -> str | None:
    """``"train"``/``"val"``/``"test"`` from the usual spellings (training, valid, validation, testing); else None."""
    v = "" if value is None else str(value).strip().lower()
    return {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
            "test": "test", "testing": "test"}.get(v)


def clean_text(value) -> str:
    """Strip surrounding whitespace and remove line breaks inside a CSV cell."""
    return "" if value is None else str(value).replace("\r", "").replace("\n", "").strip()


def read_csv_rows(
    path: Path,
    required: Sequence[str],
    *,
    header: Callable[[str], str] | None = None,
    hint: str = "",
) -> Iterator[tuple[int, str, dict]]:
    """Yield ``(line_no, where, row)`` per data row of a CSV; ``where`` = "<file> row <n>" for problem reports.

    Headers are cleaned and lower-cased (or passed through ``header``); a missing header or required column
    is a ValueError naming the file (and ``hint``, e.g. where the schema is documented).
    """
    header = header or (lambda h: clean_text(h).lower())
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty CSV (no header)")
        reader.fieldnames = [header(h) for h in reader.fieldnames]
        missing = [c for c in required if c not in reader.fieldnames]
        if missing:
            raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}{hint}")
        for line_no, row in enumerate(reader, start=2):
            yield line_no, f"{path.name} row {line_no}", row
