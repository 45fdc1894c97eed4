"""What an exported ONNX model carries in its ``metadata_props``: everything needed to use it without the run.

``mammodetr export`` writes these keys (every value a string; JSON where structured)::

    mammodetr.format          "1": the layout of these keys
    mammodetr.version         the mammodetr version that exported the file
    mammodetr.run_config      the resolved RunConfig (JSON): input size, letterbox, how raw files are prepared, ...
    mammodetr.input           the input geometry (JSON): size, letterbox, channels, value range, mean/std
    mammodetr.outputs         the outputs (JSON): name -> shape and meaning
    mammodetr.weights_sha256  SHA-256 of the source checkpoint's model.safetensors
    mammodetr.checkpoint_meta the checkpoint's meta.json (JSON): versions, epoch, metrics, operating threshold
    mammodetr.export          how it was exported (JSON): opset, batch, precision, exporter, torch version

:func:`read_metadata` checks them and gives one line naming the file and the problem for a model exported by
something else, by a newer mammodetr, or edited by hand so that its parts disagree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammodetr._version import __version__
from mammodetr.atomic import dumps
from mammodetr.config import RunConfig

__all__ = ["FORMAT", "INPUT_NAME", "OUTPUT_NAMES", "OnnxModelError", "OnnxMetadata", "input_spec", "read_metadata"]

FORMAT = 1
PREFIX = "mammodetr."
INPUT_NAME = "images"
OUTPUT_NAMES = ("p_malignant", "boxes_cxcywh", "scores")
OUTPUTS = {
    "p_malignant": {"shape": ["batch"], "meaning": "probability that the image is malignant"},
    "boxes_cxcywh": {"shape": ["batch", "K", 4],
                     "meaning": "lesion boxes, normalised (cx, cy, w, h) of the S x S model input"},
    "scores": {"shape": ["batch", "K"], "meaning": "objectness of each box (sigmoid), unsorted"},
}
_REQUIRED = ("version", "run_config", "input", "weights_sha256", "checkpoint_meta", "export")
_JSON = ("run_config", "input", "checkpoint_meta", "export")


class OnnxModelError(ValueError):
    """An ONNX file that is not a usable mammodetr model (one line: the file and the problem)."""


def input_spec(config: RunConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """The model input as a consumer outside Python must build it (``mammodetr.input``)."""
    g = config.data.geometry
    return {"name": INPUT_NAME, "image_size": g.image_size, "letterbox": g.letterbox, "channels": 1,
            "layout": "NCHW", "dtype": "float32", "value_range": [0.0, 1.0],
            "scaling": "prepared 16-bit image resized (letterbox: padded with 0) to S x S, divided by 65535",
            "mean": list(mean), "std": list(std),
            "normalisation": "inside the graph: the channel is repeated to RGB, then (x - mean) / std"}


@dataclass
class OnnxMetadata:
    """The parsed ``metadata_props`` of an exported model.

    Attributes:
        config: the run config the model was trained with.
        input: the input geometry (:func:`input_spec`).
        weights_sha256: SHA-256 of the source weights.
        meta: the source checkpoint's metadata (weights_sha256 included).
        export: opset, batch, precision, exporter and versions.
        version: the mammodetr version that exported the model.
    """

    config: RunConfig
    input: dict[str, Any]
    weights_sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    def to_props(self) -> dict[str, str]:
        values = {"format": str(FORMAT), "version": self.version, "run_config": dumps(self.config.to_dict(), None),
                  "input": dumps(self.input, None), "outputs": dumps(OUTPUTS, None),
                  "weights_sha256": self.weights_sha256,
                  "checkpoint_meta": dumps({**self.meta, "weights_sha256": self.weights_sha256}, None),
                  "export": dumps(self.export, None)}
        return {PREFIX + k: v for k, v in values.items()}


def read_metadata(props: Mapping[str, str], source: str | Path) -> OnnxMetadata:
    """Check and parse the ``metadata_props`` of ``source``.

    Raises:
        OnnxModelError: no mammodetr metadata, a newer format, a key missing or unreadable, or parts that
            disagree (the input geometry and the run config).
    """
    if PREFIX + "format" not in props:
        raise OnnxModelError(f"{source}: an ONNX model without mammodetr metadata (export it with `mammodetr "
                             f"export`)")
    fmt = props[PREFIX + "format"]
    if not fmt.isdigit() or int(fmt) > FORMAT:
        raise OnnxModelError(f"{source}: mammodetr metadata format {fmt!r} is not one this version reads "
                             f"(up to {FORMAT}): export the model again, or update mammodetr")
    missing = [PREFIX + k for k in _REQUIRED if PREFIX + k not in props]
    if missing:
        raise OnnxModelError(f"{source}: mammodetr metadata lacks {', '.join(missing)}")
    values = {k: _json(props, k, source) for k in _JSON}
    try:
        config = RunConfig.from_dict(values["run_config"])
    except (ValueError, TypeError, KeyError) as exc:
        raise OnnxModelError(f"{source}: metadata {PREFIX}run_config is not a valid run config ({exc})") from None
    sha = props[PREFIX + "weights_sha256"]
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise OnnxModelError(f"{source}: metadata {PREFIX}weights_sha256 is not a SHA-256 hex digest")
    _check_input(values["input"], config, source)
    return OnnxMetadata(config, values["input"], sha, dict(values["checkpoint_meta"]), dict(values["export"]),
                        props[PREFIX + "version"])


def _json(props: Mapping[str, str], key: str, source) -> dict:
    try:
        value = json.loads(props[PREFIX + key])
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise OnnxModelError(f"{source}: metadata {PREFIX}{key} is not a JSON object")
    return value


def _check_input(spec: dict, config: RunConfig, source) -> None:
    g = config.data.geometry
    for key, expected in (("image_size", g.image_size), ("letterbox", g.letterbox), ("channels", 1)):
        if spec.get(key) != expected:
            raise OnnxModelError(f"{source}: metadata disagree: {PREFIX}input says {key} {spec.get(key)!r}, the run "
                                 f"config {expected!r}")
