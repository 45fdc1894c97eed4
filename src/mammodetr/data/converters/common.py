"""Cell cleaning and CSV reading shared by the converters."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mammodetr.data.laterality import normalise_laterality
from mammodetr.data.records import DUPLICATE_ROW, Problem

__all__ = ["DUPLICATE_ROW", "clean_text", "normalise_laterality", "normalise_split", "read_csv_rows", "read_utf8_text"]


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
    problems: list[Problem] | None = None,
) -> Iterator[tuple[int, str, dict]]:
    """Yield ``(line_no, where, row)`` per data row of a CSV; ``where`` = "<file> row <n>" for problem reports.

    The file must be UTF-8 (a byte-order mark is allowed); anything else is a ValueError naming the file, the line
    and the encoding to save it in (:func:`read_utf8_text`). Headers are cleaned and lower-cased (or passed through
    ``header``); a missing header or required column is a ValueError naming the file (and ``hint``, e.g. where the
    schema is documented). With ``problems``, a row whose cells all equal an earlier row's (after
    :func:`clean_text`) is dropped and reported there (action :data:`DUPLICATE_ROW`): a repeated box row would
    otherwise become a second, identical ground-truth box.
    """
    header = header or (lambda h: clean_text(h).lower())
    reader = csv.DictReader(io.StringIO(read_utf8_text(path, "CSV table"), newline=""))
    if reader.fieldnames is None:
        raise ValueError(f"{path}: empty CSV (no header)")
    reader.fieldnames = [header(h) for h in reader.fieldnames]
    missing = [c for c in required if c not in reader.fieldnames]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}{hint}")
    seen: dict[tuple, int] = {}
    for line_no, row in enumerate(reader, start=2):
        where = f"{path.name} row {line_no}"
        if problems is not None:
            cells = tuple(clean_text(v) for v in row.values() if not isinstance(v, list))
            first = seen.setdefault(cells, line_no)
            if first != line_no:
                problems.append(Problem(where, f"exact duplicate of row {first}", DUPLICATE_ROW))
                continue
        yield line_no, where, row


def read_utf8_text(path: Path, what: str = "file") -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped).

    Raises:
        ValueError: ``"<path> line <n>: ..."`` for UTF-16/32, binary data or another 8-bit encoding, saying what it
            looks like and to save it as UTF-8.
    """
    raw = Path(path).read_bytes()
    for bom, name in _BOMS:
        if raw.startswith(bom):
            raise ValueError(f"{path} line 1: the {what} is {name} text; save it as UTF-8 (for example with "
                             f"iconv -f {name} -t UTF-8), with or without a byte-order mark")
    bad = None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.start
    nul = raw.find(b"\x00")  # valid UTF-8, but never in a text table: UTF-16 without a BOM, or binary data
    if nul >= 0 and (bad is None or nul < bad):
        bad = nul
    if bad is None:
        return text
    line = raw.count(b"\n", 0, bad) + 1
    column = bad - (raw.rfind(b"\n", 0, bad) + 1) + 1
    raise ValueError(f"{path} line {line}: the {what} is not UTF-8 text (byte 0x{raw[bad]:02x} at column {column}); "
                     f"{_looks_like(raw)}")


_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"), (b"\xff\xfe", "UTF-16LE"),
         (b"\xfe\xff", "UTF-16BE"))


def _looks_like(raw: bytes) -> str:
    """What a file that is not UTF-8 probably is, and how to convert it."""
    sample = raw[:65536]
    even, odd = sample[0::2], sample[1::2]
    for name, zeros, chars in (("UTF-16LE", odd, even), ("UTF-16BE", even, odd)):
        # ASCII text in UTF-16: every other byte is NUL
        if zeros and zeros.count(0) > 0.9 * len(zeros) and chars.count(0) < 0.1 * len(chars):
            return (f"it looks like {name} without a byte-order mark; save it as UTF-8 (for example with "
                    f"iconv -f {name} -t UTF-8)")
    if b"\x00" in sample or sum(b < 9 or 13 < b < 32 for b in sample) > len(sample) // 100:
        return "it looks like binary data, not a text table"
    return ("it looks like Windows-1252 / Latin-1 (Excel's plain 'CSV' on Windows); save it as 'CSV UTF-8' or "
            "convert it with iconv -f WINDOWS-1252 -t UTF-8")
