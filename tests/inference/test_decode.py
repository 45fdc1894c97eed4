import numpy as np
import pytest
import torch

from mammodetr.data.geometry import ImageTransform
from mammodetr.data.model_input import InputGeometry, input_transform
from mammodetr.inference.decode import decode, malignancy_probability

OUTPUTS = {
    "image_logits": torch.tensor([[0.0, 1.0]]),
    "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]]),
    "pred_obj_logits": torch.tensor([[-1.0, 2.0]]),
}


def test_pixel_boxes_sorted_by_score_and_probability():
    t = input_transform((100, 200), InputGeometry(64, letterbox=False))  # H=100, W=200
    (res,) = decode(OUTPUTS, [t], ["a.png"])
    assert res.file_name == "a.png"
    assert abs(res.p_malignant - torch.tensor([0.0, 1.0]).softmax(0)[1].item()) < 1e-7
    np.testing.assert_allclose(res.scores, torch.tensor([2.0, -1.0]).sigmoid().numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.boxes_xyxy_px, [[0.0, 0.0, 100.0, 50.0], [80.0, 30.0, 120.0, 70.0]], atol=1e-9)


def test_single_logit_is_a_sigmoid():
    p = malignancy_probability(torch.tensor([[0.3], [-2.0]]))
    torch.testing.assert_close(p, torch.tensor([0.3, -2.0]).sigmoid())


@pytest.mark.parametrize("letterbox", [False, True])
def test_boxes_return_through_crop_flip_and_letterbox(letterbox):
    # original 300 x 240 -> crop -> flip -> downscale -> model input 64 x 64
    prep = ImageTransform((300, 240)).crop(40, 20, 200, 280).hflip().resize((130, 80))
    t = prep.compose(input_transform(prep.output_size_hw, InputGeometry(64, letterbox)))
    box_orig = np.array([[60.0, 50.0, 110.0, 120.0]])
    in_px = t.apply_boxes_xyxy(box_orig)[0] / 64.0
    cxcywh = [(in_px[0] + in_px[2]) / 2, (in_px[1] + in_px[3]) / 2, in_px[2] - in_px[0], in_px[3] - in_px[1]]
    out = {"image_logits": torch.zeros(1, 2), "pred_boxes": torch.tensor([[cxcywh]], dtype=torch.float64),
           "pred_obj_logits": torch.zeros(1, 1)}
    (res,) = decode(out, [t], ["x"])
    np.testing.assert_allclose(res.boxes_xyxy_px, box_orig, atol=1e-6)


def test_boxes_are_clipped_to_what_the_model_saw():
    # A box covering the whole letterboxed input ends at the image content and inside the breast crop.
    prep = ImageTransform((300, 240)).crop(40, 20, 200, 280)
    t = prep.compose(input_transform(prep.output_size_hw, InputGeometry(64, letterbox=True)))
    out = {"image_logits": torch.zeros(1, 2), "pred_boxes": torch.tensor([[[0.5, 0.5, 1.2, 1.2]]]),
           "pred_obj_logits": torch.zeros(1, 1)}
    (res,) = decode(out, [t], ["x"])
    np.testing.assert_allclose(res.boxes_xyxy_px, [[40.0, 20.0, 200.0, 280.0]], atol=1e-4)
