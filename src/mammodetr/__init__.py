"""mammodetr: multi-task DETR for mammography (malignancy + lesion boxes from one model).

The public names are imported lazily, so ``import mammodetr.data`` (e.g. in prepare's worker processes)
does not pay for importing torch and timm.
"""

from __future__ import annotations

import importlib

from mammodetr._version import __version__ as __version__

_EXPORTS = {
    "ModelConfig": "mammodetr.models.config",
    "LossConfig": "mammodetr.models.config",
    "build_model": "mammodetr.models.detr",
    "build_criterion": "mammodetr.models.criterion",
    "HungarianMatcher": "mammodetr.models.matcher",
    "multi_scale_deformable_attention": "mammodetr.models.deformable_attention",
    "load_model": "mammodetr.checkpoint",
    "RunConfig": "mammodetr.config",
    "Predictor": "mammodetr.inference.predictor",
    "Prediction": "mammodetr.inference.predictions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mammodetr' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
