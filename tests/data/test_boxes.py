import torch
from torchvision.ops import box_convert

from mammodetr.data.boxes import box_cxcywh_to_xyxy, box_xywh_to_xyxy, box_xyxy_to_cxcywh


def _random_xyxy(n, generator):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.5 + 1e-3
    return torch.cat([xy, xy + wh], -1)


def test_conversions_match_torchvision():
    g = torch.Generator().manual_seed(0)
    b = _random_xyxy(50, g)
    cxcywh = box_xyxy_to_cxcywh(b)
    torch.testing.assert_close(cxcywh, box_convert(b, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), b)
    xywh = box_convert(b, "xyxy", "xywh")
    torch.testing.assert_close(box_xywh_to_xyxy(xywh), b)


def test_conversions_keep_leading_dimensions():
    b = _random_xyxy(24, torch.Generator().manual_seed(2)).reshape(2, 3, 4, 4)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(b)), b)
