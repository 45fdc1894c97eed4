"""Export the joint model to ONNX (``mammodetr export``; needs ``mammodetr[onnx]``).

The graph: ``images`` (B, 1, S, S) float32 in [0, 1] -> ``p_malignant`` (B,), ``boxes_cxcywh`` (B, K, 4)
normalised, ``scores`` (B, K): the final decoder layer only, no auxiliary outputs; the grayscale-to-RGB repeat
and the backbone's normalisation are inside. The batch axis is dynamic (or fixed at N); the image side is the
training input size. The file's ``metadata_props`` carry the run config, the input geometry, the mammodetr
version and the SHA-256 of the source weights (:mod:`~mammodetr.inference.onnx_metadata`).

The exporter is ``torch.onnx.export(..., dynamo=True)``: it captures the model with ``torch.export`` (every
branch on a shape becomes a checked guard, the batch a symbolic dimension) and is PyTorch's supported ONNX
exporter since 2.9; the TorchScript tracer before it is deprecated (docs/deployment.md, "ONNX").
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from mammodetr._version import __version__
from mammodetr.checkpoint import MODEL_FILE, file_sha256, load_checkpoint, resolve_checkpoint, weights_sha256
from mammodetr.config import RunConfig
from mammodetr.outputs import check_fresh, check_separate, move_aside

from .decode import malignancy_probability
from .device import eval_mode
from .onnx_metadata import INPUT_NAME, OUTPUT_NAMES, OnnxMetadata, input_spec
from .onnx_session import OnnxModel

__all__ = ["PARITY_TOLERANCE", "ExportOptions", "ExportResult", "ExportGraph", "export_onnx", "export_checkpoint",
           "parity_error"]

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| of p_malignant, normalised boxes and scores
MIN_OPSET = 18  # the dynamo exporter's translations start at opset 18


@dataclass
class ExportOptions:
    """Attributes:
        opset: ONNX opset of the graph (18 runs on onnxruntime >= 1.14).
        batch: "dynamic" (any batch size) or N (a fixed batch of N images; the predictor pads the last group).
        precision: the graph's arithmetic: fp32 (fp16 and int8 variants measured no faster on CPU,
            docs/benchmarks.md).
        check: after exporting, run onnxruntime on synthetic images and refuse a file whose outputs differ
            from PyTorch's by more than 1e-4.
    """

    opset: int = 18
    batch: str = "dynamic"
    precision: Literal["fp32"] = "fp32"
    check: bool = True

    def fixed_batch(self) -> int | None:
        """The fixed batch size, or None for a dynamic axis; raises ValueError for anything else."""
        text = str(self.batch).strip().lower()
        if text == "dynamic":
            return None
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"batch must be 'dynamic' or a positive integer, got {self.batch!r}")
        return int(text)


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: the file, its size, the export time, the parity check's errors and where
    the file it replaced (``overwrite``) was moved."""

    path: Path
    size_bytes: int
    seconds: float
    parity: dict[str, float] = field(default_factory=dict)
    replaced: Path | None = None


class ExportGraph(nn.Module):
    """The deployed graph around the multi-task model: final-layer outputs as probabilities and boxes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 1, S, S) in [0, 1] -> p_malignant (B,), boxes_cxcywh (B, K, 4), scores (B, K)."""
        out = self.model(images)
        return (malignancy_probability(out["image_logits"]), out["pred_boxes"].float(),
                out["pred_obj_logits"].float().sigmoid())


def _import_exporter():
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter translates with it
    except ImportError as e:
        raise ValueError(f"export needs mammodetr[onnx]: pip install 'mammodetr[onnx]' ({e.name} is missing)"
                         ) from None
    return onnx


