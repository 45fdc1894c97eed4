"""Grad-CAM maps put back on the original image through the recorded transform (crop, flip, resize, letterbox)."""

import numpy as np

from mammodetr.data.geometry import ImageTransform
from mammodetr.explain.heatmap import cam_on_original


def _transform():
    # original 100 x 80 -> crop x 10..70, y 5..95 -> mirror -> 64 x 48 -> letterbox pad to 64 x 64
    return ImageTransform((100, 80)).crop(10, 5, 70, 95).hflip().resize((64, 48)).pad(8, 0, 8, 0)


def test_a_ramp_maps_exactly_and_what_was_cropped_is_zero():
    t = _transform()
    ramp = np.tile(np.arange(64, dtype=np.float32) + 0.5, (64, 1))  # value = input x of the pixel centre
    out = cam_on_original(ramp, t, (100, 80))
    xs = np.arange(80) + 0.5
    x_in = t.apply_boxes_xyxy(np.stack([xs, 0 * xs, xs, 0 * xs], 1))[:, 0]  # forward map, column by column
    inside = (xs > 10) & (xs < 70)
    rows = slice(6, 94)
    np.testing.assert_allclose(out[rows][:, inside], np.tile(np.clip(x_in[inside], 0.5, 63.5), (88, 1)), atol=1e-4)
    assert (out[:, ~((xs >= 10) & (xs <= 70))] == 0).all() and (out[:5] == 0).all() and (out[95:] == 0).all()


def test_a_hot_spot_lands_where_the_inverse_transform_puts_it():
    t = _transform()
    cam = np.zeros((64, 64), np.float32)
    cam[20:24, 40:44] = 1.0
    x1, y1, x2, y2 = t.invert_boxes_xyxy([[40, 20, 44, 24]])[0]
    out = cam_on_original(cam, t, (100, 80))
    r, c = np.unravel_index(out.argmax(), out.shape)
    assert x1 <= c + 0.5 <= x2 and y1 <= r + 0.5 <= y2
    small = cam_on_original(cam, t, (50, 40))  # a downscaled display grid covers the same image
    r2, c2 = np.unravel_index(small.argmax(), small.shape)
    assert x1 <= 2 * (c2 + 0.5) <= x2 + 1 and y1 <= 2 * (r2 + 0.5) <= y2 + 1
