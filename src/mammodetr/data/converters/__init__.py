"""Dataset converters: each turns one public format into :class:`~mammodetr.data.records.Conversion`.

Every converter is a function ``convert(input_path, **options) -> Conversion`` whose records carry boxes in
ORIGINAL image pixels (xyxy, top-left origin) and whose problems name the file/row and what was wrong.
Optional readers (pydicom for CBIS-DDSM masks) are imported only when a converter uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mammodetr.data.converters import cbis_ddsm, coco, csv_table, mias, vindr
from mammodetr.data.records import Conversion

__all__ = ["SOURCES", "convert"]

SOURCES: dict[str, Callable[..., Conversion]] = {
    "coco": coco.convert,
    "csv": csv_table.convert,
    "mias": mias.convert,
    "cbis-ddsm": cbis_ddsm.convert,
    "vindr": vindr.convert,
}


def convert(source: str, input_path: str | Path, **options) -> Conversion:
    """Run the converter for ``source`` (one of :data:`SOURCES`) on ``input_path``.

    Raises:
        ValueError: unknown source, or an input that cannot be a dataset of that source (message names it).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    conversion = SOURCES[source](Path(input_path), **options)
    conversion.source = source
    return conversion
