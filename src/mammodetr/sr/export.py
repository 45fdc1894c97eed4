"""SRs for a stream of predictions (``mammodetr predict --dicom-sr DIR``): one per DICOM input, as it comes.

A failed prediction gets no SR (its error is in the predictions file); a non-DICOM input gets no SR and a note;
a DICOM that an SR cannot reference (no UIDs) gets one line naming the file, and the run goes on; a folder that
cannot be written (disk full, read-only) stops the run with one line saying how many SRs were saved.
The path of each SR written is added to its prediction (``"dicom_sr"`` in the predictions line). The SRs of one
study's images share one new series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from mammodetr.data.io import sniff_path
from mammodetr.inference.predictions import Prediction
from mammodetr.inference.predictor import FileResult, Predictor
from mammodetr.outputs import OutputWriteError

from .writer import SRSeries, default_min_score, require_highdicom, write_sr

__all__ = ["SRExporter"]

log = logging.getLogger(__name__)


class SRExporter:
    """Writes the SR of each :class:`FileResult` given to it into ``out_dir``.

    Args:
        out_dir: folder for the SRs (created on the first one).
        predictor: the predictor that made the results (model SHA-256, frame, default threshold).
        min_score: boxes scoring at least this become regions; None: the checkpoint's operating threshold, or 0.5.
    """

    def __init__(self, out_dir: str | Path, predictor: Predictor, min_score: float | None = None) -> None:
        require_highdicom()
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"{self.out_dir}: exists and is not a folder (--dicom-sr names a folder for the SRs)")
        self.predictor = predictor
        self.min_score = default_min_score(predictor.meta) if min_score is None else float(min_score)
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"--sr-min-score must be in [0, 1], got {self.min_score}")
        self.series = SRSeries()
        self.written = 0
        self.not_dicom = 0
        self.failed = 0

    def __call__(self, r: FileResult) -> Path | None:
        """Write the SR of one result; returns its path, or None (noted in the log) when none is written."""
        if not isinstance(r.result, Prediction):
            return None
        if sniff_path(r.path) != "dicom":
            self.not_dicom += 1
            log.warning("%s: not a DICOM file; no SR written (an SR can only reference a DICOM image)", r.path)
            return None
        try:
            path = write_sr(r.path, r.result, self.predictor, self.out_dir, min_score=self.min_score,
                            series=self.series)
        except OutputWriteError as exc:  # the folder, not this input: stop, saying what was saved
            raise OutputWriteError(f"{exc}; stopped after {self.written} SRs were saved in {self.out_dir}") from exc
        except (ValueError, OSError) as exc:
            self.failed += 1
            log.warning("%s", exc)
            return None
        self.written += 1
        r.result.extra["dicom_sr"] = str(path)
        return path

    def stream(self, results: Iterable[FileResult]) -> Iterator[FileResult]:
        """Pass each result on after writing its SR (so its predictions line can name the SR)."""
        for r in results:
            self(r)
            yield r

    def summary(self) -> str:
        return (f"DICOM SR: {self.written} written to {self.out_dir} (boxes scoring >= {self.min_score:g}), "
                f"{self.not_dicom} non-DICOM input(s) without SR, {self.failed} DICOM input(s) failed")
