"""The loader: targets padded once in the collate, bad samples dropped; the class-balanced sampler (balanced,
deterministic per epoch, sharded like DistributedSampler, resumable)."""

from collections import Counter

import torch

from mammodetr.data.dataset import MammoDataset
from mammodetr.models.targets import unpack_targets
from mammodetr.training.loader import BadSample, BalancedSampler, EpochSampler, SafeDataset, collate_skipping

LABELS = [1] * 10 + [0] * 90


def test_draw_depends_on_seed_and_epoch_only():
    a, b = BalancedSampler(LABELS, seed=3), BalancedSampler(LABELS, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and len(list(a)) == len(LABELS) == len(a)
    b.set_epoch(3)
    assert list(a) != list(b)
    c = BalancedSampler(LABELS, seed=4)
    c.set_epoch(2)
    assert list(c) != list(a)


def test_classes_are_drawn_equally_often():
    s = BalancedSampler(LABELS, seed=0)
    drawn = []
    for epoch in range(60):
        s.set_epoch(epoch)
        drawn += list(s)
    share = sum(LABELS[i] for i in drawn) / len(drawn)
    assert abs(share - 0.5) < 0.02, share  # 6000 draws: 3 standard errors is about 0.02
    assert set(drawn) == set(range(len(LABELS)))  # every image still comes


def test_processes_share_one_draw_without_overlap_or_loss():
    world = 3
    shards = [BalancedSampler(LABELS, num_replicas=world, rank=r, seed=1) for r in range(world)]
    for s in shards:
        s.set_epoch(5)
    order = shards[0].epoch_order()
    assert len(order) == 102 and all(len(s) == 34 for s in shards)  # 100 rounded up to a multiple of 3
    merged = [None] * len(order)
    for r, s in enumerate(shards):
        merged[r::world] = list(s)
    assert merged == order


def test_epoch_sampler_numbers_repeats_and_resumes_mid_epoch():
    sampler = EpochSampler(BalancedSampler(LABELS, seed=2))
    sampler.set_epoch(4)
    full = list(sampler)
    seen = Counter()
    for epoch, index, k in full:
        assert epoch == 4 and k == seen[index]
        seen[index] += 1
    assert max(seen.values()) > 1  # with replacement, some images come more than once
    sampler.set_epoch(4, skip=37)
    assert list(sampler) == full[37:] and len(sampler) == len(full) - 37


def test_a_repeat_gets_its_own_augmentation(tiny_dataset):
    ds = MammoDataset(tiny_dataset, "train", image_size=64, augment="strong", seed=0)
    safe = SafeDataset(ds)
    first, again, repeat = safe[(1, 0, 0)][0], safe[(1, 0, 0)][0], safe[(1, 0, 1)][0]
    assert torch.equal(first, again) and not torch.equal(first, repeat)
    ds.set_epoch(1)
    assert torch.equal(first, ds[0][0])  # the first draw is the dataset's ordinary epoch-1 item


def _item(n, label, name):
    boxes = torch.tensor([[0.5, 0.5, 0.1 * (k + 1), 0.1] for k in range(n)])
    malignant = torch.tensor([1] + [0] * (n - 1))[:n]
    target = {"boxes_cxcywh": boxes, "box_malignant": malignant, "label": torch.tensor(label), "file_name": name,
              "orig_size_hw": torch.tensor([100, 80])}
    return torch.rand(1, 32, 32), target


def test_collate_pads_and_packs_targets_once_and_drops_bad_samples():
    bad = BadSample(1, "broken.png", "OSError: truncated")
    images, targets, skipped = collate_skipping([_item(0, 0, "a.png"), bad, _item(5, 1, "b.png")], max_targets=3)
    assert images.shape == (2, 1, 32, 32) and skipped == [bad]
    assert targets["file_name"] == ["a.png", "b.png"] and targets["orig_size_hw"].tolist() == [[100, 80]] * 2
    padded = unpack_targets(targets["packed"])
    assert padded["labels"].tolist() == [0, 1]
    assert padded["mask"].tolist() == [[False] * 3, [True] * 3]
    # kept: the malignant box (the smallest, first), then the two largest, in their original order
    torch.testing.assert_close(padded["boxes"][1, :, 2], torch.tensor([0.1, 0.4, 0.5]))


def test_collate_of_only_bad_samples_and_without_a_limit():
    bad = BadSample(0, "x.png", "ValueError: no pixels")
    assert collate_skipping([bad]) == (None, None, [bad])
    _, targets, _ = collate_skipping([_item(5, 1, "b.png"), _item(1, 0, "c.png")])
    assert unpack_targets(targets["packed"])["mask"].sum(1).tolist() == [5, 1]
