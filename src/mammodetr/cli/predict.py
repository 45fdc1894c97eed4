"""``mammodetr predict``: malignancy probability and lesion boxes for raw image files."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

from mammodetr.cli.options import add_dataclass_flags, default_of, given
from mammodetr.inference.exam import ExamOptions, write_exam_records
from mammodetr.inference.inputs import collect_inputs
from mammodetr.inference.overlay import draw_overlay
from mammodetr.inference.predictions import Prediction, PredictionError, write_predictions
from mammodetr.inference.predictor import FileResult, Predictor
from mammodetr.sr import SRExporter
from mammodetr.sr.concepts import DEFAULT_MIN_SCORE

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM/PNG/TIFF files or folders")
    parser.add_argument("--out", required=True, help="predictions.jsonl to write (one line per image, as it is made)")
    parser.add_argument("--overlay", metavar="DIR", help="also write images with boxes and scores drawn")
    parser.add_argument("--dicom-sr", metavar="DIR", help="also write a DICOM SR (TID 1500 Measurement Report) per "
                        "DICOM input into DIR, for a PACS or viewer; research use only (needs mammodetr[sr])")
    parser.add_argument("--sr-min-score", type=float, metavar="S", help="boxes scoring at least S go into the SR "
                        f"(default: the checkpoint's operating threshold, {DEFAULT_MIN_SCORE} when none is recorded)")
    batch = default_of(Predictor, "batch_size")
    parser.add_argument("--batch-size", type=int, default=batch, help=f"images per forward pass (default: {batch})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="horizontal-flip test-time augmentation (default: as the model was validated, its "
                             "train.tta)")
    parser.add_argument("--no-verify", action="store_true",
                        help="load weights whose SHA-256 differs from the one recorded (hand-edited weights)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    exam = parser.add_argument_group("exams (--exam)")
    exam.add_argument("--exam", action="store_true",
                      help="group the inputs into exams (DICOM Study Instance UID, else folder) and also write breast "
                           "and exam records (docs/viewer.md)")
    exam.add_argument("--table", metavar="CSV", help="with --exam: image_path plus laterality, view, study_id columns "
                                                     "(overrides the DICOM tags for the files it lists)")
    add_dataclass_flags(exam, ExamOptions)


def _with_overlays(results: Iterator[FileResult], overlay_dir: str | None) -> Iterator[Prediction | PredictionError]:
    for r in results:
        if overlay_dir is not None and r.raw is not None and isinstance(r.result, Prediction):
            try:
                draw_overlay(r.raw.original, r.result, Path(overlay_dir) / f"{r.path.stem}.png")
            except OSError as e:
                log.warning("%s: overlay not written (%s)", r.path, e)
        yield r.result


def run(args: argparse.Namespace) -> int:
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size,
                                          verify=not args.no_verify, tta=args.tta)
    sr = SRExporter(args.dicom_sr, predictor, args.sr_min_score) if args.dicom_sr else None
    counts = {"ok": 0, "failed": 0}

    def counted(results):
        for r in results:
            counts["failed" if isinstance(r, PredictionError) else "ok"] += 1
            yield r

    files = collect_inputs(args.inputs)  # a missing input stops here, before the output file is opened
    if args.exam:
        return _run_exams(args, predictor, files)
    results = predictor.iter_files(files, progress=not args.no_progress)
    if sr is not None:
        results = sr.stream(results)  # each SR is written before its predictions line, which names it
    path = write_predictions(args.out, counted(_with_overlays(results, args.overlay)))
    print(f"wrote {path}: {counts['ok']} predictions, {counts['failed']} failed")
    if sr is not None:
        print(sr.summary())
    return 0 if counts["ok"] or not counts["failed"] else 1


def _run_exams(args: argparse.Namespace, predictor: Predictor, files: list[Path]) -> int:
    def overlay(r: FileResult) -> None:
        for _ in _with_overlays(iter([r]), args.overlay):
            pass

    results = predictor.iter_exams(files, table=args.table, options=ExamOptions(**given(args, ExamOptions)),
                                   progress=not args.no_progress, on_file=overlay if args.overlay else None)
    path, n = write_exam_records(args.out, results)
    print(f"wrote {path}: {n['exams']} exams, {n['images'] - n['failed']} predictions, {n['failed']} failed")
    return 0 if n["images"] > n["failed"] or not n["failed"] else 1
