"""Inference: a trained model, its one input path and its one output decoder (``Predictor``)."""

from mammodetr.inference.decode import decode, malignancy_probability
from mammodetr.inference.device import autocast, resolve_device
from mammodetr.inference.exam import Exam, ExamOptions, ExamResult, group_exams
from mammodetr.inference.inputs import RawInput, collect_inputs, load_raw_input
from mammodetr.inference.onnx_metadata import OnnxModelError
from mammodetr.inference.predictions import (
    Prediction,
    PredictionError,
    PredictionSet,
    read_predictions,
    write_predictions,
)
from mammodetr.inference.predictor import FileResult, Predictor

__all__ = ["Exam", "ExamOptions", "ExamResult", "FileResult", "OnnxModelError", "Prediction", "PredictionError",
           "PredictionSet", "Predictor", "RawInput", "autocast", "collect_inputs", "decode", "group_exams",
           "load_raw_input", "malignancy_probability", "read_predictions", "resolve_device", "write_predictions"]
