import torch
from torchvision.ops import box_iou as tv_box_iou
from torchvision.ops import generalized_box_iou as tv_giou

from mammodetr.models.box_ops import box_iou, elementwise_generalized_box_iou, generalized_box_iou


def _random_xyxy(n, generator):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.5 + 1e-3
    return torch.cat([xy, xy + wh], -1)


def test_iou_and_giou_match_torchvision():
    g = torch.Generator().manual_seed(1)
    a, b = _random_xyxy(20, g), _random_xyxy(30, g)
    torch.testing.assert_close(box_iou(a, b)[0], tv_box_iou(a, b))
    torch.testing.assert_close(generalized_box_iou(a, b), tv_giou(a, b))
    torch.testing.assert_close(elementwise_generalized_box_iou(a, b[:20]), torch.diag(tv_giou(a, b[:20])))


def test_giou_of_identical_and_distant_boxes():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert generalized_box_iou(a, a).item() == 1.0
    far = torch.tensor([[2.0, 2.0, 3.0, 3.0]])
    # hull 9, union 2 -> giou = 0 - 7/9
    assert abs(generalized_box_iou(a, far).item() + 7 / 9) < 1e-7
