import numpy as np
import pytest
import torch

from mammodetr.evaluation.gradcam import (
    energy_in_boxes,
    gradcam,
    pointing_game_hit,
    resolve_layer,
    token_reshape_transform,
)

SMALL_HEAD = dict(d_model=32, nheads=4, dim_feedforward=64, dec_layers=1)


def _backbones():
    from mammodetr.models.backbone import BACKBONES

    return sorted(BACKBONES)


@pytest.mark.parametrize("name", _backbones())
@pytest.mark.parametrize("train_mode", [True, False])
def test_gradcam_every_backbone_restores_mode(name, train_mode):
    from mammodetr import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=name, pretrained="none", **SMALL_HEAD))
    model.train(train_mode)
    if train_mode:
        model.backbone.eval()  # a mixed state (frozen-BN style) must come back exactly as it was
    before = {n: m.training for n, m in model.named_modules()}
    res = gradcam(model, torch.rand(2, 1, 64, 64))
    assert res.cams.shape == (2, 64, 64)
    assert np.isfinite(res.cams).all() and res.cams.min() >= 0 and res.cams.max() <= 1
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(p.grad is None for p in model.parameters())


def test_vit_token_layer_with_prefix_tokens():
    from mammodetr import ModelConfig, build_model

    model = build_model(ModelConfig(backbone="dinov3_vitb16", pretrained="none", **SMALL_HEAD)).eval()
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
    from mammodetr import ModelConfig, build_model

    model = build_model(ModelConfig(backbone="resnet18", pretrained="none", **SMALL_HEAD))
    # the decoder does not feed image_logits: its hooks fire but no gradient reaches it
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="not on the path"):
        gradcam(model, torch.rand(1, 1, 64, 64), target_layer="decoder")
    with pytest.raises(ValueError, match="no sub-module"):
        resolve_layer(model, "projections.-1.nope")


def test_pointing_game_and_energy_hand_made():
    cam = np.zeros((10, 10), np.float32)
    cam[2, 3] = 1.0
    cam[8, 8] = 0.5
    box = np.array([[2, 1, 5, 4]])  # covers pixel (row 2, col 3) only among the non-zero ones
    assert pointing_game_hit(cam, box)
    assert not pointing_game_hit(cam, np.array([[6, 6, 10, 10]]))
    assert energy_in_boxes(cam, box) == pytest.approx(1.0 / 1.5)
