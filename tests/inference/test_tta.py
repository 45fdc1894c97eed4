"""Horizontal-flip TTA: boxes come back to the original image, probabilities are averaged, K is kept."""

import numpy as np
import pytest
import torch
from torch import nn

from mammodetr.config import RunConfig
from mammodetr.inference.predictor import Predictor
from mammodetr.inference.tta import hflip_boxes_cxcywh, merge_hflip

S = 64


class LocatingModel(nn.Module):
    """Finds the bright blob: box 0 sits on its centroid (so it mirrors with the image); boxes 1, 2 are decoys at
    fixed places (so they do not). The malignancy logit is the left-right intensity difference (it changes sign
    under a flip), so the two passes disagree and averaging is visible."""

    def __init__(self, single_logit: bool = False) -> None:
        super().__init__()
        self.single_logit = single_logit
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images):
        x = images[:, 0]
        b, h, w = x.shape
        mask = (x > 0.5).float()
        cols = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        rows = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        n = mask.sum(dim=(1, 2)).clamp_min(1)
        cx = (mask * cols).sum(dim=(1, 2)) / n
        cy = (mask * rows[:, None]).sum(dim=(1, 2)) / n
        blob = torch.stack([cx, cy, torch.full_like(cx, 0.2), torch.full_like(cx, 0.25)], dim=1)
        decoys = torch.tensor([[0.1, 0.1, 0.05, 0.05], [0.15, 0.85, 0.06, 0.04]]).expand(b, 2, 4)
        boxes = torch.cat([blob[:, None], decoys], dim=1)
        obj = torch.tensor([2.0, -1.0, -1.5]).expand(b, 3) * self.scale
        z = 4 * (x[:, :, : w // 2].mean(dim=(1, 2)) - x[:, :, w // 2:].mean(dim=(1, 2))) + 0.3
        logits = z[:, None] if self.single_logit else torch.stack([-z, z], dim=1)
        return {"image_logits": logits, "pred_boxes": boxes, "pred_obj_logits": obj, "aux_outputs": []}


def _images():
    imgs = torch.zeros(2, 1, S, S)
    imgs[0, 0, 10:26, 40:56] = 1.0  # blob on the right
    imgs[1, 0, 30:50, 5:20] = 0.9  # blob on the left
    return imgs


def test_hflip_of_boxes_is_an_involution_and_mirrors_the_centre():
    boxes = torch.tensor([[[0.2, 0.3, 0.1, 0.2], [0.9, 0.5, 0.2, 0.1]]])
    out = hflip_boxes_cxcywh(boxes)
    torch.testing.assert_close(out[..., 0], 1 - boxes[..., 0])
    torch.testing.assert_close(out[..., 1:], boxes[..., 1:])
    torch.testing.assert_close(hflip_boxes_cxcywh(out), boxes)


@pytest.mark.parametrize("single_logit", [False, True])
def test_merge_keeps_mirrored_findings_averages_probabilities_and_halves_one_sided_boxes(single_logit):
    model, x = LocatingModel(single_logit), _images()
    a, b = model(x), model(x.flip(-1))
    merged = merge_hflip(a, b)
    assert merged["pred_boxes"].shape == (2, 3, 4) and merged["pred_obj_logits"].shape == (2, 3)
    # The blob's box from the mirrored pass lands on the blob again: fused box = the box, score unchanged.
    torch.testing.assert_close(merged["pred_boxes"][:, 0], a["pred_boxes"][:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(merged["pred_obj_logits"][:, 0].sigmoid(), torch.sigmoid(torch.tensor(2.0)).expand(2))
    # Decoys do not mirror: each pass found them alone, so they keep half their score; the best two remain.
    decoy = torch.sigmoid(torch.tensor(-1.0)) / 2
    torch.testing.assert_close(merged["pred_obj_logits"][:, 1:].sigmoid(), decoy.expand(2, 2))
    kept_x = sorted(merged["pred_boxes"][0, 1:, 0].tolist())
    np.testing.assert_allclose(kept_x, [0.1, 0.9], atol=1e-6)  # the original decoy and the mirrored pass's one
    # Probabilities are averaged, not logits.
    if single_logit:
        expected = 0.5 * (a["image_logits"][:, 0].sigmoid() + b["image_logits"][:, 0].sigmoid())
        got = merged["image_logits"][:, 0].sigmoid()
    else:
        expected = 0.5 * (a["image_logits"].softmax(-1)[:, 1] + b["image_logits"].softmax(-1)[:, 1])
        got = merged["image_logits"].softmax(-1)[:, 1]
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(a["image_logits"], b["image_logits"])  # the two passes did disagree


def test_overlapping_boxes_fuse_by_score_weighted_corners():
    a = {"image_logits": torch.zeros(1, 2), "pred_boxes": torch.tensor([[[0.30, 0.5, 0.2, 0.2]]]),
         "pred_obj_logits": torch.tensor([[0.0]])}  # score 0.5
    # The mirrored pass sees it at cx 0.68 -> 0.32 on the original: IoU ~0.82, fused.
    b = {"image_logits": torch.zeros(1, 2), "pred_boxes": torch.tensor([[[0.68, 0.5, 0.2, 0.2]]]),
         "pred_obj_logits": torch.tensor([[torch.logit(torch.tensor(0.9))]])}
    merged = merge_hflip(a, b)
    # corners: x1 = (0.5 * 0.20 + 0.9 * 0.22) / 1.4
    cx = ((0.5 * 0.20 + 0.9 * 0.22) / 1.4 + (0.5 * 0.40 + 0.9 * 0.42) / 1.4) / 2
    torch.testing.assert_close(merged["pred_boxes"][0, 0], torch.tensor([cx, 0.5, 0.2, 0.2]), atol=1e-6, rtol=0)
    torch.testing.assert_close(merged["pred_obj_logits"][0, 0].sigmoid(), torch.tensor(0.7))


def test_predictor_tta_maps_boxes_back_and_averages():
    cfg = RunConfig()
    cfg.data.image_size = S
    model, x = LocatingModel(), _images()
    u16 = [(im[0].numpy() * 65535).astype(np.uint16) for im in x]
    plain = Predictor(model, cfg, tta=False).predict_arrays(u16, ["a", "b"])
    tta = Predictor(model, cfg, tta=True).predict_arrays(u16, ["a", "b"])
    for p, q, img in zip(plain, tta, x):
        np.testing.assert_allclose(q.boxes_xyxy_px[0], p.boxes_xyxy_px[0], atol=1e-3)  # the blob, not its mirror
        flipped = LocatingModel()(img.flip(-1)[None])["image_logits"].softmax(-1)[0, 1].item()
        assert q.p_malignant == pytest.approx(0.5 * (p.p_malignant + flipped), abs=1e-5)  # uint16 input
        assert len(q.scores) == len(p.scores) == 3


def test_from_checkpoint_uses_the_validated_tta_unless_told(tmp_path):
    from mammodetr.checkpoint import save_checkpoint
    from mammodetr.models.config import ModelConfig
    from mammodetr.models.detr import build_model

    cfg = RunConfig(model=ModelConfig(backbone="test_convnext", pretrained="none", d_model=32, nheads=4, dec_layers=1,
                                      dim_feedforward=32))
    cfg.train.tta = True
    save_checkpoint(tmp_path / "ckpt", build_model(cfg.model), cfg)
    assert Predictor.from_checkpoint(tmp_path / "ckpt", device="cpu").tta is True
    assert Predictor.from_checkpoint(tmp_path / "ckpt", device="cpu", tta=False).tta is False
