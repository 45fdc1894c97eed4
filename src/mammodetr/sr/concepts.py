"""The coded concepts and fixed texts of a mammodetr SR, written once for the writer and the reader.

Codes come from DICOM PS3.16: CID 6048 "Mammography CAD Calculated Value Types" gives "Probability of cancer"
(image level) and "Certainty of Finding" (a box's score); findings and sites are SNOMED CT. The concepts that
pydicom's code dictionary knows are taken from it; the one it lacks is spelled out.
"""

from __future__ import annotations

import functools

__all__ = ["ALGORITHM_NAME", "RESEARCH_ONLY", "SERIES_DESCRIPTION", "SERIES_NUMBER", "SHA_PARAMETER",
           "MIN_SCORE_PARAMETER", "DEFAULT_MIN_SCORE", "code"]

ALGORITHM_NAME = "mammodetr"
RESEARCH_ONLY = "research use only, not for diagnosis"
# Series Description is LO (64 characters at most).
SERIES_DESCRIPTION = f"{ALGORITHM_NAME} AI findings: {RESEARCH_ONLY}"
# Series numbers of AI results are local convention; a high number keeps the SR after the images in most viewers.
SERIES_NUMBER = 9901
# Algorithm Parameters (TEXT) items are "key=value"; the reader parses them back.
SHA_PARAMETER = "model_sha256"
MIN_SCORE_PARAMETER = "sr_min_score"
# When a checkpoint records no operating threshold for its boxes (none does yet), boxes scoring at least this go
# into the SR.
DEFAULT_MIN_SCORE = 0.5


@functools.cache
def _table() -> dict:
    from pydicom.sr.codedict import codes as c
    from pydicom.sr.coding import Code

    return {
        "report_title": c.DCM.ImagingMeasurementReport,  # (126000, DCM)
        "procedure": c.SCT.Mammography,  # (71651007, SCT)
        "observer_device": c.DCM.Device,  # (121007, DCM)
        "p_cancer": c.DCM.ProbabilityOfCancer,  # (111047, DCM), CID 6048
        "box_score": c.DCM.CertaintyOfFinding,  # (111012, DCM), CID 6048
        "percent": c.UCUM.Percent,  # (%, UCUM)
        "image_finding": Code("254837009", "SCT", "Malignant neoplasm of breast"),
        "region_finding": c.SCT.Lesion,  # (52988006, SCT)
        "site": c.SCT.Breast,  # (76752008, SCT)
        "L": c.SCT.Left,  # (7771000, SCT)
        "R": c.SCT.Right,  # (24028007, SCT)
        "comment": c.DCM.Comment,  # (121106, DCM)
    }


def code(name: str):
    """The ``pydicom.sr.coding.Code`` named ``name`` (pydicom is imported on first use: it is optional)."""
    return _table()[name]
