"""One prediction -> one Comprehensive SR (TID 1500 Measurement Report) that references its source image.

The content tree (docs/deployment.md, "DICOM SR", draws it): the Measurement Report holds, under
"Imaging Measurements", one image-level group (TID 1501: "Probability of cancer" in %) and one planar ROI group
(TID 1410) per box whose score reaches ``min_score``: a closed 5-point POLYLINE in the source image's pixel
coordinates with the box's "Certainty of Finding" in %. Every group names the algorithm (TID 4019: mammodetr,
its version, the model's SHA-256) and references the source image by SOP Class and Instance UID. A "Comment"
text item and the Series Description say "research use only, not for diagnosis"; Verification Flag is
UNVERIFIED and Preliminary Flag PRELIMINARY.

Pixel coordinates follow DICOM (PS3.3 C.18.6.1.2): (column, row), (0, 0) the top left corner of the top left
pixel, which is the convention of mammodetr's ``boxes_xyxy_px`` (pixel corners), so a box maps without a shift.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammodetr._version import __version__
from mammodetr.inference.predictions import Prediction
from mammodetr.inference.predictor import Predictor
from mammodetr.outputs import write_error

from .concepts import (
    ALGORITHM_NAME,
    DEFAULT_MIN_SCORE,
    MIN_SCORE_PARAMETER,
    RESEARCH_ONLY,
    SERIES_DESCRIPTION,
    SERIES_NUMBER,
    SHA_PARAMETER,
    code,
)
from .source import SourceImage, invalid_keywords, quiet_pydicom, read_source

__all__ = ["require_highdicom", "AlgorithmInfo", "SRSeries", "default_min_score", "box_polyline", "build_sr",
           "write_sr"]

# Boxes may touch the image border; this much beyond it is rounding, more is a box from another image.
_BORDER_TOLERANCE_PX = 0.01


def require_highdicom() -> None:
    """Raise one clear line when the optional SR dependency is missing."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise ValueError("DICOM SR output needs highdicom: pip install 'mammodetr[sr]'") from None


@dataclass(frozen=True)
class AlgorithmInfo:
    """What the SR says made it.

    Attributes:
        version: mammodetr's version.
        model_sha256: SHA-256 of the model weights (checkpoint ``meta.json``), None when not recorded.
    """

    version: str = __version__
    model_sha256: str | None = None

    @classmethod
    def from_meta(cls, meta: Mapping) -> "AlgorithmInfo":
        sha = meta.get("weights_sha256")
        return cls(model_sha256=str(sha) if sha else None)


class SRSeries:
    """Series for the SRs of one run: the SRs of one study's images share a new series, numbered 1, 2, ...

    Without it every SR is the only instance of its own new series.
    """

    def __init__(self) -> None:
        self._by_study: dict[str, list] = {}

    def next(self, study_instance_uid: str) -> tuple[str, int]:
        """(Series Instance UID, Instance Number) for the next SR of this study."""
        from pydicom.uid import generate_uid

        entry = self._by_study.setdefault(study_instance_uid, [generate_uid(), 0])
        entry[1] += 1
        return entry[0], entry[1]


def default_min_score(meta: Mapping) -> float:
    """The checkpoint's recorded ``operating_threshold`` (meta.json) when it has one, else 0.5."""
    value = meta.get("operating_threshold")
    if isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0:
        return float(value)
    return DEFAULT_MIN_SCORE


