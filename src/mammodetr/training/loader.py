"""DataLoaders for training and validation that survive a bad sample and reseed per epoch.

Augmentation randomness is a function of (seed, epoch, index) alone: the sampler hands each worker
``(epoch, index)`` pairs, so results do not depend on the number of workers, persistent workers, the
number of processes, or whether the run was resumed. The class-balanced sampler draws its order from
(seed, epoch) alone too, so a resumed or distributed run sees exactly the images a straight run would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
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

    def __init__(self, sampler: DistributedSampler | BalancedSampler) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        if not isinstance(self.sampler, BalancedSampler):
            return ((self.epoch, i) for n, i in enumerate(self.sampler) if n >= self.skip)
        return self._with_repeats()

    def _with_repeats(self):
        # A draw with replacement repeats images; the k-th repeat of an image in an epoch gets its own
        # augmentation (key (epoch, index, k)), counted over the whole epoch so that a resumed run agrees.
        seen: dict[int, int] = {}
        for n, i in enumerate(self.sampler):
            k = seen.get(i, 0)
            seen[i] = k + 1
            if n >= self.skip:
                yield (self.epoch, i, k)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class BalancedSampler(Sampler):
    """Class-balanced sampling with replacement, sharded over processes like ``DistributedSampler``.

    Each epoch draws ``len(labels)`` indices (rounded up to a multiple of the processes) with probability
    1 / (size of the index's class), so every class is drawn equally often in expectation; the draw depends on
    (seed, epoch) only. Process ``rank`` takes every ``num_replicas``-th index, starting at ``rank``.

    Args:
        labels: class of each dataset index (e.g. 1 = malignant, 0 = other).
        num_replicas, rank: the process group's size and this process's rank.
        seed: base seed.
    """

    def __init__(self, labels: Sequence[int], num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        if len(self.labels) == 0:
            raise ValueError("a balanced sampler needs at least one sample")
        self.num_replicas, self.rank, self.seed = int(num_replicas), int(rank), int(seed)
        self.num_samples = math.ceil(len(self.labels) / self.num_replicas)
        counts = torch.bincount(self.labels)
        self.weights = 1.0 / counts[self.labels].double()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self) -> list[int]:
        """The whole epoch's draw, for every process (this process takes its share of it)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.num_samples * self.num_replicas
        return torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()

    def __iter__(self):
        return iter(self.epoch_order()[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class SafeDataset(Dataset):
    """Turns an exception while loading one sample into a ``BadSample`` the collate function drops."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index, repeat = (tuple(key) + (0,))[:3] if isinstance(key, tuple) else (0, key, 0)
        if repeat:
            self.dataset.set_epoch(epoch, repeat)
        elif hasattr(self.dataset, "set_epoch"):
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
    plus ``file_name`` (B names) and ``orig_size_hw`` (B, 2) of each image for decoding predictions. Samples
    without boxes (unlabelled views) keep their list of dicts.
    """
    good = [b for b in batch if not isinstance(b, BadSample)]
    bad = [b for b in batch if isinstance(b, BadSample)]
    if not good:
        return None, None, bad
    images, items = collate(good)
    if "boxes_cxcywh" not in items[0]:  # unlabelled samples (``pretrain``): nothing to pad
        return images, items, bad
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
    balance: bool = False,
) -> tuple[DataLoader, EpochSampler]:
    """A loader that skips unloadable samples; ``balance`` draws classes equally often (``dataset.labels``)."""
    if balance:
        base = BalancedSampler(dataset.labels, num_replicas=world_size, rank=rank, seed=seed)
    else:
        base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                  drop_last=False)
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
