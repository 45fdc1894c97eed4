"""Augmentation presets keep boxes on their pixels."""

import numpy as np
import pytest
import torch

from mammodetr.data.transforms import PRESETS, AugmentPreset, augment, get_preset

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
