"""Where, in which precision and in which mode a model runs: the one ``"auto"`` rule, the one autocast rule, and
eval mode that gives every module its own mode back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

__all__ = ["PRECISIONS", "resolve_device", "autocast", "eval_mode"]

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: CUDA (device ``local_rank``) when available, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``.

    Raises:
        ValueError: CUDA was asked for and there is none, or the name is not a device.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available (use --device cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return device


def autocast(device: torch.device, precision: str):
    """The autocast context of a precision: fp32 runs as is; bf16 on CPU or CUDA; fp16 on CUDA only."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype is torch.float16:
        raise ValueError("fp16 autocast is for CUDA; use bf16 on CPU")
    return torch.autocast(device.type, dtype=dtype)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; afterwards every module has its own mode again (a model in training with a
    frozen, eval-mode backbone stays exactly so)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, was in modes.items():
            m.train(was)
