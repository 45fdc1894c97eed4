import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
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


def _hard_cases(g, n_images, K, L=2):
    """Predictions of L layers and padded targets (0..K per image) with ties and degenerate boxes mixed in."""
    boxes = torch.rand(L, n_images, K, 4, generator=g) * 0.6 + 0.05
    logits = torch.randn(L, n_images, K, generator=g)
    kind = torch.randint(0, 5, (n_images,), generator=g)
    boxes[:, kind == 1] = boxes[:, kind == 1][:, :, :1]  # every query predicts the same box: all tied
    logits[:, kind == 1] = 0.0
    boxes[:, kind == 2, :, 2] = 0.0  # zero-width predictions
    tgt = torch.rand(n_images, K, 4, generator=g) * 0.6 + 0.05
    tgt[kind == 3] = tgt[kind == 3][:, :1]  # duplicate targets
    tgt[kind == 4, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # a point target
    n = torch.randint(0, K + 1, (n_images,), generator=g)
    mask = torch.arange(K)[None] < n[:, None]
    return boxes, logits, tgt * mask[..., None], mask


@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_exact_matcher_reaches_scipys_minimum_on_thousands_of_cases(K):
    g = torch.Generator().manual_seed(K)
    boxes, logits, tgt, mask = _hard_cases(g, 1500, K)
    matcher = HungarianMatcher()
    query = matcher.match(boxes, logits, tgt, mask)
    assert query.shape == (2, 1500, K) and query.dtype == torch.int64
    for layer in range(2):
        outputs = {"pred_boxes": boxes[layer], "pred_obj_logits": logits[layer]}
        for i in range(1500):
            n = int(mask[i].sum())
            q = query[layer, i]
            assert (q[n:] == -1).all() and len(set(q[:n].tolist())) == n and (q[:n] >= 0).all()
            if n == 0:
                continue
            cost = _cost(outputs, tgt[i, :n], i).numpy()
            rows, cols = linear_sum_assignment(cost)
            got = cost[q[:n].numpy(), np.arange(n)].sum()
            assert abs(got - cost[rows, cols].sum()) < 1e-4, (layer, i)


def test_batched_equals_per_image_and_all_layers_equal_layer_by_layer():
    g = torch.Generator().manual_seed(5)
    boxes, logits, tgt, mask = _hard_cases(g, 64, 3, L=6)
    matcher = HungarianMatcher()
    everything = matcher.match(boxes, logits, tgt, mask)
    for layer in range(6):
        one_layer = matcher.match(boxes[layer], logits[layer], tgt, mask)
        assert torch.equal(one_layer, everything[layer])
    for i in range(64):
        single = matcher.match(boxes[:, i:i + 1], logits[:, i:i + 1], tgt[i:i + 1], mask[i:i + 1])
        assert torch.equal(single[:, 0], everything[:, i]), i


def test_exact_path_never_calls_scipy_and_the_fallback_agrees(monkeypatch):
    from mammodetr.models import matcher as matcher_module

    g = torch.Generator().manual_seed(9)
    boxes, logits, tgt, mask = _hard_cases(g, 200, 4, L=3)
    exact = HungarianMatcher().match(boxes, logits, tgt, mask)
    fallback = HungarianMatcher(exact_max_queries=0).match(boxes, logits, tgt, mask)
    costs = HungarianMatcher().cost(boxes, logits, tgt).double()

    def total(q):
        picked = costs.gather(-2, q.clamp(min=0)[..., None, :]).squeeze(-2)
        return (picked * mask).sum(-1)

    torch.testing.assert_close(total(exact), total(fallback), atol=1e-5, rtol=0)
    assert torch.equal(exact < 0, fallback < 0)

    def refuse(*_args, **_kwargs):
        raise AssertionError("scipy must not run for K <= exact_max_queries")

    monkeypatch.setattr(matcher_module, "linear_sum_assignment", refuse)
    assert torch.equal(HungarianMatcher().match(boxes, logits, tgt, mask), exact)


def test_empty_batch_of_targets_and_more_queries_than_the_bound():
    matcher = HungarianMatcher()
    boxes, logits = torch.rand(2, 3, 6, 4) * 0.5 + 0.2, torch.randn(2, 3, 6)
    assert matcher.match(boxes, logits, torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool)).shape == (2, 3, 0)
    tgt, mask = torch.rand(3, 2, 4) * 0.5 + 0.2, torch.tensor([[True, True], [True, False], [False, False]])
    query = matcher.match(boxes, logits, tgt, mask)  # K = 6 > 4: scipy
    assert query[:, 2].eq(-1).all() and query[:, 1, 1].eq(-1).all() and query[:, 0].ge(0).all()
