"""mini-MIAS: 322 PGM films (1024 x 1024, all MLO) labelled by a whitespace table in ``Info.txt``.

Data rows are ``REFNUM BG CLASS [SEVERITY [X Y RADIUS]]`` among free-text lines. X, Y are the lesion centre
with the origin at the BOTTOM-left corner, so the array row is ``1024 - Y``; the box is the square around the
circle of ``RADIUS``, clipped to the image. A REFNUM repeated on several rows has several lesions; an image
with a malignant lesion is malignant. Rows without coordinates or with ``*NOTE 3*`` give a label but no box.
Patients are consecutive pairs (mdb001 + mdb002 = patient 1): odd numbers are right breasts, even left.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from mammodetr.data.records import BoxRecord, Conversion, ImageRecord, Problem, worst_label

MIAS_SIZE = 1024
CLASSES = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM")
_REFNUM = re.compile(r"^mdb(\d{3})$", re.IGNORECASE)
_SEVERITY = {"B": "benign", "M": "malignant"}
_INFO_NAMES = ("info.txt", "readme", "readme.txt", "00readme.txt")


def _find_info(folder: Path) -> Path:
    files = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for name in _INFO_NAMES:
        if name in files:
            return files[name]
    for p in sorted(folder.glob("*.txt")):
        return p
    raise ValueError(f"{folder}: no Info.txt (the MIAS label table) found")


def parse_row(line: str) -> Optional[dict]:
    """Parse one line of the table; None for a line that is not a data row (free text, headers, blanks).

    Returns a dict with ``number`` (int), ``background``, ``cls``, ``severity`` (B/M/None), ``xyr`` (tuple of
    three ints or None) and ``note`` (text found in place of the coordinates, or "").
    """
    tokens = line.split()
    if len(tokens) < 3:
        return None
    m = _REFNUM.match(tokens[0])
    if not m or tokens[1].upper() not in ("F", "G", "D") or tokens[2].upper() not in CLASSES:
        return None
    rest = tokens[3:]
    severity = None
    if rest and rest[0].upper() in _SEVERITY:
        severity = rest[0].upper()
        rest = rest[1:]
    xyr, note = None, ""
    if len(rest) >= 3 and all(re.fullmatch(r"[+-]?\d+(\.\d+)?", t) for t in rest[:3]):
        xyr = tuple(float(t) for t in rest[:3])
        note = " ".join(rest[3:])
    else:
        note = " ".join(rest)
    return {"number": int(m.group(1)), "background": tokens[1].upper(), "cls": tokens[2].upper(),
            "severity": severity, "xyr": xyr, "note": note}


def circle_to_box_xyxy(x: float, y_bottom: float, radius: float, size: int = MIAS_SIZE) -> tuple[float, ...]:
    """Square around the circle, converted from the bottom-left origin to array pixels and clipped."""
    cx, cy = x, size - y_bottom
    x1, y1, x2, y2 = cx - radius, cy - radius, cx + radius, cy + radius
    return (min(max(x1, 0.0), size), min(max(y1, 0.0), size), min(max(x2, 0.0), size), min(max(y2, 0.0), size))


def _image_path(folder: Path, number: int) -> Path:
    stem = f"mdb{number:03d}"
    for name in (f"{stem}.pgm", f"{stem}.PGM", f"{stem}.png", f"{stem}.tif"):
        if (folder / name).exists():
            return folder / name
    return folder / f"{stem}.pgm"


def convert(input_path: Path, *, images_dir: str | Path | None = None, **_options) -> Conversion:
    """Read mini-MIAS.

    Args:
        input_path: the MIAS folder (holding Info.txt and the PGMs), or the Info.txt file itself.
        images_dir: folder of the PGMs when it is not the table's folder.
    """
    path = Path(input_path)
    if path.is_dir():
        info = _find_info(path)
    elif path.is_file():
        info = path
    else:
        raise ValueError(f"{path}: not found")
    folder = Path(images_dir) if images_dir else info.parent
    rows = _read_rows(info)
    problems: list[Problem] = []
    records = [_record(info, folder, number, rows[number], problems) for number in sorted(rows)]
    return Conversion([r for r in records if r is not None], problems, input_root=folder)


def _read_rows(info: Path) -> dict[int, list[dict]]:
    """The table's data rows per REFNUM, each with its ``line`` number."""
    rows: dict[int, list[dict]] = {}
    text = info.read_text(encoding="latin-1")
    for line_no, line in enumerate(text.splitlines(), start=1):
        row = parse_row(line)
        if row is None:
            continue
        row["line"] = line_no
        rows.setdefault(row["number"], []).append(row)
    if not rows:
        raise ValueError(f"{info}: no MIAS data rows (REFNUM BG CLASS ...) found")
    return rows


def _record(info: Path, folder: Path, number: int, rows: list[dict], problems: list[Problem]
            ) -> Optional[ImageRecord]:
    """One film from its rows; None when no row gives a usable label."""
    labels, boxes, seen = [], [], set()
    for row in rows:
        where = f"{info.name} line {row['line']} (mdb{number:03d})"
        if row["cls"] == "NORM":
            labels.append("normal")
            continue
        if row["severity"] is None:
            problems.append(Problem(where, f"class {row['cls']} without severity B/M", "skipped row"))
            continue
        pathology = _SEVERITY[row["severity"]]
        labels.append(pathology)
        if row["xyr"] is None:
            if row["note"] and "NOTE" not in row["note"].upper():
                problems.append(Problem(where, f"unreadable coordinates {row['note']!r}", "no box"))
            continue
        x, y, r = row["xyr"]
        if r <= 0:
            problems.append(Problem(where, f"radius {r:g} is not positive", "no box"))
            continue
        box = circle_to_box_xyxy(x, y, r)
        if (box, pathology) in seen:  # an exact repeat of a row adds nothing
            continue
        seen.add((box, pathology))
        boxes.append(BoxRecord(*box, pathology=pathology, lesion_type=row["cls"]))
    label = worst_label(labels)
    if label is None:
        return None
    return ImageRecord(
        image_path=_image_path(folder, number),
        key=f"mdb{number:03d}",
        patient_id=f"mias-{(number + 1) // 2:03d}",
        label=label,
        laterality="R" if number % 2 == 1 else "L",
        view="MLO",
        boxes=boxes,
        extra={"background": rows[0]["background"], "classes": sorted({r["cls"] for r in rows})},
    )
