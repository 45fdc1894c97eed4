"""mammodetr: multi-task DETR for mammography (malignancy + lesion boxes from one model)."""

from mammodetr.models import (
    HungarianMatcher,
    LossConfig,
    ModelConfig,
    build_criterion,
    build_model,
    multi_scale_deformable_attention,
    postprocess,
)

__version__ = "0.1.0"

__all__ = [
    "HungarianMatcher",
    "LossConfig",
    "ModelConfig",
    "build_criterion",
    "build_model",
    "multi_scale_deformable_attention",
    "postprocess",
]
