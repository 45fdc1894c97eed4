"""``mammodetr serve``: the reader-assist viewer (research use only) on http://127.0.0.1:8000/."""

from __future__ import annotations

import argparse

from mammodetr.cli.options import add_dataclass_flags, given
from mammodetr.cli.predict import load_predictor
from mammodetr.inference.exam import ExamOptions
from mammodetr.serve.options import ServeOptions
from mammodetr.serve.server import run_server
from mammodetr.serve.store import ExamStore
from mammodetr.serve.viewer import Viewer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="checkpoint folder or run folder")
    model.add_argument("--model", metavar="MODEL_ONNX", help="an exported ONNX model (needs mammodetr[onnx]; no "
                                                             "Grad-CAM)")
    parser.add_argument("--images", metavar="DIR", help="folder of exams to browse (DICOM, PNG, TIFF; grouped by "
                                                        "Study Instance UID, else by folder)")
    add_dataclass_flags(parser, ServeOptions)
    add_dataclass_flags(parser, ExamOptions)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="horizontal-flip test-time augmentation (default: as the model was validated, its "
                             "train.tta)")
    parser.add_argument("--no-verify", action="store_true",
                        help="load weights whose SHA-256 differs from the one recorded (hand-edited weights)")


def run(args: argparse.Namespace) -> int:
    try:
        import python_multipart  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(f"mammodetr serve needs mammodetr[serve]: pip install 'mammodetr[serve]' ({e.name} is "
                         f"missing)") from None
    options = ServeOptions(**given(args, ServeOptions))
    exam_options = ExamOptions(**given(args, ExamOptions))
    predictor = load_predictor(args)
    viewer = Viewer(predictor, ExamStore(args.images), options, exam_options)
    run_server(viewer)
    return 0
