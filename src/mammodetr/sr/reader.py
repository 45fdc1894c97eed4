"""Read back the findings of an SR written by :mod:`mammodetr.sr.writer` (``mammodetr sr-read``).

Only what the SR says is returned: the referenced image's UIDs, the malignancy probability, the regions with
their scores, the algorithm and the flags. Patient attributes are never read into the result, so printing it
reveals nothing about the patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .concepts import ALGORITHM_NAME, MIN_SCORE_PARAMETER, SHA_PARAMETER, code

__all__ = ["SRRegion", "SRFindings", "read_sr", "format_findings"]

_COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@dataclass
class SRRegion:
    """One planar ROI group.

    Attributes:
        polyline: (N, 2) graphic data, (column, row) in the source image's pixels.
        graphic_type: "POLYLINE" for the boxes written here.
        score: the box's score in [0, 1] (its "Certainty of Finding" / 100), None if absent.
        sop_class_uid, sop_instance_uid: the image the region is drawn on.
    """

    polyline: np.ndarray
    graphic_type: str
    score: float | None
    sop_class_uid: str
    sop_instance_uid: str

    @property
    def box_xyxy(self) -> np.ndarray:
        """(4,) x1, y1, x2, y2: the polyline's bounding box."""
        return np.r_[self.polyline.min(axis=0), self.polyline.max(axis=0)]


@dataclass
class SRFindings:
    """What an SR written by mammodetr holds (no patient attribute).

    Attributes:
        path: the SR file.
        sop_instance_uid, series_instance_uid, study_instance_uid: the SR's own UIDs (the study is its source's).
        series_description, verification_flag, completion_flag, preliminary_flag: as written.
        algorithm: ``name``, ``version``, ``model_sha256``, ``sr_min_score`` (strings, as written).
        p_malignant: the image-level probability in [0, 1] ("Probability of cancer" / 100).
        source_sop_class_uid, source_sop_instance_uid: the image the image-level finding is about.
        evidence: (study, series, SOP instance, SOP class) UIDs listed as evidence.
        regions: one per box.
        comments: the text ("Comment") items.
    """

    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    series_description: str
    verification_flag: str
    completion_flag: str
    preliminary_flag: str
    algorithm: dict[str, str]
    p_malignant: float
    source_sop_class_uid: str
    source_sop_instance_uid: str
    evidence: list[tuple[str, str, str, str]]
    regions: list[SRRegion] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("regions", "path", "evidence")}
        out["path"] = str(self.path)
        out["evidence"] = [list(e) for e in self.evidence]
        out["regions"] = [{"box_xyxy": r.box_xyxy.tolist(), "polyline": r.polyline.tolist(),
                           "graphic_type": r.graphic_type, "score": r.score, "sop_class_uid": r.sop_class_uid,
                           "sop_instance_uid": r.sop_instance_uid} for r in self.regions]
        return out


def _not_ours(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a DICOM SR written by {ALGORITHM_NAME} ({why})")


def _open(path: Path):
    """The highdicom SR of ``path`` and its TID 1500 content, or one-line errors."""
    import highdicom as hd
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        raise _not_ours(path, "not a DICOM file") from None
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file is one line
        raise _not_ours(path, f"unreadable DICOM: {type(exc).__name__}") from None
    if str(ds.get("SOPClassUID", "")) != _COMPREHENSIVE_SR:
        modality = str(ds.get("Modality", "") or "unknown")
        raise _not_ours(path, f"not a Comprehensive SR; Modality {modality}")
    try:
        sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    except Exception as exc:  # noqa: BLE001
        raise _not_ours(path, f"SR content not readable: {type(exc).__name__}") from None
    if not isinstance(sr.content, hd.sr.MeasurementReport):
        raise _not_ours(path, "not a TID 1500 Measurement Report")
    return sr


def _algorithm(group) -> dict[str, str]:
    """Algorithm Identification (TID 4019) of a measurement group: name, version and key=value parameters."""
    from highdicom.sr import CodedConcept
    from highdicom.sr.utils import find_content_items

    names = {"111001": "name", "111003": "version"}
    out: dict[str, str] = {}
    for item in find_content_items(group[0], value_type="TEXT"):
        concept = CodedConcept.from_dataset(item.ConceptNameCodeSequence[0])
        if concept.scheme_designator != "DCM":
            continue
        if concept.value in names:
            out[names[concept.value]] = str(item.TextValue)
        elif concept.value == "111002":  # Algorithm Parameters
            key, _, value = str(item.TextValue).partition("=")
            out[key] = value
    return out


def _percent(group, name: str) -> float | None:
    values = group.get_measurements(name=code(name))
    return float(values[0].value) / 100.0 if values else None


def _region(group) -> SRRegion:
    roi = group.roi
    ref = roi.ContentSequence[0].ReferencedSOPSequence[0]
    return SRRegion(np.asarray(roi.value, dtype=np.float64), str(roi.GraphicType), _percent(group, "box_score"),
                    str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID))


