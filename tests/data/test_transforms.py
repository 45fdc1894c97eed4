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


def _ellipse_image(cx, cy, a, b, size=128):
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return torch.from_numpy((((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1).astype(np.float32))[None]


@pytest.mark.parametrize("angle", [5.0, 8.0, 25.0])
def test_ellipse_box_rotation_is_exact_for_an_elliptical_lesion(angle):
    size, (cx, cy, a, b) = 128, (60.0, 70.0, 22.0, 10.0)
    img = _ellipse_image(cx, cy, a, b, size)
    box = torch.tensor([[cx - a, cy - b, cx + a, cy + b]])
    for seed in range(4):
        p = AugmentPreset("rot", rotate_deg=angle, scale=(0.9, 1.1), box_rotation="ellipse")
        out, got, _ = augment(img, box, p, np.random.default_rng(seed))
        np.testing.assert_allclose(got[0].numpy(), _bbox(out), atol=1.2)  # the lesion's own box, to a pixel
        corners = augment(img, box, AugmentPreset("rot", rotate_deg=angle, scale=(0.9, 1.1)),
                          np.random.default_rng(seed))[1]
        assert (corners[0, 2:] - corners[0, :2] >= got[0, 2:] - got[0, :2] - 1e-4).all()  # corners only grow


def test_mammo_preset_keeps_the_background_black_and_never_flips_vertically():
    from mammodetr.data.transforms import _affine_matrix

    p = get_preset("mammo")
    assert p.box_rotation == "ellipse" and p.brightness == 0 and p.contrast == 0 and p.noise_std == 0
    geometry_only = AugmentPreset("geo", hflip_p=p.hflip_p, scale=p.scale, translate=p.translate,
                                  rotate_deg=p.rotate_deg)
    img = torch.zeros(1, S, S)
    img[0, 10:54, :30] = 0.6
    for seed in range(30):
        assert _affine_matrix(p, np.random.default_rng(seed))[1, 1] > 0  # the y axis is never mirrored
        out = augment(img, torch.zeros(0, 4), p, np.random.default_rng(seed))[0]
        moved = augment(img, torch.zeros(0, 4), geometry_only, np.random.default_rng(seed))[0]
        assert (moved == 0).any() and out[moved == 0].abs().max() == 0  # black stays black
        assert out[moved > 0.5].mean() > 0.3  # the tissue is still there


def test_quantum_noise_grows_with_the_signal():
    p = AugmentPreset("q", quantum_noise=0.05)
    img = torch.cat([torch.full((1, S, S // 2), 0.04), torch.full((1, S, S // 2), 0.64)], dim=2)
    out = augment(img, torch.zeros(0, 4), p, np.random.default_rng(0))[0]
    dark, bright = (out - img)[0, :, : S // 2].std(), (out - img)[0, :, S // 2:].std()
    assert bright / dark == pytest.approx(4.0, rel=0.15)  # sqrt(0.64 / 0.04)
    assert torch.equal(augment(torch.zeros(1, S, S), torch.zeros(0, 4), p, np.random.default_rng(0))[0],
                       torch.zeros(1, S, S))


def test_existing_presets_draw_as_before():
    # The new intensity steps draw nothing when off: a preset without them gives the same image as before them.
    img, box = torch.rand(1, S, S), torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    a = augment(img, box, "strong", np.random.default_rng(5))
    b = augment(img, box, AugmentPreset(**{**get_preset("strong").__dict__, "gain": 0.0}), np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
