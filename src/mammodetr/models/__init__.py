"""Model components of the multi-task DETR, one concept per file."""

from mammodetr.models.backbone import Backbone, build_backbone
from mammodetr.models.config import LossConfig, ModelConfig
from mammodetr.models.criterion import SetCriterion, build_criterion
from mammodetr.models.deformable_attention import MultiScaleDeformableAttention, multi_scale_deformable_attention
from mammodetr.models.detr import MultiTaskDETR, build_model
from mammodetr.models.mambavision import MambaVision, mambavision_t
from mammodetr.models.matcher import HungarianMatcher

__all__ = [
    "Backbone",
    "HungarianMatcher",
    "LossConfig",
    "MambaVision",
    "ModelConfig",
    "MultiScaleDeformableAttention",
    "MultiTaskDETR",
    "SetCriterion",
    "build_backbone",
    "build_criterion",
    "build_model",
    "mambavision_t",
    "multi_scale_deformable_attention",
]
