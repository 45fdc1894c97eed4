"""Typed configuration of the model and of its losses: the single source of truth for these settings.

Training adds its own dataclasses on top (``mammodetr.training.config``); YAML files and CLI flags are
layers over these defaults, and the resolved values are written into every run and checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class ModelConfig:
    """The multi-task DETR of the paper. Defaults are the paper's where it states them.

    Attributes:
        backbone: registry name (resnet50, convnextv2_tiny, mambavision_t, dinov3_vitb16) or a timm name.
        pretrained: "none", "hub" or a local weights file.
        backbone_options: extra backbone arguments (e.g. ``{"window_sizes": [8, 8, 16, 8]}``).
        feature_levels: how many of the deepest backbone levels feed the decoder (1 = last only, as in
            the paper; more gives multi-scale deformable attention). The classifier always uses the last.
        num_classes: image-level classes; class index 1 is "malignant" (0 = benign or normal).
        d_model: width of the projection and the decoder (paper: 256).
        num_queries: object queries (paper: 3).
        dilations: the parallel dilated 3x3 convolutions of the localisation branch (paper: 1, 2, 4).
        dec_layers, nheads, n_points, dim_feedforward, dropout: Deformable-DETR decoder settings.
        box_refine: iterative box refinement (each layer refines the previous layer's boxes).
        aux_loss: return per-layer predictions for auxiliary losses.
    """

    backbone: str = "resnet50"
    pretrained: str = "hub"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    feature_levels: int = 1
    num_classes: int = 2
    d_model: int = 256
    num_queries: int = 3
    dilations: tuple[int, ...] = (1, 2, 4)
    dec_layers: int = 6
    nheads: int = 8
    n_points: int = 4
    dim_feedforward: int = 1024
    dropout: float = 0.1
    box_refine: bool = True
    aux_loss: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        d = dict(d)
        if "dilations" in d:
            d["dilations"] = tuple(d["dilations"])
        return cls(**d)


@dataclass
class LossConfig:
    """Loss and matching settings. One weight dict (``weight_dict``) applies every weight once.

    Attributes:
        cls_loss: "focal" (paper, Appendix C) or "ce".
        focal_gamma: focal loss focusing parameter.
        focal_alpha: weight of the malignant class (the others get 1 - alpha); None = unweighted.
        weight_cls, weight_bbox, weight_giou, weight_obj: the paper's lambdas (1, 5, 2, 1).
        cost_bbox, cost_giou, cost_obj: matcher costs (DETR convention: same as the loss weights).
        obj_loss: "bce" or "focal" (sigmoid focal, alpha 0.25, as Deformable DETR) for objectness.
        obj_normalization: "boxes" divides the summed objectness loss by the number of target boxes
            (Deformable DETR), "queries" averages it over all queries (steadier when most images are normal).
        max_targets: at most this many targets per image in training (paper: 3); kept: malignant boxes
            first, then larger boxes first. None keeps all.
    """

    cls_loss: str = "focal"
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    weight_cls: float = 1.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    weight_obj: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_obj: float = 1.0
    obj_loss: str = "bce"
    obj_normalization: str = "boxes"
    max_targets: int | None = 3

    def weight_dict(self, num_aux: int) -> dict[str, float]:
        det = {"loss_bbox": self.weight_bbox, "loss_giou": self.weight_giou, "loss_obj": self.weight_obj}
        weights = {"loss_cls": self.weight_cls, **det}
        for i in range(num_aux):
            weights.update({f"{k}_{i}": v for k, v in det.items()})
        return weights

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LossConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown loss config keys: {unknown}")
        return cls(**d)
