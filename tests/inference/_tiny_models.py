"""Tiny versions of every registered backbone's multi-task model (test helper): fast to export and run."""

from __future__ import annotations

import math

import torch
from torch import nn

from mammodetr.config import RunConfig
from mammodetr.models.config import ModelConfig
from mammodetr.models.decoder import DeformableDecoder
from mammodetr.models.detr import MultiTaskDETR, build_model
from mammodetr.models.mambavision import MambaVision, MambaVisionBackbone

SIZE = 64
# d_model 64: with 32 the projection's GroupNorm (32 groups) has one channel per group, and the classifier's average
# of a normalised channel is its bias whatever the image.
SMALL_HEAD = dict(d_model=64, nheads=4, dim_feedforward=64, dec_layers=1)
# timm options pass through the backbone registry; MambaVision-T has no width option, so its tiny model is built
# from the same classes by hand (stages 3-4 with both a Mamba mixer and an attention block, windows that fit the
# 4x4 and 2x2 maps of a 64 px input).
TIMM_TINY = {"resnet50": {"layers": [1, 1, 1, 1]},
             "convnextv2_tiny": {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]},
             "dinov3_vitb16": {"depth": 1, "embed_dim": 64, "num_heads": 2}}
MAMBA_TINY = dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(2, 2, 4, 8), window_size=(8, 8, 4, 2),
                  mlp_ratio=2.0, drop_path_rate=0.0, num_classes=0)
BACKBONES = sorted([*TIMM_TINY, "mambavision_t"])


def tiny_model(name: str, *, size: int = SIZE, letterbox: bool = False, seed: int = 0
               ) -> tuple[MultiTaskDETR, RunConfig]:
    """(model in eval mode, its run config) for a registered backbone ``name`` at ``size`` px, with random weights
    everywhere (:func:`randomise`)."""
    torch.manual_seed(seed)
    config = RunConfig(model=ModelConfig(backbone=name, pretrained="none", backbone_options=TIMM_TINY.get(name, {}),
                                         **SMALL_HEAD))
    config.data.image_size, config.data.letterbox = size, letterbox
    if name != "mambavision_t":
        return randomise(build_model(config.model)).eval(), config
    m = config.model
    decoder = DeformableDecoder(d_model=m.d_model, n_levels=1, nheads=m.nheads, n_points=m.n_points,
                                dim_feedforward=m.dim_feedforward, num_layers=m.dec_layers, num_queries=m.num_queries)
    model = MultiTaskDETR(MambaVisionBackbone(MambaVision(**MAMBA_TINY)), decoder, d_model=m.d_model)
    return randomise(model).eval(), config


def randomise(model: nn.Module) -> nn.Module:
    """Fan-in-scaled random weights, random biases and jittered norm scales, in place.

    An untrained model's heads start at zero (box corrections, sampling offsets) or at a prior (objectness 0.01),
    so its outputs hardly depend on the image; with random weights everywhere they do, and a comparison of two
    runtimes on different images means something.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model
