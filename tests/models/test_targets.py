import torch

from mammodetr.models.targets import keep_slots, limit_targets, pack_targets, pad_targets, unpack_targets
from tests.models.reference_criterion import limit_targets as reference_limit


def _random_images(g, n_images=200, max_boxes=6):
    boxes, malignant = [], []
    for _ in range(n_images):
        n = int(torch.randint(0, max_boxes + 1, (1,), generator=g))
        b = torch.rand(n, 4, generator=g)
        if n > 1 and torch.rand(1, generator=g) < 0.3:
            b[1] = b[0]  # equal areas: the earlier box wins
        boxes.append(b)
        malignant.append(torch.randint(-1, 2, (n,), generator=g))
    return boxes, malignant


def test_padding_keeps_the_same_boxes_as_the_per_image_rule():
    g = torch.Generator().manual_seed(0)
    boxes, malignant = _random_images(g)
    for max_targets in (1, 2, 3, None):
        padded = pad_targets(boxes, torch.zeros(len(boxes)), malignant, max_targets)
        T = padded["boxes"].shape[1]
        assert T == (max_targets if max_targets is not None else max(len(b) for b in boxes))
        for i, (b, m) in enumerate(zip(boxes, malignant)):
            keep = reference_limit(b, m, max_targets)
            n = len(keep)
            assert padded["mask"][i].tolist() == [True] * n + [False] * (T - n)
            assert torch.equal(padded["boxes"][i, :n], b[keep]) and padded["boxes"][i, n:].eq(0).all()
            assert torch.equal(limit_targets(b, m, max_targets), keep)


def test_keep_slots_prefers_malignant_then_larger_boxes_and_keeps_order():
    boxes = torch.tensor([[[0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.05, 0.05]]])
    mask = torch.tensor([[True, True, True, True]])
    assert keep_slots(boxes, mask, torch.tensor([[0, 0, 0, 1]]), 3).tolist() == [[1, 2, 3]]
    assert keep_slots(boxes, mask, None, 2).tolist() == [[1, 2]]
    mask[0, 1] = False  # padding is never kept before a real box
    assert keep_slots(boxes, mask, None, 2).tolist() == [[0, 2]]


def test_pack_round_trip_and_empty_batches():
    g = torch.Generator().manual_seed(1)
    boxes, malignant = _random_images(g, 8)
    labels = torch.randint(0, 2, (8,), generator=g)
    padded = pad_targets(boxes, labels, malignant, 3)
    packed = pack_targets(padded)
    assert packed.shape == (8, 1 + 5 * 3) and packed.dtype == torch.float32
    back = unpack_targets(packed)
    for k in ("boxes", "mask", "labels"):
        assert torch.equal(back[k], padded[k]), k
    empty = pad_targets([torch.zeros(0, 4)] * 2, torch.tensor([0, 1]))
    assert empty["boxes"].shape == (2, 0, 4)
    assert unpack_targets(pack_targets(empty))["boxes"].shape == (2, 0, 4)
