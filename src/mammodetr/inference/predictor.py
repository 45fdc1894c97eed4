"""``Predictor``: a trained model with its input path and its decoder, the one way images become predictions.

Training validation, ``evaluate``, ``predict``, Grad-CAM and the viewer all predict through a ``Predictor``: the
same input transform (:mod:`mammodetr.data.model_input`), the same forward (eval mode, no gradients, the chosen
precision) and the same decoder (:func:`~mammodetr.inference.decode.decode`). A model exported to ONNX
(:meth:`Predictor.from_onnx`) goes through the same reading, crop, resize and decoding; only the forward is an
onnxruntime session instead of the PyTorch module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mammodetr.checkpoint import load_checkpoint
from mammodetr.config import RunConfig
from mammodetr.data.dataset import MammoDataset
from mammodetr.data.geometry import ImageTransform
from mammodetr.data.model_input import InputGeometry, input_transform, to_model_input
from mammodetr.data.preprocess import PrepareOptions

from .decode import decode
from .device import autocast, eval_mode, resolve_device
from .exam import Exam, ExamOptions, ExamResult, aggregate_exam, group_exams, operating_point, read_exam_table
from .inputs import RawInput, collect_inputs, load_raw_input
from .onnx_session import OnnxModel
from .predictions import Prediction, PredictionError, PredictionSet
from .quality import input_warnings
from .tta import merge_hflip

__all__ = ["Predictor", "FileResult"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8


@dataclass
class FileResult:
    """One raw file's outcome: the prediction (or the error) and, when it could be read, the prepared input."""

    path: Path
    result: Prediction | PredictionError
    raw: RawInput | None = None


