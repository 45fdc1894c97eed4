"""An exported model in an onnxruntime session, called like the PyTorch model (needs ``mammodetr[onnx]``).

:class:`OnnxModel` is the forward of :meth:`Predictor.from_onnx <mammodetr.inference.predictor.Predictor.from_onnx>`:
the predictor reads, crops and resizes the files and decodes the outputs exactly as it does for a checkpoint;
only this call differs. Only ``onnxruntime`` is needed to run a model (``onnx`` and ``onnxscript`` are for
exporting).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .onnx_metadata import INPUT_NAME, OUTPUT_NAMES, OnnxMetadata, OnnxModelError, read_metadata

__all__ = ["OnnxModel", "import_onnxruntime"]


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("running an ONNX model needs mammodetr[onnx]: pip install 'mammodetr[onnx]' (onnxruntime is "
                         "missing)") from None
    return onnxruntime


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return (text[:limit] + "...") if len(text) > limit else text or type(exc).__name__


class OnnxModel:
    """An exported mammodetr model and its metadata; ``model(images)`` follows the PyTorch model's contract.

    Args:
        session: an ``onnxruntime.InferenceSession`` of a file written by ``mammodetr export``.
        metadata: its parsed metadata.
        path: the file (for messages).

    Attributes:
        batch: the graph's fixed batch size, or None for a dynamic batch axis. With a fixed batch the images
            are run in groups of that size, the last group padded with blank images.
    """

    def __init__(self, session, metadata: OnnxMetadata, path: str | Path) -> None:
        self.session = session
        self.metadata = metadata
        self.path = Path(path)
        self.batch = _check_graph(session, metadata, self.path)

    @classmethod
    def load(cls, path: str | Path, *, providers: Sequence[str] | None = None,
             threads: int | None = None) -> "OnnxModel":
        """Open an exported model.

        Args:
            path: the ``.onnx`` file.
            providers: onnxruntime execution providers (default: CPU).
            threads: intra-op threads (default: onnxruntime's, one per physical core).

        Raises:
            OnnxModelError: no such file, not an ONNX model, no or wrong mammodetr metadata, or a graph whose
                inputs and outputs are not those the metadata describe.
            ValueError: onnxruntime is not installed.
        """
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise OnnxModelError(f"{path}: no such file")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            session = ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for every kind of bad file
            raise OnnxModelError(f"{path}: not a loadable ONNX model ({_first_line(exc)})") from None
        return cls(session, read_metadata(session.get_modelmeta().custom_metadata_map, path), path)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, 1, S, S) float32 in [0, 1] -> the graph's outputs: p_malignant (B,), boxes_cxcywh (B, K, 4) and
        scores (B, K)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.batch is None:
            return tuple(self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images}))
        parts = []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), np.float32)])
            parts.append([out[:n] for out in self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: chunk})])
        return tuple(np.concatenate(group) for group in zip(*parts))

    def __call__(self, images: Tensor) -> dict:
        """The PyTorch model's output contract, for :func:`~mammodetr.inference.decode.decode`.

        The graph ends in probabilities (what a consumer outside Python needs); they are handed on as
        log-probabilities, which are logits of the same distribution (``softmax(log p) == p``,
        ``sigmoid(logit s) == s``), so the one decoder turns them back into the same numbers.
        """
        p, boxes, scores = self.run(images.detach().to("cpu", torch.float32).numpy())
        p64, s64 = torch.from_numpy(p).double(), torch.from_numpy(scores).double()
        return {"image_logits": torch.stack([torch.log1p(-p64), torch.log(p64)], dim=1),
                "pred_boxes": torch.from_numpy(boxes), "pred_obj_logits": torch.logit(s64), "aux_outputs": []}


def _check_graph(session, metadata: OnnxMetadata, path: Path) -> int | None:
    """The fixed batch size of the graph (None: dynamic), once its inputs and outputs fit the metadata."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    s, k = metadata.config.data.image_size, metadata.config.model.num_queries
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != list(OUTPUT_NAMES):
        raise OnnxModelError(f"{path}: the graph's inputs {[i.name for i in inputs]} and outputs "
                             f"{[o.name for o in outputs]} are not those of a mammodetr export "
                             f"([{INPUT_NAME!r}], {list(OUTPUT_NAMES)})")
    batch, *rest = inputs[0].shape
    if list(rest) != [1, s, s]:
        raise OnnxModelError(f"{path}: metadata disagree with the graph: input shape {inputs[0].shape}, the "
                             f"run config's image_size is {s}")
    if outputs[1].shape[1:] != [k, 4]:
        raise OnnxModelError(f"{path}: metadata disagree with the graph: boxes shape {outputs[1].shape}, the "
                             f"run config has {k} queries")
    return batch if isinstance(batch, int) and batch > 0 else None
