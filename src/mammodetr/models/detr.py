"""The multi-task DETR: backbone -> projection -> {classification head, dilated context -> decoder}."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mammodetr.models.backbone import Backbone, build_backbone
from mammodetr.models.classification_head import ClassificationHead
from mammodetr.models.config import ModelConfig
from mammodetr.models.decoder import DeformableDecoder
from mammodetr.models.dilated_context import DilatedContext
from mammodetr.models.projection import Projection


class MultiTaskDETR(nn.Module):
    """One model, two outputs: image-level malignancy logits and K lesion boxes with objectness.

    Args:
        backbone: returns ``len(backbone.channels)`` maps; the deepest one feeds the classifier.
        decoder: the localisation decoder (its ``n_levels`` must equal the number of maps).
        num_classes: image-level classes.
        d_model: projection width.
        dilations: dilation rates of the context module.
        aux_loss: also return every earlier decoder layer's predictions.
    """

    def __init__(
        self,
        backbone: Backbone,
        decoder: DeformableDecoder,
        num_classes: int = 2,
        d_model: int = 256,
        dilations: tuple[int, ...] = (1, 2, 4),
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projections = nn.ModuleList(Projection(c, d_model) for c in backbone.channels)
        self.classifier = ClassificationHead(d_model, num_classes)
        self.context = nn.ModuleList(DilatedContext(d_model, dilations) for _ in backbone.channels)
        self.decoder = decoder
        self.aux_loss = aux_loss

    @property
    def size_divisor(self) -> int:
        return self.backbone.size_divisor

    def normalize(self, images: Tensor) -> Tensor:
        """(B, 1|3, H, W) in [0, 1] -> (B, 3, H, W) normalised with the backbone's statistics
        (:meth:`Backbone.normalize`: the grayscale channel is repeated to RGB)."""
        return self.backbone.normalize(images)

    def forward(self, images: Tensor) -> dict:
        """
        Args:
            images: (B, 1 or 3, H, W) float in [0, 1]; H and W multiples of ``size_divisor``.

        Returns:
            dict with ``image_logits`` (B, C), ``pred_boxes`` (B, K, 4) normalised (cx, cy, w, h) in [0, 1],
            ``pred_obj_logits`` (B, K), ``aux_outputs``: list (one per earlier decoder layer) of dicts
            with ``pred_boxes`` and ``pred_obj_logits``.
        """
        features = self.backbone(self.normalize(images))
        projected = [proj(f) for proj, f in zip(self.projections, features)]
        image_logits = self.classifier(projected[-1])
        memory_maps = [ctx(p) for ctx, p in zip(self.context, projected)]
        spatial_shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in memory_maps]
        memory = torch.cat([m.flatten(2).transpose(1, 2) for m in memory_maps], dim=1)
        # The decoder works on K = 3 queries: its cost is per-op overhead, not arithmetic, so under autocast it
        # runs in float32 (no per-call weight casts, and box regression keeps full precision).
        with torch.autocast(device_type=memory.device.type, enabled=False):
            boxes, obj_logits = self.decoder(memory.float(), spatial_shapes)
        out = {"image_logits": image_logits, "pred_boxes": boxes[-1], "pred_obj_logits": obj_logits[-1]}
        out["aux_outputs"] = (
            [{"pred_boxes": b, "pred_obj_logits": o} for b, o in zip(boxes[:-1], obj_logits[:-1])]
            if self.aux_loss
            else []
        )
        return out


def build_model(config: ModelConfig) -> MultiTaskDETR:
    """Build the paper's model from a ModelConfig (the only place the config is read)."""
    if config.feature_levels < 1:
        raise ValueError("feature_levels must be >= 1")
    backbone = build_backbone(
        config.backbone,
        pretrained=config.pretrained,
        out_indices=tuple(range(-config.feature_levels, 0)),
        **config.backbone_options,
    )
    decoder = DeformableDecoder(
        d_model=config.d_model,
        n_levels=len(backbone.channels),
        nheads=config.nheads,
        n_points=config.n_points,
        dim_feedforward=config.dim_feedforward,
        dropout=config.dropout,
        num_layers=config.dec_layers,
        num_queries=config.num_queries,
        box_refine=config.box_refine,
    )
    return MultiTaskDETR(
        backbone,
        decoder,
        num_classes=config.num_classes,
        d_model=config.d_model,
        dilations=tuple(config.dilations),
        aux_loss=config.aux_loss,
    )