def synthetic_images(batch: int, size: int, seed: int = 0) -> Tensor:
    """(batch, 1, S, S) smooth synthetic images in [0, 1] (a blob on a gradient), for tracing and checking."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(batch):
        cx, cy, r, base = torch.rand(4, generator=g).tolist()
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.1 * r))
        noise = 0.05 * torch.rand(size, size, generator=g)
        images.append((0.3 * base * xx + 0.6 * blob + noise).clamp(0, 1))
    return torch.stack(images)[:, None]


def _check_options(options: ExportOptions, out: Path, overwrite: bool) -> int | None:
    if options.precision != "fp32":
        raise ValueError(f"precision must be fp32, got {options.precision!r}")
    if options.opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET} (the dynamo exporter's first), got {options.opset}")
    batch = options.fixed_batch()
    if out.is_dir():
        raise IsADirectoryError(f"{out}: is a folder; give the .onnx file to write")
    check_fresh(out, overwrite=overwrite, flag="--out")
    return batch


@contextlib.contextmanager
def _quiet_exporter():
    # torch.onnx prints its progress and onnxscript's optimiser logs one warning per Split it leaves alone.
    logger = logging.getLogger("onnxscript")
    level = logger.level
    logger.setLevel(logging.ERROR)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        logger.setLevel(level)
        if buffer.getvalue().strip():
            log.debug("torch.onnx: %s", buffer.getvalue())


def _export_program(graph: ExportGraph, sample: Tensor, opset: int, batch: int | None):
    dynamic = None if batch is not None else ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with _quiet_exporter():
        return torch.onnx.export(graph, (sample,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                 output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic, optimize=True,
                                 verbose=False)


def _metadata(model: nn.Module, config: RunConfig, meta: dict | None, options: ExportOptions) -> OnnxMetadata:
    meta = dict(meta or {})
    sha = meta.get("weights_sha256") or weights_sha256(model)
    backbone = getattr(model, "backbone", None)
    spec = input_spec(config, getattr(backbone, "mean", ()), getattr(backbone, "std", ()))
    import onnxscript

    export = {"opset": options.opset, "batch": options.fixed_batch() or "dynamic", "precision": options.precision,
              "exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
              "onnxscript": onnxscript.__version__, "outputs": "final decoder layer, no auxiliary outputs",
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return OnnxMetadata(config, spec, sha, meta, export, __version__)


def export_onnx(model: nn.Module, config: RunConfig, out: str | Path, *, meta: dict | None = None,
                options: ExportOptions | None = None, overwrite: bool = False) -> ExportResult:
    """Export ``model`` (trained with ``config``) to ``out``, atomically.

    Args:
        model: the multi-task model; put in eval mode for the export, its mode restored after.
        config: its run config (input size, letterbox, preparation), written into the file.
        out: the ``.onnx`` file to write; an existing one is replaced only with ``overwrite``.
        meta: the source checkpoint's metadata (``weights_sha256``); without it the SHA-256 is that of the
            model's weights serialised as a checkpoint would hold them.
        options: opset, batch, precision, parity check.

    Raises:
        OutputConflictError: ``out`` exists and ``overwrite`` is False (checked before anything is exported);
            with ``overwrite`` the earlier file is moved aside (``NAME.replaced-<date>-<time>``, never deleted)
            once the new one passed its checks.
        ValueError: bad options, or the onnx extra is missing.
        RuntimeError: the parity check failed (nothing is written).
    """
    options = options or ExportOptions()
    out = Path(out)
    batch = _check_options(options, out, overwrite)
    onnx = _import_exporter()
    size = config.data.image_size
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    start = time.perf_counter()
    try:
        with eval_mode(model):
            graph = ExportGraph(model).eval()
            program = _export_program(graph, synthetic_images(batch or 2, size), options.opset, batch)
            program.model.metadata_props.update(_metadata(model, config, meta, options).to_props())
            program.model.doc_string = f"mammodetr {__version__}: malignancy and lesion boxes (research use only)"
            out.parent.mkdir(parents=True, exist_ok=True)
            program.save(tmp, external_data=False)
            onnx.checker.check_model(str(tmp), full_check=True)
            seconds = time.perf_counter() - start
            parity = _check_parity(graph, tmp, batch, size) if options.check else {}
        replaced = _place(tmp, out, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, out.stat().st_size, seconds, parity, replaced)


def _place(tmp: Path, out: Path, overwrite: bool) -> Path | None:
    """Move the checked file to ``out``; an earlier one (``overwrite``) is moved aside first, never deleted."""
    replaced = move_aside(out) if check_fresh(out, overwrite=overwrite, flag="--out") else None
    try:
        os.link(tmp, out)  # atomic, and refuses a file that appeared while the model was exported
    except FileExistsError:
        raise FileExistsError(f"{out}: appeared while exporting; nothing was replaced, run it again") from None
    except OSError:  # a file system without hard links
        check_fresh(out, overwrite=False, flag="--out")
        os.replace(tmp, out)
    return replaced


def parity_error(graph: ExportGraph, onnx_model: OnnxModel, images: Tensor) -> dict[str, float]:
    """Max absolute difference of each output between onnxruntime and PyTorch (fp32, eval) on ``images``."""
    with torch.no_grad():
        expected = [t.numpy() for t in graph(images)]
    got = onnx_model.run(images.numpy())
    return {name: float(np.abs(g - e).max()) for name, g, e in zip(OUTPUT_NAMES, got, expected)}


def _check_parity(graph: ExportGraph, path: Path, batch: int | None, size: int) -> dict[str, float]:
    # Three images for a dynamic axis: a batch other than the traced two shows the axis really is dynamic.
    errors = parity_error(graph, OnnxModel.load(path), synthetic_images(batch or 3, size, seed=1))
    worst = max(errors.values())
    if not worst <= PARITY_TOLERANCE:
        raise RuntimeError(f"the exported graph differs from PyTorch by {worst:.3g} (> {PARITY_TOLERANCE:g}) on "
                           f"synthetic images: {errors}; nothing was written (--no-check writes it anyway)")
    return errors


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, options: ExportOptions | None = None,
                      overwrite: bool = False, verify: bool = True) -> ExportResult:
    """:func:`export_onnx` of a checkpoint (or run) folder; ``out`` is refused before the weights are read when it
    exists (without ``overwrite``) or is, lies inside or contains the checkpoint folder (``OutputConflictError``)."""
    options = options or ExportOptions()
    check_separate({"--out": out}, {"--checkpoint": resolve_checkpoint(checkpoint)})
    _check_options(options, Path(out), overwrite)
    _import_exporter()
    model, ckpt = load_checkpoint(checkpoint, "cpu", verify=verify)
    meta = {**ckpt.meta, "weights_sha256": ckpt.meta.get("weights_sha256") or file_sha256(ckpt.path / MODEL_FILE)}
    return export_onnx(model, ckpt.config, out, meta=meta, options=options, overwrite=overwrite)
