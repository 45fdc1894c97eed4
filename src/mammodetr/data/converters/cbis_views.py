"""CBIS-DDSM duplicate views: one mammogram stored under both a ``Mass-`` and a ``Calc-`` series folder.

CBIS-DDSM split the DDSM cases into a mass and a calcification collection, so a view holding both kinds of lesion
was converted twice (``Mass-Training_P_…_RIGHT_CC`` and ``Calc-Training_P_…_RIGHT_CC``); its abnormality ids are
numbered across the two CSVs. Kept apart, each copy carries only its own boxes: the model learns to call the other
lesions background, and the view counts twice in the metrics. Two copies are one view when patient, side, view and
official split agree and the DICOM headers confirm it: the same SOP Instance UID, or the same pixel matrix (rows x
columns; the copies have different UIDs but come from one film scan). Copies that differ in size stay apart and are
reported.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Optional

from mammodetr.data.records import Problem

__all__ = ["DicomHeader", "merge_duplicate_views"]


class DicomHeader(NamedTuple):
    """What the converter reads from an image's header (``stop_before_pixels``)."""

    rows: int
    columns: int
    sop_instance_uid: Optional[str]

    @property
    def size(self) -> tuple[int, int]:
        return self.rows, self.columns


def _same_image(a: DicomHeader, b: DicomHeader) -> bool:
    if a.sop_instance_uid and a.sop_instance_uid == b.sop_instance_uid:
        return True
    return a.size == b.size


def _absorb(into: dict, other: dict) -> None:
    into["labels"].extend(other["labels"])
    into["boxes"].extend(other["boxes"])
    into["kinds"] |= other["kinds"]
    into["density"] = into["density"] or other["density"]
    into["copies"] = into.get("copies", 1) + other.get("copies", 1)


def merge_duplicate_views(images: dict[str, dict], problems: list[Problem]) -> tuple[dict[str, dict], int]:
    """Fold the copies of each view into one entry carrying every box, label and lesion kind.

    Args:
        images: Per image key, the converter's entry (``patient``, ``laterality``, ``view``, ``split``, ``header``
            a :class:`DicomHeader`, ``labels``, ``boxes``, ``kinds``, ``density``). Not modified.
        problems: Copies kept apart because their headers disagree are reported here.

    Returns:
        ``(entries, merged)``: the entries by key (a view keeps the key that sorts first), and how many copies were
        folded into another.
    """
    groups: dict[tuple, list[str]] = defaultdict(list)
    for key in sorted(images):
        e = images[key]
        if e["laterality"] and e["view"]:
            groups[(e["patient"], e["laterality"], e["view"], e["split"])].append(key)
    out = {key: dict(e, labels=list(e["labels"]), boxes=list(e["boxes"]), kinds=set(e["kinds"]))
           for key, e in images.items()}
    merged = 0
    for keys in groups.values():
        kept: list[str] = []
        for key in keys:
            target = next((k for k in kept if _same_image(images[k]["header"], images[key]["header"])), None)
            if target is None:
                if kept:
                    problems.append(_kept_apart(key, kept[0], images))
                kept.append(key)
                continue
            _absorb(out[target], out.pop(key))
            merged += 1
    return out, merged


def _kept_apart(key: str, first: str, images: dict[str, dict]) -> Problem:
    # The other copy is named by its collection only: its path would repeat the patient's identifier.
    a, b = images[key]["header"], images[first]["header"]
    other = first.replace("\\", "/").split("/")[0].split("-")[0]
    return Problem(key, f"the {other}- copy of this view (same patient, side, view and split) is {b.rows}x{b.columns}"
                        f" but this one {a.rows}x{a.columns}: not the same mammogram, kept apart", "note",
                   paths=(key,))
