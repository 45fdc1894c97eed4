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
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="not on the path"):
        gradcam(model, torch.rand(1, 1, 64, 64), target_layer="context.-1")
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="not on the path"):
        gradcam(model, torch.rand(1, 1, 64, 64), target_layer="decoder")  # tuple output
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


class _BrightnessModel(torch.nn.Module):
    """Toy model whose malignant logit is the mean of a positive 1x1 projection: Grad-CAM must peak where the
    image is bright. Follows the output contract (image_logits, pred_boxes, pred_obj_logits)."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d(1, 4, 1)
        torch.nn.init.constant_(conv.weight, 0.5)
        torch.nn.init.zeros_(conv.bias)
        self.projections = torch.nn.ModuleList([conv])

    def forward(self, x):
        f = self.projections[-1](x)
        logit = f.mean(dim=(1, 2, 3))
        b = x.shape[0]
        return {"image_logits": torch.stack([-logit, logit], 1), "pred_boxes": torch.full((b, 3, 4), 0.5),
                "pred_obj_logits": torch.zeros(b, 3), "aux_outputs": []}


@pytest.mark.parametrize("letterbox", [True, False])
def test_localisation_scores_find_a_planted_bright_lesion(tmp_path, letterbox):
    from PIL import Image

    from mammodetr.evaluation.evaluate import load_split
    from mammodetr.evaluation.gradcam import localisation_scores

    from ._synthetic import make_prepared_dataset

    data = make_prepared_dataset(tmp_path / "ds", n_patients=3, size_hw=(96, 48))
    images = load_split(data, "test")
    for im in images:
        pix = np.full((96, 48), 3000, np.uint16)
        if len(im.boxes_xyxy_px):
            x1, y1, x2, y2 = np.round(im.boxes_xyxy_px[0]).astype(int)
            pix[y1:y2, x1:x2] = 60000
        Image.fromarray(pix).save(data / im.file_name)
    model = _BrightnessModel().train()
    res = localisation_scores(model, {"data": {"image_size": 64, "letterbox": letterbox}}, data, images,
                              n_overlays=1)
    s = res.summary
    assert s["n_images"] == sum(len(im.boxes_xyxy_px) > 0 for im in images)
    assert s["pointing_game"] == 1.0
    assert s["energy_in_box"] > 2 * s["box_area_fraction"]
    assert model.training and len(res.overlays) == 1


def test_evaluate_in_memory_model_reports_gradcam_in_meta(tmp_path):
    import json

    from PIL import Image

    from mammodetr.evaluation.evaluate import EvaluationOptions, evaluate_split, load_split

    from ._synthetic import make_prepared_dataset

    data = make_prepared_dataset(tmp_path / "ds", n_patients=3, size_hw=(64, 64))
    for im in load_split(data, "test"):
        pix = np.full((64, 64), 3000, np.uint16)
        for x1, y1, x2, y2 in np.round(im.boxes_xyxy_px).astype(int):
            pix[y1:y2, x1:x2] = 60000
        Image.fromarray(pix).save(data / im.file_name)
    evaluate_split(data, tmp_path / "ev", model=_BrightnessModel(), config={"data": {"image_size": 32}},
                   options=EvaluationOptions(n_bootstrap=0), report=False)
    g = json.loads((tmp_path / "ev" / "metrics.json").read_text())["meta"]["gradcam"]
    assert g["pointing_game"] == 1.0 and g["file"] == "gradcam.json"
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_split(data, tmp_path / "x", model=_BrightnessModel(), config={}, predictions_path="p.jsonl")
