import numpy as np
import pytest
import torch

from mammodetr.explain.gradcam import TargetLayerError, gradcam, resolve_layer, token_reshape_transform

SMALL_HEAD = dict(d_model=32, nheads=4, dim_feedforward=64, dec_layers=1)
# Shrunk versions of the four families (timm options pass through the backbone registry); MambaVision gets
# windows that fit a 64x64 input (stage maps 4x4 and 2x2).
TINY = {"resnet50": {"layers": [1, 1, 1, 1]},
        "convnextv2_tiny": {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
        "dinov3_vitb16": {"depth": 1, "embed_dim": 64, "num_heads": 2},
        "mambavision_t": {"window_sizes": [4, 2]}}


def _tiny(name):
    from mammodetr import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=name, pretrained="none", backbone_options=TINY.get(name, {}),
                                   **SMALL_HEAD))


def test_every_registered_backbone_is_covered():
    from mammodetr.models.backbone import BACKBONES

    assert set(BACKBONES) <= set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_gradcam_every_backbone_restores_mode(name):
    model = _tiny(name)
    model.train()
    model.backbone.eval()  # a mixed state (frozen-BN style): both modes must come back exactly as they were
    before = {n: m.training for n, m in model.named_modules()}
    res = gradcam(model, torch.rand(2, 1, 64, 64))
    assert res.cams.shape == (2, 64, 64)
    assert np.isfinite(res.cams).all() and res.cams.min() >= 0 and res.cams.max() <= 1
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(p.grad is None for p in model.parameters())


def test_vit_token_layer_with_prefix_tokens():
    model = _tiny("dinov3_vitb16").eval()
    blocks = [n for n, m in model.named_modules() if n.endswith("blocks")]
    assert blocks, "expected a ViT with .blocks"
    res = gradcam(model, torch.rand(1, 1, 64, 64), target_layer=f"{blocks[0]}.-1")
    assert res.cams.shape == (1, 64, 64) and np.isfinite(res.cams).all()


def test_token_reshape_drops_prefix_tokens():
    t = torch.arange(2 * (5 + 16) * 3, dtype=torch.float32).reshape(2, 21, 3)
    out = token_reshape_transform((64, 64))(t)
    assert out.shape == (2, 3, 4, 4)
    assert torch.equal(out[0, :, 0, 0], t[0, 5])  # first patch token, after 1 class + 4 register tokens


def test_hook_never_fired_is_a_clear_error():
    model = _tiny("convnextv2_tiny")
    # the context module feeds the decoder, not image_logits: its forward hook fires, no gradient reaches it
    with pytest.warns(RuntimeWarning), pytest.raises(TargetLayerError, match="not on the path"):
        gradcam(model, torch.rand(1, 1, 64, 64), target_layer="context.-1")
    with pytest.warns(RuntimeWarning), pytest.raises(TargetLayerError, match="not on the path"):
        gradcam(model, torch.rand(1, 1, 64, 64), target_layer="decoder")  # tuple output
    with pytest.raises(ValueError, match="no sub-module"):
        resolve_layer(model, "projections.-1.nope")
