"""Laterality: spellings of left/right, and which image side the chest wall is on.

Convention (DICOM PS3.3 C.7.6.1.1.1: the first Patient Orientation value is the patient direction of the
image's +x axis): ``"A"`` means the nipple points to the image's right, so the chest wall is on the image's
left (:func:`~mammodetr.data.crop.breast_side` == ``"L"``); ``"P"`` puts the chest wall on the right
(``"R"``). Without Patient Orientation the standard display is assumed (L CC ``A\\R``, R CC ``P\\L``,
L MLO ``A\\F``, R MLO ``P\\F``): a left breast has its chest wall on the image's left, a right breast on the
image's right, so the chest-wall side equals the laterality.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Optional

__all__ = ["normalise_laterality", "chest_wall_side", "view_from_name"]

# "LCC", "R_MLO", "LEFT_CC", "MG_R_CC_ANON", "Calc-Test_P_00038_RIGHT_MLO": a side then a view, standing apart
# from other letters.
_NAME_VIEW = re.compile(r"(?<![A-Z])(LEFT|RIGHT|L|R)[ _.\-]?(CC|MLO)(?![A-Z])")


def normalise_laterality(value: Any) -> Optional[str]:
    """``"L"``/``"R"`` from L, R, LEFT, RIGHT (any case, surrounding spaces ignored); None for anything else."""
    v = "" if value is None else str(value).strip().upper()
    return {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}.get(v)


def chest_wall_side(
    laterality: Optional[str], patient_orientation: Optional[Sequence[Any]]
) -> tuple[Optional[str], str]:
    """The image side (``"L"``/``"R"``) the chest wall is on according to the tags, and what said so.

    Patient Orientation's row direction wins over the laterality, which is read under the standard display
    (see the module docstring).

    Args:
        laterality: ``"L"``, ``"R"`` or None (other values count as unknown).
        patient_orientation: DICOM Patient Orientation values (row direction first), or None.

    Returns:
        ``(side or None, reason)``: ``reason`` names the tag the side comes from, for messages; side is None
        when neither tag tells.
    """
    row_dir = str(patient_orientation[0]).upper() if patient_orientation else ""
    if row_dir.startswith("A"):
        return "L", f"Patient Orientation row direction {row_dir!r}"
    if row_dir.startswith("P"):
        return "R", f"Patient Orientation row direction {row_dir!r}"
    if laterality in ("L", "R"):
        return laterality, f"laterality {laterality} under the standard display"
    return None, "no Patient Orientation row direction and no laterality"


def view_from_name(name: str) -> tuple[Optional[str], Optional[str]]:
    """``(laterality, view)`` spelled in a file name (``LCC``, ``R_MLO``, ``LEFT_CC``, ...), else ``(None, None)``.

    For files whose format carries no tags (PNG, TIFF, JPEG). Only CC and MLO are recognised; a name that
    spells two different views gives ``(None, None)``.
    """
    found = {(m.group(1)[0], m.group(2)) for m in _NAME_VIEW.finditer(str(name).upper())}
    return next(iter(found)) if len(found) == 1 else (None, None)
