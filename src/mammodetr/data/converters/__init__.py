"""Dataset converters: each turns one public format into :class:`~mammodetr.data.records.Conversion`.

Every converter is a function ``convert(input_path, **options) -> Conversion`` whose records carry boxes in
ORIGINAL image pixels (xyxy, top-left origin) and whose problems name the file/row and what was wrong.
Modules are imported only when their source is used.
"""

from __future__ import annotations

import csv
import importlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mammodetr.data.records import Conversion

SOURCES: dict[str, str] = {
    "coco": "mammodetr.data.converters.coco",
    "csv": "mammodetr.data.converters.csv_table",
    "mias": "mammodetr.data.converters.mias",
    "cbis-ddsm": "mammodetr.data.converters.cbis_ddsm",
    "vindr": "mammodetr.data.converters.vindr",
}


def convert(source: str, input_path: str | Path, **options) -> Conversion:
    """Run the converter for ``source`` (one of :data:`SOURCES`) on ``input_path``.

    Raises:
        ValueError: unknown source, or an input that cannot be a dataset of that source (message names it).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    module = importlib.import_module(SOURCES[source])
    conversion = module.convert(Path(input_path), **options)
    conversion.source = source
    return conversion


def normalise_laterality(value) -> str | None:
    v = "" if value is None else str(value).strip().upper()
    return {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}.get(v)


def normalise_split(value) -> str | None:
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
