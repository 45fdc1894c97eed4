"""Augmentation presets keep boxes on their pixels; model boxes map back to prepared pixels."""

import numpy as np
import pytest
import torch

from mammodetr.data.transforms import (
    PRESETS,
    AugmentPreset,
    augment,
    base_transform,
    boxes_cxcywh_to_xyxy,
    boxes_xyxy_to_cxcywh,
    get_preset,
    model_boxes_to_image,
)

S = 64


def _square_image(box):
    img = torch.zeros(1, S, S)
    x1, y1, x2, y2 = box
    img[0, y1:y2, x1:x2] = 1.0
    return img


def _bbox(img, thr=0.5):
    ys, xs = np.nonzero(img[0].numpy() > thr)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown augmentation preset 'heavy'; choose one of none, light, strong"):
        get_preset("heavy")
    assert set(PRESETS) >= {"none", "light", "strong"}


def test_none_is_identity():
    img = torch.rand(1, S, S)
    boxes = torch.tensor([[3.0, 4.0, 20.0, 30.0]])
    out, b, keep = augment(img, boxes, "none", np.random.default_rng(0))
    assert torch.equal(out, img) and torch.equal(b, boxes) and keep.all()


def test_hflip_is_exact():
    box = (10, 20, 25, 40)
    p = AugmentPreset("flip", hflip_p=1.0)
    out, b, _ = augment(_square_image(box), torch.tensor([box], dtype=torch.float32), p, np.random.default_rng(0))
    np.testing.assert_allclose(b[0].numpy(), [S - 25, 20, S - 10, 40])
    np.testing.assert_allclose(_bbox(out), b[0].numpy())


@pytest.mark.parametrize("name", ["light", "strong"])
def test_geometric_augmentation_keeps_boxes_on_their_pixels(name):
    box = (20, 18, 36, 38)
    img = _square_image(box)
    rotates = get_preset(name).rotate_deg > 0
    for seed in range(8):
        out, b, keep = augment(img, torch.tensor([box], dtype=torch.float32), name, np.random.default_rng(seed))
        assert out.shape == (1, S, S) and 0 <= out.min() and out.max() <= 1
        assert keep.tolist() == [True]
        if name == "light":  # intensity changes keep a white square well above 0.5 after gamma/contrast
            np.testing.assert_allclose(_bbox(out, 0.3), b[0].numpy(), atol=1.5)
        elif rotates:  # a rotated square lies inside the box around it
            found = _bbox(out, 0.3)
            assert found[0] >= b[0, 0] - 1.5 and found[1] >= b[0, 1] - 1.5
            assert found[2] <= b[0, 2] + 1.5 and found[3] <= b[0, 3] + 1.5


def test_box_pushed_out_is_dropped():
    p = AugmentPreset("shift", translate=0.5)
    rng = np.random.default_rng(3)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [24.0, 24.0, 40.0, 40.0]])
    dropped = 0
    for _ in range(20):
        _, b, keep = augment(torch.zeros(1, S, S), boxes, p, rng)
        assert b.shape[0] == int(keep.sum())
        dropped += int((~keep).sum())
    assert dropped > 0


@pytest.mark.parametrize("letterbox", [False, True])
def test_model_boxes_to_image_inverts_base_transform(letterbox):
    hw = (300, 180)
    t = base_transform(hw, S, letterbox)
    assert t.output_size_hw == (S, S)
    boxes_px = np.array([[10.0, 20.0, 100.0, 250.0], [0.0, 0.0, 180.0, 300.0]])
    model = t.apply_boxes_xyxy(boxes_px) / S
    cxcywh = boxes_xyxy_to_cxcywh(torch.tensor(model))
    back = model_boxes_to_image(cxcywh, hw, S, letterbox)
    assert back.dtype == torch.float32
    np.testing.assert_allclose(back.numpy(), boxes_px, atol=1e-3)


def test_letterbox_geometry_by_hand():
    # 300 x 180 -> scale 64/300: 64 x 38 (38.4 rounded), padded 13 left and 13 right
    t = base_transform((300, 180), S, letterbox=True)
    box = t.apply_boxes_xyxy([[0, 0, 180, 300]])[0]
    np.testing.assert_allclose(box, [13, 0, 13 + 38, 64])
    # model box covering the whole input maps to the whole image, clipped out of the padding
    full = model_boxes_to_image(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), (300, 180), S, True)
    np.testing.assert_allclose(full.numpy(), [[0, 0, 180, 300]], atol=1e-4)


def test_box_format_helpers_round_trip():
    b = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    assert torch.allclose(boxes_cxcywh_to_xyxy(boxes_xyxy_to_cxcywh(b)), b)
    assert boxes_xyxy_to_cxcywh(b).tolist() == [[3.0, 5.5, 4.0, 7.0]]
