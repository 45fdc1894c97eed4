"""``mammodetr predict``: malignancy probability and lesion boxes for raw image files.

What it writes (docs/security.md): ``--out``, one JSON line per input, written and flushed as it is made;
``--overlay``, one picture per prediction, mirroring the inputs' folders; ``--dicom-sr``, one SR per DICOM input.
No output may be, lie inside or contain an input or the checkpoint, and one that exists is refused unless
``--overwrite`` (which moves it aside). A write that fails stops the run with one line saying what was saved.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

from mammodetr.checkpoint import resolve_checkpoint
from mammodetr.cli.options import add_dataclass_flags, default_of, given
from mammodetr.inference.exam import ExamOptions, write_exam_records
from mammodetr.inference.inputs import InputScan, scan_inputs
from mammodetr.inference.overlay import OverlayWriter
from mammodetr.inference.predictions import Prediction, PredictionError, write_predictions
from mammodetr.inference.predictor import FileResult, Predictor
from mammodetr.inference.quality import warning_code
from mammodetr.outputs import claim_outputs, move_all_aside
from mammodetr.sr import SRExporter
from mammodetr.sr.concepts import DEFAULT_MIN_SCORE

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="checkpoint folder or run folder")
    model.add_argument("--model", metavar="MODEL_ONNX", help="a model written by `mammodetr export`, run by "
                                                             "onnxruntime (needs mammodetr[onnx])")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM/PNG/TIFF files or folders")
    parser.add_argument("--out", required=True, help="predictions.jsonl to write (one line per image, as it is made)")
    parser.add_argument("--overlay", metavar="DIR", help="also write images with boxes and scores drawn, named after "
                                                         "the inputs (a/case.dcm -> DIR/a/case.png)")
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
    parser.add_argument("--overwrite", action="store_true",
                        help="an existing --out file or non-empty --overlay/--dicom-sr folder is moved aside to "
                             "NAME.replaced-<date>-<time> (never deleted) instead of being refused")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    exam = parser.add_argument_group("exams (--exam)")
    exam.add_argument("--exam", action="store_true",
                      help="group the inputs into exams (DICOM Study Instance UID, else folder) and also write breast "
                           "and exam records (docs/viewer.md)")
    exam.add_argument("--table", metavar="CSV", help="with --exam: image_path plus laterality, view, study_id columns "
                                                     "(overrides the DICOM tags for the files it lists)")
    add_dataclass_flags(exam, ExamOptions)


class _Tally:
    """What the summary reports: predictions, failures, warnings by code; one log line per doubtful input."""

    def __init__(self) -> None:
        self.ok = self.failed = 0
        self.warnings: Counter[str] = Counter()

    def see(self, r: FileResult) -> None:
        if isinstance(r.result, PredictionError):
            self.failed += 1
            return
        self.ok += 1
        if r.result.warnings:
            log.warning("%s: %s", r.path, "; ".join(r.result.warnings))
            self.warnings.update(warning_code(w) for w in r.result.warnings)

    def lines(self, scan: InputScan) -> list[str]:
        out = []
        if self.warnings:
            kinds = ", ".join(f"{n} {code}" for code, n in sorted(self.warnings.items()))
            out.append(f"warnings: {kinds} (the \"warnings\" field of each line says which image and why)")
        if scan.skipped:
            suffixes = Counter(f.suffix.lower() or "no suffix, not DICOM" for f in scan.skipped)
            kinds = ", ".join(f"{n} {s}" for s, n in sorted(suffixes.items()))
            out.append(f"skipped {len(scan.skipped)} file(s) in the input folders that are not images ({kinds}), "
                       f"e.g. {scan.skipped[0]}")
        return out


def _stream(results: Iterable[FileResult], tally: _Tally, overlays: OverlayWriter | None,
            sr: SRExporter | None) -> Iterator[FileResult]:
    # The overlay and the SR are written before the predictions line, which names them.
    for r in results:
        if overlays is not None and r.raw is not None and isinstance(r.result, Prediction):
            overlays(r.path, r.raw.original, r.result)
        if sr is not None:
            sr(r)
        tally.see(r)
        yield r


def load_predictor(args: argparse.Namespace) -> Predictor:
    """The predictor of ``--checkpoint`` or ``--model`` (an ONNX file), for ``predict`` and ``serve``."""
    batch = getattr(args, "batch_size", None) or default_of(Predictor, "batch_size")
    if args.model is not None:
        if args.device not in ("auto", "cpu"):
            log.warning("--device %s is not used with --model: onnxruntime runs on the CPU", args.device)
        return Predictor.from_onnx(args.model, batch_size=batch, tta=args.tta)
    return Predictor.from_checkpoint(args.checkpoint, device=args.device, batch_size=batch, verify=not args.no_verify,
                                     tta=args.tta)


def _start(args: argparse.Namespace) -> tuple[InputScan, Predictor, SRExporter | None]:
    """Every check before anything is written: inputs, outputs, the model; then earlier outputs moved aside."""
    scan = scan_inputs(args.inputs)
    model = ("--model", args.model) if args.model is not None else ("--checkpoint", resolve_checkpoint(args.checkpoint))
    inputs = [("", i) for i in args.inputs] + [model, ("--table", args.table)]
    aside = claim_outputs({"--out": args.out, "--overlay": args.overlay, "--dicom-sr": args.dicom_sr}, inputs,
                          overwrite=args.overwrite)
    predictor = load_predictor(args)
    sr = SRExporter(args.dicom_sr, predictor, args.sr_min_score) if args.dicom_sr else None
    for line in move_all_aside(aside):
        print(line, file=sys.stderr)
    return scan, predictor, sr


def run(args: argparse.Namespace) -> int:
    scan, predictor, sr = _start(args)
    overlays = OverlayWriter(args.overlay, scan.files) if args.overlay else None
    tally = _Tally()
    if args.exam:
        return _run_exams(args, predictor, scan, tally, overlays, sr)
    results = _stream(predictor.iter_files(scan.files, progress=not args.no_progress), tally, overlays, sr)
    path = write_predictions(args.out, (r.result for r in results))
    _summary(f"wrote {path}: {tally.ok} predictions, {tally.failed} failed", tally, scan, overlays, sr)
    return 0 if tally.ok or not tally.failed else 1


def _summary(head: str, tally: _Tally, scan: InputScan, overlays: OverlayWriter | None,
             sr: SRExporter | None) -> None:
    print(head)
    for line in tally.lines(scan):
        print(line)
    if overlays is not None:
        print(f"overlays: {overlays.written} written to {overlays.out_dir}")
    if sr is not None:
        print(sr.summary())


def _run_exams(args: argparse.Namespace, predictor: Predictor, scan: InputScan, tally: _Tally,
               overlays: OverlayWriter | None, sr: SRExporter | None) -> int:
    def on_file(r: FileResult) -> None:
        for _ in _stream([r], tally, overlays, sr):
            pass

    results = predictor.iter_exams(scan.files, table=args.table, options=ExamOptions(**given(args, ExamOptions)),
                                   progress=not args.no_progress, on_file=on_file)
    path, n = write_exam_records(args.out, results)
    _summary(f"wrote {path}: {n['exams']} exams, {n['images'] - n['failed']} predictions, {n['failed']} failed",
             tally, scan, overlays, sr)
    return 0 if n["images"] > n["failed"] or not n["failed"] else 1
