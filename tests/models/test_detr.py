import pytest
import torch

from mammodetr import LossConfig, ModelConfig, build_criterion, build_model
from mammodetr.data.boxes import box_cxcywh_to_xyxy
from mammodetr.models.backbone import BACKBONES
from mammodetr.models.box_ops import box_iou

SMALL_HEAD = dict(d_model=64, nheads=4, dim_feedforward=128, dec_layers=2)


def _targets():
    return [
        {"boxes": torch.tensor([[0.4, 0.5, 0.2, 0.3], [0.7, 0.2, 0.1, 0.1]]), "label": torch.tensor(1)},
        {"boxes": torch.zeros(0, 4), "label": torch.tensor(0)},
    ]


@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_forward_shapes_and_gradients(name, levels):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=name, pretrained="none", feature_levels=levels, **SMALL_HEAD))
    criterion = build_criterion(LossConfig(), num_aux=SMALL_HEAD["dec_layers"] - 1)
    out = model(torch.rand(2, 1, 64, 64))
    assert out["image_logits"].shape == (2, 2) and out["image_logits"].dtype == torch.float32
    assert out["pred_boxes"].shape == (2, 3, 4) and out["pred_obj_logits"].shape == (2, 3)
    assert len(out["aux_outputs"]) == SMALL_HEAD["dec_layers"] - 1
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    for t in [out["image_logits"], out["pred_boxes"], out["pred_obj_logits"]]:
        assert torch.isfinite(t).all()
    assert len(model.backbone.channels) == levels
    criterion(out, _targets())["loss"].backward()
    missing = [
        n for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing, f"parameters without a finite gradient: {missing[:10]}"


def test_default_config_is_the_paper():
    cfg = ModelConfig(backbone="resnet50", pretrained="none")
    got = (cfg.d_model, cfg.num_queries, cfg.nheads, cfg.n_points, cfg.dim_feedforward, cfg.dec_layers)
    assert got == (256, 3, 8, 4, 1024, 6)
    assert tuple(cfg.dilations) == (1, 2, 4) and cfg.num_classes == 2
    model = build_model(cfg)
    assert model.context[0].branches[1].dilation == (2, 2) and model.context[0].branches[1].padding == (2, 2)
    assert model.projections[0].conv.kernel_size == (1, 1) and model.projections[0].conv.out_channels == 256
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_rgb_and_grayscale_inputs_agree():
    model = build_model(ModelConfig(backbone="resnet18", pretrained="none", **SMALL_HEAD)).eval()
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a, b = model(gray), model(gray.expand(-1, 3, -1, -1))
    torch.testing.assert_close(a["image_logits"], b["image_logits"])


def _synthetic_pair():
    images = torch.full((2, 1, 64, 64), 0.1)
    images[0, :, 8:24, 30:54] = 0.9  # box x 30..54, y 8..24
    images[1, :, 36:60, 6:22] = 0.9  # box x 6..22, y 36..60
    boxes = [torch.tensor([[42 / 64, 16 / 64, 24 / 64, 16 / 64]]), torch.tensor([[14 / 64, 48 / 64, 16 / 64, 24 / 64]])]
    targets = [{"boxes": b, "label": torch.tensor(i)} for i, b in enumerate(boxes)]
    return images, targets


def test_small_model_overfits_two_images():
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(backbone="test_convnext", pretrained="none", dropout=0.0, feature_levels=3, **SMALL_HEAD)
    )
    criterion = build_criterion(LossConfig(), num_aux=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, targets = _synthetic_pair()
    model.train()
    first = None
    for _step in range(200):
        losses = criterion(model(images), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        first = first if first is not None else losses["loss"].item()
    assert losses["loss"].item() < 0.3 * first
    model.eval()
    with torch.no_grad():
        out = model(images)
    for i, t in enumerate(targets):
        best = out["pred_obj_logits"][i].argmax()
        iou = box_iou(box_cxcywh_to_xyxy(out["pred_boxes"][i, best][None]), box_cxcywh_to_xyxy(t["boxes"]))[0]
        assert iou.item() > 0.5, f"image {i}: top box IoU {iou.item():.2f}"
    assert out["image_logits"].argmax(-1).tolist() == [0, 1]
