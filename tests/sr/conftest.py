"""Synthetic DICOM mammograms and a predictor whose boxes are known, for the SR tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from inference._fake_model import ScriptedModel

from mammodetr.config import RunConfig
from mammodetr.data.model_input import InputGeometry, input_transform
from mammodetr.data.preprocess import PrepareOptions, preprocess_image
from mammodetr.inference.predictor import Predictor

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

S = 64
K = 3
SHA = "0123456789abcdef" * 4


@pytest.fixture(scope="session")
def synth_dicoms(tmp_path_factory) -> list[Path]:
    """One patient, four views (L/R x CC/MLO), MONOCHROME1 and windowed MONOCHROME2 encodings mixed."""
    from mammodetr.data.synth import SynthOptions, generate_dataset

    root = tmp_path_factory.mktemp("synth_sr")
    generate_dataset(root, n_patients=2, image_size=(160, 128), fmt="dicom", seed=5, progress=False,
                     options=SynthOptions(variants=("mono1", "window")))
    return sorted((root / "images").glob("*.dcm"))


def planted_boxes(path: Path, options: PrepareOptions) -> tuple[np.ndarray, object]:
    """Two boxes in the file's own pixels that lie inside its breast crop, and the preparation's transform."""
    prepared = preprocess_image(path, options)
    h, w = prepared.pixels.shape
    in_prepared = np.array([[0.15 * w, 0.2 * h, 0.55 * w, 0.5 * h], [0.3 * w + 0.37, 0.55 * h, 0.7 * w, 0.9 * h]])
    return prepared.transform.invert_boxes_xyxy(in_prepared), prepared.transform


def model_space(path: Path, boxes_orig: np.ndarray, options: PrepareOptions, letterbox: bool):
    """Original-pixel boxes -> the ScriptedModel's (K, 4) normalised cxcywh and real-box flags (cf. test_predictor)."""
    prepared = preprocess_image(path, options)
    in_prepared = prepared.transform.apply_boxes_xyxy(boxes_orig)
    b = input_transform(prepared.pixels.shape, InputGeometry(S, letterbox)).apply_boxes_xyxy(in_prepared) / S
    cxcywh = np.c_[(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]
    pad = np.tile([[0.05, 0.05, 0.02, 0.02]], (K - len(cxcywh), 1))
    return torch.tensor(np.r_[cxcywh, pad], dtype=torch.float32), torch.arange(K) < len(cxcywh)


def scripted_predictor(paths, options: PrepareOptions, letterbox: bool, meta=None):
    """A Predictor whose model returns, for each DICOM of ``paths``, its planted boxes (score 0.88) and a decoy
    (score 0.12); returns (predictor, {path: planted original boxes}, {path: preparation transform})."""
    queue, planted, transforms = [], {}, {}
    for p in paths:
        planted[p], transforms[p] = planted_boxes(p, options)
        queue.append(model_space(p, planted[p], options, letterbox))
    cfg = RunConfig()
    cfg.data.image_size, cfg.data.letterbox, cfg.data.prepare = S, letterbox, options
    meta = {"weights_sha256": SHA} if meta is None else meta
    return Predictor(ScriptedModel(queue), cfg, batch_size=2, meta=meta), planted, transforms