def read_sr(path: str | Path) -> SRFindings:
    """Findings of an SR written by mammodetr.

    Raises:
        ValueError: one line naming the file when it is not such an SR (not DICOM, another SOP class or
            template, no image-level finding by mammodetr).
    """
    from highdicom.sr.utils import find_content_items

    path = Path(path)
    sr = _open(path)
    report = sr.content
    groups = report.get_image_measurement_groups(finding_type=code("image_finding"))
    if not groups:
        raise _not_ours(path, "no image-level malignancy finding")
    image = groups[0]
    algorithm = _algorithm(image)
    if algorithm.get("name") != ALGORITHM_NAME:
        raise _not_ours(path, f"made by another algorithm: {algorithm.get('name', 'none named')}")
    p = _percent(image, "p_cancer")
    if p is None or not image.source_images:
        raise _not_ours(path, "the image-level finding has no probability or no source image")
    source = image.source_images[0]
    regions = [_region(g) for g in report.get_planar_roi_measurement_groups(finding_type=code("region_finding"))]
    comments = [str(i.TextValue) for i in find_content_items(report[0], name=code("comment"), value_type="TEXT")]
    return SRFindings(
        path=path, sop_instance_uid=str(sr.SOPInstanceUID), series_instance_uid=str(sr.SeriesInstanceUID),
        study_instance_uid=str(sr.StudyInstanceUID), series_description=str(sr.get("SeriesDescription", "")),
        verification_flag=str(sr.VerificationFlag), completion_flag=str(sr.CompletionFlag),
        preliminary_flag=str(sr.get("PreliminaryFlag", "")), algorithm=algorithm, p_malignant=p,
        source_sop_class_uid=str(source.referenced_sop_class_uid),
        source_sop_instance_uid=str(source.referenced_sop_instance_uid),
        evidence=[tuple(str(u) for u in e) for e in sr.get_evidence()], regions=regions, comments=comments)


def format_findings(f: SRFindings) -> str:
    """Human-readable lines (no patient attribute)."""
    alg = f.algorithm
    lines = [
        f"{f.path}: {ALGORITHM_NAME} SR {f.sop_instance_uid}",
        f"  algorithm: {alg.get('name')} {alg.get('version', '?')}, model SHA-256 {alg.get(SHA_PARAMETER, '?')}",
        f"  flags: {f.verification_flag}, {f.completion_flag}, {f.preliminary_flag}; {f.series_description}",
        f"  source image: SOP Instance {f.source_sop_instance_uid} (class {f.source_sop_class_uid}), "
        f"study {f.study_instance_uid}",
        f"  malignancy probability: {100 * f.p_malignant:.2f} %",
        f"  regions (box score >= {alg.get(MIN_SCORE_PARAMETER, '?')}): {len(f.regions)}",
    ]
    for i, r in enumerate(f.regions, 1):
        x1, y1, x2, y2 = r.box_xyxy
        score = "?" if r.score is None else f"{100 * r.score:.2f} %"
        lines.append(f"    {i}. score {score}, box x {x1:.1f}-{x2:.1f}, y {y1:.1f}-{y2:.1f} px ({r.graphic_type}, "
                     f"{len(r.polyline)} points)")
    lines += [f"  note: {c}" for c in f.comments]
    return "\n".join(lines)
