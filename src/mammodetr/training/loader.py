"""DataLoaders for training and validation that survive a bad sample and reseed per epoch.

Augmentation randomness is a function of (seed, epoch, index) alone: the sampler hands each worker
``(epoch, index)`` pairs, so results do not depend on the number of workers, persistent workers, the
number of processes, or whether the run was resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mammodetr.data.dataset import collate
from mammodetr.models.targets import pack_targets, pad_targets

log = logging.getLogger(__name__)


@dataclass
class BadSample:
    index: int
    file_name: str
    error: str


class EpochSampler(Sampler):
    """Wraps a (distributed) sampler: yields ``(epoch, index)`` and reshuffles by ``set_epoch``.

    ``skip`` drops the first samples of the epoch's order: a run resumed in the middle of an epoch
    continues with exactly the samples it had not seen yet.
    """

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for n, i in enumerate(self.sampler) if n >= self.skip)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class SafeDataset(Dataset):
    """Turns an exception while loading one sample into a ``BadSample`` the collate function drops."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        try:
            return self.dataset[index]
        except Exception as exc:  # one unreadable image must not end a long run
            name = getattr(self.dataset, "images", [{}] * (index + 1))[index].get("file_name", f"#{index}")
            return BadSample(index, str(name), f"{type(exc).__name__}: {exc}")


def collate_skipping(batch, max_targets: int | None = None):
    """-> (images (B, 1, S, S) or None, targets or None, bad_samples).

    ``targets``: ``packed`` (B, 1 + 5 T) float32, the padded targets (:mod:`mammodetr.models.targets`) with at
    most ``max_targets`` boxes per image, in one tensor so the loader pins it and the step moves it in one copy;
    plus ``file_name`` (B names) and ``orig_size_hw`` (B, 2) of each image for decoding predictions.
    """
    good = [b for b in batch if not isinstance(b, BadSample)]
    bad = [b for b in batch if isinstance(b, BadSample)]
    if not good:
        return None, None, bad
    images, items = collate(good)
    padded = pad_targets([t["boxes_cxcywh"] for t in items], torch.stack([t["label"] for t in items]),
                         [t["box_malignant"] for t in items], max_targets)
    targets = {"packed": pack_targets(padded), "file_name": [t["file_name"] for t in items],
               "orig_size_hw": torch.stack([t["orig_size_hw"] for t in items])}
    return images, targets, bad


def build_loader(
    dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int,
    rank: int,
    world_size: int,
    pin_memory: bool,
    drop_last: bool,
    max_targets: int | None = None,
) -> tuple[DataLoader, EpochSampler]:
    base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    sampler = EpochSampler(base)
    loader = DataLoader(
        SafeDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=partial(collate_skipping, max_targets=max_targets),
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        drop_last=drop_last,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler
