"""Counting the points where training code waits for the device: the measure behind "no syncs in a step".

On a GPU, reading a value back (``.item()``, ``if tensor:``, ``.tolist()``, ``.cpu()``) or an op whose output
shape depends on the data (``nonzero``, boolean-mask indexing) blocks the host until the GPU's queue drains.
Those calls leave the same trace on the CPU, so a CPU profile of a step counts the syncs it would make on a
GPU, without a GPU:

- every scalar read ends in ``aten::_local_scalar_dense`` (``aten::item``, ``bool()``, ``float()`` call it);
- data-dependent shapes show up as ``aten::nonzero`` / ``aten::masked_select`` / ``aten::_unique2`` ...;
- ``.tolist()``, ``.numpy()`` and ``.cpu()`` are no ops on a CPU tensor and leave no profiler trace, so a
  ``TorchFunctionMode`` counts those calls. (``.to(device)`` is not counted: on a CPU run it cannot be told
  from the moves to the model's device that a GPU run makes without waiting.)

Excluded: reads of the optimizer's ``step`` counters inside ``optimizer.step`` (AdamW reads one per parameter
tensor). Those counters live on the host (the for-loop AdamW; the fused kernel on a CPU reads its CPU-tensor
counters), so they never wait on a device; on CUDA the fused AdamW keeps them on the GPU and reads nothing. They
are reported separately.

On CUDA, :func:`count_cuda_syncs` counts the synchronisations the CUDA runtime itself reports
(``torch.cuda.set_sync_debug_mode("warn")``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

__all__ = ["HostSyncs", "count_host_syncs", "count_cuda_syncs"]

SCALAR_READ = "aten::_local_scalar_dense"
DATA_DEPENDENT_SHAPE = ("aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim",
                        "aten::unique_consecutive", "aten::equal")
OPTIMIZER_STEP = "Optimizer.step#"
_TRANSFERS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}


@dataclass
class HostSyncs:
    """Counts of one profiled call. ``total`` is what a GPU would wait for."""

    scalar_reads: int = 0
    data_dependent_shapes: int = 0
    transfers: int = 0
    optimizer_counter_reads: int = 0

    @property
    def total(self) -> int:
        return self.scalar_reads + self.data_dependent_shapes + self.transfers

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "scalar_reads": self.scalar_reads,
                "data_dependent_shapes": self.data_dependent_shapes, "transfers": self.transfers,
                "optimizer_counter_reads": self.optimizer_counter_reads}


class _TransferCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _TRANSFERS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _inside_optimizer_step(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(OPTIMIZER_STEP):
            return True
        parent = parent.cpu_parent
    return False


def count_host_syncs(fn: Callable[[], Any]) -> tuple[Any, HostSyncs]:
    """Run ``fn()`` under the CPU profiler; its result and the host syncs it made (see the module docstring)."""
    transfers = _TransferCounter()
    with profile(activities=[ProfilerActivity.CPU]) as prof, transfers:
        result = fn()
    counts = HostSyncs(transfers=transfers.count)
    for event in prof.events():
        if event.name == SCALAR_READ:
            if _inside_optimizer_step(event):
                counts.optimizer_counter_reads += 1
            else:
                counts.scalar_reads += 1
        elif event.name in DATA_DEPENDENT_SHAPE:
            counts.data_dependent_shapes += 1
    return result, counts


def count_cuda_syncs(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` with CUDA's sync debug mode on; its result and the synchronisations CUDA reported."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return result, sum("synchroniz" in str(w.message) for w in caught)
