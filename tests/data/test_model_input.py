"""The one input transform: geometry by hand, exact inversion, and the same tensor on every path."""

import numpy as np
import pytest
import torch

from mammodetr.data.model_input import InputGeometry, input_transform, resize_to_input, to_model_input, to_tensor

S = 64


@pytest.mark.parametrize("letterbox", [False, True])
def test_input_transform_inverts_exactly(letterbox):
    hw = (300, 180)
    t = input_transform(hw, InputGeometry(S, letterbox))
    assert t.output_size_hw == (S, S)
    boxes_px = np.array([[10.0, 20.0, 100.0, 250.0], [0.0, 0.0, 180.0, 300.0]])
    np.testing.assert_allclose(t.invert_boxes_xyxy(t.apply_boxes_xyxy(boxes_px)), boxes_px, atol=1e-9)


def test_letterbox_geometry_by_hand():
    # 300 x 180 -> scale 64/300: 64 x 38 (38.4 rounded), padded 13 left and 13 right
    t = input_transform((300, 180), InputGeometry(S, letterbox=True))
    box = t.apply_boxes_xyxy([[0, 0, 180, 300]])[0]
    np.testing.assert_allclose(box, [13, 0, 13 + 38, 64])
    # a box covering the whole input maps back to the whole image, clipped out of the padding
    np.testing.assert_allclose(t.invert_boxes_xyxy([[0, 0, S, S]], clip=True), [[0, 0, 180, 300]], atol=1e-4)


def test_to_model_input_is_resize_then_scale():
    rng = np.random.default_rng(0)
    u16 = rng.integers(0, 65536, size=(90, 70), dtype=np.uint16)
    x, t = to_model_input(u16, InputGeometry(S, letterbox=True))
    resized, t2 = resize_to_input(u16, InputGeometry(S, letterbox=True))
    assert x.shape == (1, S, S) and x.dtype == torch.float32 and t == t2
    assert resized.dtype == np.uint16
    assert torch.equal(x, to_tensor(resized))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x[0, :, 0].max()) == 0.0  # letterbox padding is black
