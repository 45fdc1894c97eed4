import itertools

import torch
from torchvision.ops import box_convert, generalized_box_iou

from mammodetr import HungarianMatcher


def _cost(outputs, boxes, i, wb=5.0, wg=2.0, wo=1.0):
    pred = outputs["pred_boxes"][i].double()
    prob = outputs["pred_obj_logits"][i].double().sigmoid()
    t = boxes.double()
    giou = generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(t, "cxcywh", "xyxy"))
    return wb * torch.cdist(pred, t, p=1) - wg * giou - wo * prob[:, None]


def _brute_force(cost):
    K, N = cost.shape
    best = float("inf")
    if N <= K:
        for perm in itertools.permutations(range(K), N):
            best = min(best, sum(cost[perm[j], j].item() for j in range(N)))
    else:
        for perm in itertools.permutations(range(N), K):
            best = min(best, sum(cost[k, perm[k]].item() for k in range(K)))
    return best


def _random_case(g, B, K, sizes):
    outputs = {
        "pred_boxes": torch.rand(B, K, 4, generator=g) * 0.5 + 0.1,
        "pred_obj_logits": torch.randn(B, K, generator=g),
    }
    targets = [{"boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.1} for n in sizes]
    return outputs, targets


def test_matches_brute_force_including_more_targets_than_queries():
    g = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher()
    for _trial in range(30):
        sizes = [int(torch.randint(0, 6, (1,), generator=g)) for _ in range(3)]
        outputs, targets = _random_case(g, 3, 4, sizes)
        indices = matcher(outputs, targets)
        for i, (src, tgt) in enumerate(indices):
            n = sizes[i]
            assert len(src) == len(tgt) == min(4, n)
            assert len(set(src.tolist())) == len(src) and len(set(tgt.tolist())) == len(tgt)
            if n == 0:
                continue
            cost = _cost(outputs, targets[i]["boxes"], i)
            got = cost[src, tgt].sum().item()
            assert abs(got - _brute_force(cost)) < 1e-5


def test_batched_equals_one_by_one():
    g = torch.Generator().manual_seed(1)
    matcher = HungarianMatcher(cost_bbox=3.0, cost_giou=1.0, cost_obj=2.0)
    outputs, targets = _random_case(g, 4, 3, [2, 0, 3, 1])
    batched = matcher(outputs, targets)
    for i in range(4):
        single = matcher({k: v[i:i + 1] for k, v in outputs.items()}, [targets[i]])[0]
        assert torch.equal(batched[i][0], single[0]) and torch.equal(batched[i][1], single[1])


def test_all_targets_empty():
    g = torch.Generator().manual_seed(2)
    outputs, targets = _random_case(g, 2, 3, [0, 0])
    for src, tgt in HungarianMatcher()(outputs, targets):
        assert src.numel() == 0 and tgt.numel() == 0 and src.dtype == torch.int64


def test_weights_change_the_assignment():
    # query 0 sits exactly on the target but has low objectness; query 1 is off but confident
    outputs = {
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]]]),
        "pred_obj_logits": torch.tensor([[-5.0, 5.0]]),
    }
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    assert HungarianMatcher()(outputs, targets)[0][0].item() == 0
    assert HungarianMatcher(cost_bbox=0.0, cost_giou=0.0, cost_obj=1.0)(outputs, targets)[0][0].item() == 1