def box_polyline(box_xyxy: np.ndarray) -> np.ndarray:
    """(4,) pixel-corner box -> (5, 2) closed polyline of (column, row), clockwise from the top left."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float64)


def _check_boxes_fit(source: SourceImage, boxes: np.ndarray) -> None:
    if not len(boxes):
        return
    t = _BORDER_TOLERANCE_PX
    inside = (boxes[:, [0, 2]] >= -t).all() and (boxes[:, [1, 3]] >= -t).all() and \
        (boxes[:, [0, 2]] <= source.columns + t).all() and (boxes[:, [1, 3]] <= source.rows + t).all()
    if not inside:
        raise ValueError(f"{source.path}: the prediction's boxes do not lie inside this {source.columns}x"
                         f"{source.rows} image; were they predicted on another file? (no SR written)")


def build_sr(source: SourceImage, prediction: Prediction, algorithm: AlgorithmInfo, *, min_score: float,
             frame: int | None = None, series: tuple[str, int] | None = None):
    """The SR of one prediction whose boxes are in ``source``'s pixels.

    Args:
        source: the image the prediction was made on.
        prediction: ``p_malignant`` and boxes in the source's pixels (as :meth:`Predictor.iter_files` gives).
        algorithm: version and model SHA-256.
        min_score: boxes scoring at least this become regions.
        frame: 0-based frame of a multi-frame source that was read (referenced as frame ``frame + 1``).
        series: (Series Instance UID, Instance Number); None: a new series, instance 1.

    Returns:
        a ``highdicom.sr.ComprehensiveSR`` with a new SOP Instance UID.
    """
    import highdicom as hd

    boxes = np.asarray(prediction.boxes_xyxy_px, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(prediction.scores, dtype=np.float64).reshape(-1)
    _check_boxes_fit(source, boxes)
    frames = [int(frame or 0) + 1] if source.frames > 1 else None
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME, version=algorithm.version,
        parameters=[f"{SHA_PARAMETER}={algorithm.model_sha256 or 'not recorded'}",
                    f"{MIN_SCORE_PARAMETER}={min_score:g}"])
    sites = [hd.sr.FindingSite(code("site"), laterality=code(source.laterality) if source.laterality else None)]
    groups = [_image_group(source, prediction.p_malignant, algorithm_id, sites, frames)]
    keep = [i for i in range(len(boxes)) if scores[i] >= min_score]
    groups += [_region_group(source, boxes[i], scores[i], n, algorithm_id, sites, frames)
               for n, i in enumerate(keep, 1)]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm), procedure_reported=code("procedure"),
        imaging_measurements=groups, title=code("report_title"))
    report[0].ContentSequence.append(hd.sr.TextContentItem(
        name=code("comment"), value=f"{ALGORITHM_NAME} {algorithm.version}: {RESEARCH_ONLY}.",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    series_uid, instance_number = series or (hd.UID(), 1)
    return hd.sr.ComprehensiveSR(
        evidence=[source.dataset], content=report[0], series_instance_uid=series_uid, series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=ALGORITHM_NAME, is_complete=True,
        is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=ALGORITHM_NAME, software_versions=algorithm.version)


def _observation_context(algorithm: AlgorithmInfo):
    import highdicom as hd
    from pydicom.uid import generate_uid

    # One device UID per model: the same weights are the same observer in every SR.
    uid = generate_uid(entropy_srcs=[ALGORITHM_NAME, algorithm.version, algorithm.model_sha256 or ""])
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=uid, name=ALGORITHM_NAME,
                                                       model_name=f"{ALGORITHM_NAME} {algorithm.version}")
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=code("observer_device"), observer_identifying_attributes=device))


def _image_group(source: SourceImage, p_malignant: float, algorithm_id, sites, frames):
    import highdicom as hd

    measurement = hd.sr.Measurement(name=code("p_cancer"), value=round(100.0 * float(p_malignant), 6),
                                    unit=code("percent"))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="image"),
        finding_type=code("image_finding"), algorithm_id=algorithm_id, finding_sites=sites,
        measurements=[measurement],
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.sop_class_uid, source.sop_instance_uid,
                                                            referenced_frame_numbers=frames)])


def _region_group(source: SourceImage, box: np.ndarray, score: float, number: int, algorithm_id, sites, frames):
    import highdicom as hd

    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=box_polyline(box),
        source_image=hd.sr.SourceImageForRegion(source.sop_class_uid, source.sop_instance_uid,
                                                referenced_frame_numbers=frames))
    measurement = hd.sr.Measurement(name=code("box_score"), value=round(100.0 * float(score), 6),
                                    unit=code("percent"))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"box {number}"),
        referenced_region=region, finding_type=code("region_finding"), algorithm_id=algorithm_id,
        finding_sites=sites, measurements=[measurement])


def write_sr(source_path: str | Path, prediction: Prediction, predictor: Predictor, out_dir: str | Path, *,
             min_score: float | None = None, series: SRSeries | None = None) -> Path:
    """Write the SR of one prediction made on ``source_path`` into ``out_dir``; returns its path.

    The file is named after the SR's own SOP Instance UID (no patient identifier), written atomically, and an
    existing file is never replaced.

    Args:
        source_path: the DICOM image the prediction was made on (boxes in its pixels).
        prediction: from :meth:`Predictor.iter_files` (or ``predict_files``) on that file.
        predictor: supplies the model's SHA-256, the frame read from multi-frame files and the default threshold.
        out_dir: folder for the SR (created).
        min_score: boxes scoring at least this become regions; None: :func:`default_min_score`.
        series: shares one series among the SRs of a study (see :class:`SRSeries`); None: a series of its own.

    Raises:
        ValueError: the source is not a DICOM image with the UIDs an SR needs, or the boxes do not fit it.
        OutputWriteError: the file cannot be written (an OSError).
    """
    require_highdicom()
    source = read_source(source_path)
    threshold = default_min_score(predictor.meta) if min_score is None else float(min_score)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the SR's minimum box score must be in [0, 1], got {threshold}")
    _check_boxes_fit(source, np.asarray(prediction.boxes_xyxy_px, dtype=np.float64).reshape(-1, 4))
    buffer = io.BytesIO()
    try:
        with quiet_pydicom():
            sr = build_sr(source, prediction, AlgorithmInfo.from_meta(predictor.meta), min_score=threshold,
                          frame=predictor.prepare_options.frame,
                          series=series.next(source.study_instance_uid) if series is not None else None)
            sr.save_as(buffer, enforce_file_format=True)
    except ValueError as exc:
        # The messages of pydicom and highdicom quote the offending value, which may identify the patient.
        bad = invalid_keywords(source.dataset)
        which = f"invalid {', '.join(bad)}" if bad else "a value highdicom refuses"
        raise ValueError(f"{source.path}: no SR written: the source header has {which} "
                         f"({type(exc).__name__}; values are not shown)") from None
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _write_new(out / f"{sr.SOPInstanceUID}.dcm", buffer.getvalue())
    except OSError as exc:  # disk full, read-only: no later SR can be written either
        raise write_error(out, exc, "the SR was not written") from exc


def _write_new(path: Path, data: bytes) -> Path:
    """Write through a temporary file, then link it into place: atomic, and an existing file is never replaced.

    Where the file system has no hard links, the file is created exclusively instead (never replacing either).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:
            _write_exclusive(path, data)
    except FileExistsError:
        raise ValueError(f"{path}: exists; not overwritten") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_exclusive(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        try:
            fh.write(data)
        except BaseException:
            fh.close()
            path.unlink(missing_ok=True)
            raise
