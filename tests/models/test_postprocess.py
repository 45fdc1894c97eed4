import torch

from mammodetr import postprocess


def test_pixel_boxes_sorted_by_score_and_probability():
    outputs = {
        "image_logits": torch.tensor([[0.0, 1.0]]),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]]),
        "pred_obj_logits": torch.tensor([[-1.0, 2.0]]),
    }
    (res,) = postprocess(outputs, torch.tensor([[100, 200]]))  # H=100, W=200
    assert abs(res["p_malignant"].item() - torch.tensor([0.0, 1.0]).softmax(0)[1].item()) < 1e-7
    torch.testing.assert_close(res["scores"], torch.tensor([2.0, -1.0]).sigmoid())
    torch.testing.assert_close(res["boxes_xyxy_px"], torch.tensor([[0.0, 0.0, 100.0, 50.0], [80.0, 30.0, 120.0, 70.0]]))
