"""Dataset converters: each turns one public format into :class:`~mammodetr.data.records.Conversion`.

Every converter is a function ``convert(input_path, **options) -> Conversion`` whose records carry boxes in
ORIGINAL image pixels (xyxy, top-left origin) and whose problems name the file/row and what was wrong.
Optional readers (pydicom for CBIS-DDSM masks) are imported only when a converter uses them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mammodetr.data.converters import cbis_ddsm, coco, csv_table, mias, vindr
from mammodetr.data.records import Conversion

__all__ = ["SOURCES", "convert", "check_images_found"]

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


def check_images_found(conversion: Conversion, input_path: str | Path) -> None:
    """Stop before preparing when not one image the records name exists: the table points at another folder.

    Raises:
        ValueError: naming the folder the paths were resolved under (the converter's ``images_root`` or
            ``input_root``, never a path from the table, which may hold patient identifiers) and ``--images-dir``.
    """
    records = conversion.records
    # Anything at the path counts as found (a FIFO or a dangling link is then named by prepare for what it is).
    if not records or any(os.path.lexists(r.image_path) for r in records):
        return
    under = conversion.summary.get("images_root") or conversion.input_root
    if under is None:
        under = os.path.commonpath([str(r.image_path.parent) for r in records])
    raise ValueError(f"{input_path}: none of the {len(records)} images the {conversion.source or 'input'} table "
                     f"names was found under {under}; point --images-dir at the folder its image paths start from")
