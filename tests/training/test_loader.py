import torch

from mammodetr.models.targets import unpack_targets
from mammodetr.training.loader import BadSample, collate_skipping


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