class Predictor:
    """A model ready to predict, with everything it needs to read images the way it was trained.

    Args:
        model: the multi-task model (output contract: ``image_logits``, ``pred_boxes``, ``pred_obj_logits``), or
            an exported one in an onnxruntime session (:class:`~mammodetr.inference.onnx_session.OnnxModel`,
            same contract; see :meth:`from_onnx`).
        config: the run config it was trained with (input geometry, preparation of raw files).
        device: "auto", "cpu", "cuda" or a torch device (an ONNX model takes its inputs on the CPU).
        precision: "fp32", "bf16" or "fp16" (autocast); an ONNX model runs as it was exported.
        batch_size: images per forward pass.
        channels_last: feed channels-last inputs (the model's memory format should match).
        meta: checkpoint metadata (versions, weights SHA-256), when loaded from one.
        tta: horizontal-flip test-time augmentation (:mod:`mammodetr.inference.tta`): two forward passes per
            image, merged before the decoder.
    """

    def __init__(self, model: nn.Module | OnnxModel, config: RunConfig, *, device: str | torch.device = "cpu",
                 precision: str = "fp32", batch_size: int = DEFAULT_BATCH_SIZE, channels_last: bool = False,
                 meta: dict | None = None, tta: bool = False) -> None:
        self.device = resolve_device("cpu" if isinstance(model, OnnxModel) else device)
        self.model = model
        self.config = config
        self.precision = precision
        self.batch_size = int(batch_size)
        self.channels_last = channels_last
        self.meta = dict(meta or {})
        self.tta = bool(tta)
        autocast(self.device, precision)  # validates the precision for the device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto", precision: str | None = None,
                        *, batch_size: int = DEFAULT_BATCH_SIZE, verify: bool = True,
                        tta: bool | None = None) -> "Predictor":
        """Load a checkpoint (or run) folder. ``precision`` None means fp32; ``tta`` None means what the model was
        validated with (``train.tta`` of its config)."""
        dev = resolve_device(device)
        model, ckpt = load_checkpoint(path, map_location=dev, verify=verify)
        return cls(model, ckpt.config, device=dev, precision=precision or "fp32", batch_size=batch_size,
                   meta=ckpt.meta, tta=ckpt.config.train.tta if tta is None else tta)

    @classmethod
    def from_onnx(cls, path: str | Path, *, batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None,
                  providers: Sequence[str] | None = None, tta: bool | None = None) -> "Predictor":
        """Load a model written by ``mammodetr export`` (needs ``mammodetr[onnx]``): the run config and the source
        checkpoint's metadata come from the file's metadata.

        Args:
            path: the ``.onnx`` file.
            batch_size: images per forward pass (a fixed-batch export runs them in groups of its size).
            threads: onnxruntime intra-op threads (default: one per physical core).
            providers: onnxruntime execution providers (default: CPU).
            tta: flip test-time augmentation; None means what the model was validated with.

        Raises:
            OnnxModelError: not a usable mammodetr ONNX file (one line naming it and the problem).
        """
        model = OnnxModel.load(path, providers=providers, threads=threads)
        config = model.metadata.config
        return cls(model, config, batch_size=batch_size, meta=model.metadata.meta,
                   tta=config.train.tta if tta is None else tta)

    @property
    def geometry(self) -> InputGeometry:
        return self.config.data.geometry

    @property
    def prepare_options(self) -> PrepareOptions:
        """How raw files are prepared: the training data's preparation (the defaults when it was not recorded)."""
        if self.config.data.prepare is None:
            log.warning("the model's config does not record how its training data was prepared; raw inputs get "
                        "the default preparation of that time (no background masking), which may differ")
            self.config.data.prepare = PrepareOptions.from_dict({})  # a record this old predates masking
        return self.config.data.prepare

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict:
        """(B, 1, S, S) inputs in [0, 1] -> raw model outputs, in eval mode (every module's mode is restored).

        With ``tta`` the outputs are those of the image and its mirror merged (:func:`~.tta.merge_hflip`).
        """
        if isinstance(self.model, OnnxModel):
            outputs = self.model(images)
            return merge_hflip(outputs, self.model(images.flip(-1))) if self.tta else outputs
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with eval_mode(self.model), autocast(self.device, self.precision):
            outputs = self.model(x)
            if not self.tta:
                return outputs
            flipped = self.model(x.flip(-1))
        return merge_hflip(outputs, flipped)

    def decode(self, outputs: dict, transforms: Sequence[ImageTransform], names: Sequence[str]) -> list[Prediction]:
        return decode(outputs, transforms, names)

    def predict_arrays(self, pixels_u16: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[Prediction]:
        """Prepared 16-bit images (H, W) -> predictions with boxes in those images' pixels."""
        names = list(names) if names is not None else [f"array_{i}" for i in range(len(pixels_u16))]
        preds: list[Prediction] = []
        for start in range(0, len(pixels_u16), self.batch_size):
            chunk = [to_model_input(np.asarray(a), self.geometry) for a in pixels_u16[start:start + self.batch_size]]
            outputs = self.forward(torch.stack([x for x, _ in chunk]))
            preds += self.decode(outputs, [t for _, t in chunk], names[start:start + len(chunk)])
        return preds

    def iter_files(self, inputs: Iterable[str | Path], *, progress: bool = False) -> Iterator[FileResult]:
        """Predict raw files (DICOM/PNG/TIFF/... or folders of them), yielding each result as soon as its batch
        is done, in input order; boxes in each file's own pixels. A file that cannot be read, or a batch whose
        forward pass fails, gives :class:`PredictionError` results and the rest goes on.
        """
        files = collect_inputs(inputs)
        pending: list[tuple[Path, RawInput]] = []
        for path in tqdm(files, desc="predict", unit="img", disable=not progress):
            try:
                raw = load_raw_input(path, self.prepare_options, self.geometry)
            except ValueError as e:
                yield from self._flush(pending)
                log.warning("%s", e)
                yield FileResult(path, PredictionError(str(path), str(e)))
                continue
            pending.append((path, raw))
            if len(pending) >= self.batch_size:
                yield from self._flush(pending)
        yield from self._flush(pending)

    def _flush(self, pending: list[tuple[Path, RawInput]]) -> Iterator[FileResult]:
        if not pending:
            return
        batch, pending[:] = list(pending), []
        names = [str(p) for p, _ in batch]
        try:
            outputs = self.forward(torch.stack([raw.image for _, raw in batch]))
            preds: list = self.decode(outputs, [raw.transform for _, raw in batch], names)
        except Exception as e:  # noqa: BLE001 - a failing batch must not end the run; every file gets the error
            preds = [PredictionError(n, f"model failed: {type(e).__name__}: {e}") for n in names]
        for (path, raw), pred in zip(batch, preds):
            if isinstance(pred, Prediction):
                pred.warnings = input_warnings(raw)
            yield FileResult(path, pred, raw)

    def predict_files(
        self, inputs: Iterable[str | Path], *, progress: bool = False
    ) -> list[Prediction | PredictionError]:
        """All results of :meth:`iter_files` as a list, in input order."""
        return [r.result for r in self.iter_files(inputs, progress=progress)]

    def predict_prepared(self, root: str | Path, split: str | None = None, *, file_names: Sequence[str] | None = None,
                         progress: bool = False) -> PredictionSet:
        """Predict images of a prepared dataset folder (one split, or the named images); boxes in the prepared
        images' pixels. The input is exactly what validation saw in training (the dataset, no augmentation).
        """
        ds = MammoDataset(root, split=None, image_size=self.geometry.image_size, augment="none",
                          letterbox=self.geometry.letterbox, cache=False)
        index = {img["file_name"]: i for i, img in enumerate(ds.images)}
        if file_names is None:
            file_names = [img["file_name"] for img in ds.images if split is None or img.get("split") == split]
        by_name: dict[str, Prediction] = {}
        errors: list[PredictionError] = []
        batch: list[tuple[str, torch.Tensor, ImageTransform]] = []
        for name in tqdm(file_names, desc="predict", unit="img", disable=not progress):
            item = _dataset_item(ds, index, name, root)
            if isinstance(item, PredictionError):
                errors.append(item)
                continue
            batch.append((name, item[0], input_transform(item[1], self.geometry)))
            if len(batch) >= self.batch_size:
                self._predict_batch(batch, by_name)
        self._predict_batch(batch, by_name)
        return PredictionSet(by_name, errors)

    def predict_split(self, root: str | Path, split: str, *, progress: bool = False) -> PredictionSet:
        """:meth:`predict_prepared` on one split of a prepared dataset."""
        return self.predict_prepared(root, split, progress=progress)

    def predict_exam(self, exam: Exam | Iterable[str | Path], *, options: ExamOptions | None = None,
                     on_file: Callable[[FileResult], None] | None = None) -> ExamResult:
        """Predict one exam: its images, its breasts and the exam (:mod:`mammodetr.inference.exam`).

        Args:
            exam: an :class:`Exam` (from :func:`~mammodetr.inference.exam.group_exams`), or files and folders
                that form one exam.
            options: breast aggregation and operating point (default: max, the checkpoint's threshold or 0.5).
            on_file: called with each image's :class:`FileResult` as it is done (e.g. to draw an overlay).

        Raises:
            ValueError: the files given form more than one exam (use :meth:`iter_exams`), or an input is missing.
        """
        if not isinstance(exam, Exam):
            exams = group_exams(collect_inputs(exam))
            if len(exams) != 1:
                raise ValueError(f"the files given form {len(exams)} exams, not one; use Predictor.iter_exams")
            exam = exams[0]
        options = options or ExamOptions()
        predictions = {}
        for r in self.iter_files([im.path for im in exam.images]):
            predictions[r.path] = r.result
            if on_file is not None:
                on_file(r)
        return aggregate_exam(exam, predictions, options.breast_aggregate, operating_point(options, self.meta))

    def iter_exams(self, inputs: Iterable[str | Path], *, table: str | Path | None = None,
                   options: ExamOptions | None = None, progress: bool = False,
                   on_file: Callable[[FileResult], None] | None = None) -> Iterator[ExamResult]:
        """Group files and folders into exams (Study Instance UID, else folder; ``table``: a CSV of exams) and
        yield each exam's result as soon as it is done."""
        exams = group_exams(collect_inputs(inputs), read_exam_table(table) if table is not None else None)
        for exam in tqdm(exams, desc="predict", unit="exam", disable=not progress):
            yield self.predict_exam(exam, options=options, on_file=on_file)

    def predict_exams(self, inputs: Iterable[str | Path], **kwargs) -> list[ExamResult]:
        """All results of :meth:`iter_exams` as a list."""
        return list(self.iter_exams(inputs, **kwargs))

    def _predict_batch(self, batch: list, by_name: dict[str, Prediction]) -> None:
        if not batch:
            return
        outputs = self.forward(torch.stack([b[1] for b in batch]))
        for pred in self.decode(outputs, [b[2] for b in batch], [b[0] for b in batch]):
            by_name[pred.file_name] = pred
        batch.clear()


def _dataset_item(ds: MammoDataset, index: dict[str, int], name: str, root) -> tuple | PredictionError:
    """(model input, prepared (H, W)) of a dataset image, or the error naming it."""
    if name not in index:
        return PredictionError(name, f"{name}: not in {Path(root) / 'annotations.json'}")
    try:
        image, target = ds[index[name]]
    except (ValueError, OSError) as e:
        return PredictionError(name, f"{Path(root) / name}: {e}")
    return image, tuple(int(v) for v in target["orig_size_hw"])
