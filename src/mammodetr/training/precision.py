"""Float32 math on CUDA while training: TF32 tensor cores for matrix products, restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["fp32_math"]


@contextmanager
def fp32_math(device: torch.device, tf32: bool) -> Iterator[None]:
    """TF32 tensor cores for float32 matrix products on CUDA while training (restored afterwards).

    cuDNN convolutions use TF32 by default already; matrix products (linear layers, attention) do not. Under
    bf16/fp16 autocast it still matters: the decoder and the losses run in float32.
    """
    if device.type != "cuda" or not tf32:
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; the older allow_tf32 flags are deprecated
        before = matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
        matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = "tf32", "tf32"
    else:
        before = matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    try:
        yield
    finally:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
        else:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
