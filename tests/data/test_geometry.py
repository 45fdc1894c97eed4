"""Recorded crop/flip/resize/pad transforms: boxes round-trip exactly and follow the pixels."""

import json

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from mammodetr.data.geometry import ImageTransform, clip_boxes_xyxy


def _random_boxes(rng, h, w, n=8):
    x = np.sort(rng.uniform(0, w, size=(n, 2)), axis=1)
    y = np.sort(rng.uniform(0, h, size=(n, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


CHAINS = {
    "crop": lambda t: t.crop(7, 3, 51, 37),
    "hflip": lambda t: t.hflip(),
    "vflip": lambda t: t.vflip(),
    "resize": lambda t: t.resize((23, 71)),
    "pad": lambda t: t.pad(3, 1, 4, 9),
    "crop+flip": lambda t: t.crop(7, 3, 51, 37).hflip(),
    "crop+flip+resize": lambda t: t.crop(7, 3, 51, 37).hflip().resize((100, 13)),
    "resize+crop+flip+pad": lambda t: t.resize((80, 120)).crop(10, 5, 90, 70).hflip().pad(2, 0, 5, 1),
    "flip+flip": lambda t: t.hflip().hflip(),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_boxes_round_trip(name):
    rng = np.random.default_rng(0)
    t = CHAINS[name](ImageTransform((40, 60)))
    boxes = _random_boxes(rng, 40, 60)
    back = t.invert_boxes_xyxy(t.apply_boxes_xyxy(boxes))
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-9)
    fwd = t.apply_boxes_xyxy(t.invert_boxes_xyxy(boxes))
    np.testing.assert_allclose(fwd, boxes, rtol=0, atol=1e-9)


def test_matches_torchvision_box_ops():
    """Independent reference: torchvision.transforms.v2 on BoundingBoxes (crop, horizontal flip, resize)."""
    rng = np.random.default_rng(1)
    h, w = 40, 60
    boxes = _random_boxes(rng, 30, 40) + np.array([8, 4, 8, 4])  # inside the crop, so no clamping differences
    t = ImageTransform((h, w)).crop(7, 3, 51, 37).hflip().resize((68, 22))
    ours = t.apply_boxes_xyxy(boxes)

    bb = tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float64), format="XYXY", canvas_size=(h, w))
    bb = TF.crop(bb, top=3, left=7, height=34, width=44)
    bb = TF.horizontal_flip(bb)
    bb = TF.resize(bb, size=[68, 22])
    np.testing.assert_allclose(ours, bb.as_subclass(torch.Tensor).numpy(), atol=1e-6)


def test_image_and_boxes_move_together():
    """A filled rectangle in the image lands exactly where the transformed box says (integer-factor resize)."""
    img = np.zeros((40, 60), np.float32)
    box = [12, 6, 21, 15]
    img[6:15, 12:21] = 1.0
    t = ImageTransform((40, 60)).crop(4, 2, 44, 38).hflip().resize((72, 80), "nearest")
    out, boxes = t.apply(img, [box])
    assert out.shape == t.output_size_hw == (72, 80)
    ys, xs = np.nonzero(out > 0.5)
    np.testing.assert_allclose(boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1e-9)


def test_json_round_trip_keeps_the_mapping():
    t = ImageTransform((300, 200)).crop(10, 20, 190, 280).hflip().resize((130, 90), "bicubic").pad(1, 2, 3, 4)
    text = json.dumps(t.to_dict())
    t2 = ImageTransform.from_dict(json.loads(text))
    assert t2 == t
    assert t2.output_size_hw == (136, 94)
    boxes = _random_boxes(np.random.default_rng(2), 300, 200)
    np.testing.assert_array_equal(t2.apply_boxes_xyxy(boxes), t.apply_boxes_xyxy(boxes))


def test_invalid_ops_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        ImageTransform((40, 60)).crop(0, 0, 61, 40)
    with pytest.raises(ValueError, match="unknown transform op"):
        ImageTransform.from_dict({"input_size_hw": [4, 4], "ops": [{"op": "shear"}]})
    with pytest.raises(ValueError, match="recorded output size"):
        ImageTransform.from_dict({"input_size_hw": [4, 4], "ops": [], "output_size_hw": [5, 4]})
    with pytest.raises(ValueError, match="expects"):
        ImageTransform((4, 4)).apply_image(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="shape"):
        ImageTransform((4, 4)).apply_boxes_xyxy(np.zeros((2, 3)))


def test_flipped_flag_and_clip():
    assert ImageTransform((4, 4)).hflip().flipped
    assert not ImageTransform((4, 4)).hflip().hflip().flipped
    clipped = clip_boxes_xyxy(np.array([[-5, 2, 10, 20]]), (8, 6))
    np.testing.assert_array_equal(clipped, [[0, 2, 6, 8]])


def test_resize_image_matches_analytic_ramp():
    """The image resize is a real resampling: a smooth ramp resized equals the analytically resized ramp."""
    h, w = 64, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = ((xx + 0.5) / w * 0.5 + (yy + 0.5) / h * 0.4).astype(np.float32)
    out = ImageTransform((h, w)).resize((32, 24), "bilinear").apply_image(ramp)
    y2, x2 = np.mgrid[0:32, 0:24].astype(np.float64)
    expected = (x2 + 0.5) / 24 * 0.5 + (y2 + 0.5) / 32 * 0.4
    # interior only: Pillow's edge handling differs from the analytic extension
    np.testing.assert_allclose(out[2:-2, 2:-2], expected[2:-2, 2:-2], atol=2e-3)
