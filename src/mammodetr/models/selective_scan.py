"""The selective scan of Mamba (S6) with input-shared B and C, as MambaVision uses it.

Recurrence, per batch b, channel d and state n (state starts at zero)::

    dt    = softplus(delta + delta_bias)                     (if delta_softplus)
    h_t   = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
    y_t   = sum_n C_t[n] * h_t[n] + D[d] * u_t

Three implementations of the same function:

- ``selective_scan_loop``: one Python step per token; the reference, used only in tests.
- ``selective_scan_chunked``: the PyTorch path the model uses on every device. The sequence is cut into
  chunks of ``T ~ sqrt(L)`` tokens; all chunks run their ``T`` recurrence steps side by side (zero initial
  state), a short loop over chunks carries the state across chunk borders, and a second side-by-side pass
  over the chunks, now started from the carried state, produces ``y``. That is ``2T + L/T`` small batched
  steps instead of ``L``. Every factor it multiplies is a decay ``exp(x)`` with ``x <= 0`` (``A < 0``,
  ``dt > 0``), so nothing can overflow however long the window is; there is no ``exp(+cumsum)``.
- ``mamba_ssm``'s CUDA kernel, picked by ``selective_scan`` for CUDA tensors when the package is installed.

All paths compute in float32 (float64 when given float64) with autocast disabled.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Decay factors below exp(-60) (~1e-26) are set to exactly 0: their contribution is far below float32
# resolution, and letting exp() and the products after it produce subnormal floats slows x86 CPUs by
# 10-100x (measured: a 1024-token scan went from 14 ms to 2.6 s on random inputs).
_DECAY_CUTOFF = {torch.float32: -60.0, torch.float64: -600.0}
_SERIAL_GRAIN = 32768  # at::internal::GRAIN_SIZE: element-wise ops on fewer elements are not parallelised


def _prepare(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, delta_bias: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (batch, channels, length); got {tuple(u.shape)}, {tuple(delta.shape)}"
        )
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, d_state); got {tuple(A.shape)}")
    d_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (batch, d_state, length):
            raise ValueError(
                f"{name} must be (batch, d_state, length) = {(batch, d_state, length)}; got {tuple(t.shape)}"
            )
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20: identity above, as in mamba_ssm
    return (u.to(dtype), delta, A.to(dtype), B.to(dtype), C.to(dtype), None if D is None else D.to(dtype))


def _default_chunk_size(length: int, row_elements: int, on_cuda: bool) -> int:
    """Tokens per chunk: ``ceil(sqrt(L))`` minimises the sequential steps ``2T + L/T``.

    On CPU, the chunk is lengthened (up to 4x) when that keeps each step's tensor (chunks x batch x channels x
    state) under PyTorch's intra-op grain of 32768 elements: such small ops run on the calling thread, while
    a parallel op waits at a thread barrier, which on a loaded CPU costs a scheduler slice per step
    (measured on the shared, loaded 2-core development machine: a 1024-token scan 5x faster).
    """
    t_sqrt = max(1, math.ceil(math.sqrt(length)))
    max_chunks = (_SERIAL_GRAIN - 1) // row_elements
    if on_cuda or max_chunks < 1:
        return t_sqrt
    t_serial = math.ceil(length / max_chunks)
    return max(t_sqrt, t_serial) if t_serial <= 4 * t_sqrt else t_sqrt


def _decay(log_decay: Tensor) -> Tensor:
    """``exp(log_decay)`` for ``log_decay <= 0``, with negligible values flushed to exact zero."""
    return torch.exp(log_decay).masked_fill(log_decay < _DECAY_CUTOFF[log_decay.dtype], 0.0)


def selective_scan_loop(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Reference selective scan: a plain loop over tokens (slow; for tests).

    Args:
        u: (batch, channels, L) input.
        delta: (batch, channels, L) step sizes before bias/softplus.
        A: (channels, d_state), negative for a decaying state.
        B, C: (batch, d_state, L), shared by all channels.
        D: (channels,) skip weight, optional.
        delta_bias: (channels,) added to ``delta`` before the softplus, optional.
        delta_softplus: apply softplus to ``delta + delta_bias``.

    Returns:
        y: (batch, channels, L) in float32 (float64 for float64 input).
    """
    with torch.autocast(u.device.type, enabled=False):
        u, dt, A, B, C, D = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
        h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
        ys = []
        for t in range(u.shape[-1]):
            dt_t = dt[:, :, t, None]
            h = torch.exp(dt_t * A) * h + dt_t * B[:, None, :, t] * u[:, :, t, None]
            ys.append((h * C[:, None, :, t]).sum(-1))
        y = torch.stack(ys, dim=-1)
        return y if D is None else y + D[:, None] * u


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    """Selective scan in chunks; same arguments and result as ``selective_scan_loop``.

    Args:
        chunk_size: tokens per chunk; default ``ceil(sqrt(L))`` (which minimises the number of sequential
            steps ``2 * chunk_size + L / chunk_size``), lengthened on CPU to keep the steps single-threaded.

    Returns:
        y: (batch, channels, L) in float32 (float64 for float64 input).
    """
    with torch.autocast(u.device.type, enabled=False):
        u, dt, A, B, C, D = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
        batch, channels, length = u.shape
        d_state = A.shape[1]
        # Under torch.export the batch is symbolic: a chunk size derived from it would size the tensors per batch
        # while the loops below stay unrolled at the traced size, so an exported graph uses ceil(sqrt(L)).
        exporting = torch.compiler.is_exporting()
        T = int(chunk_size) if chunk_size else _default_chunk_size(length, batch * channels * d_state,
                                                                   u.is_cuda or exporting)
        T = max(1, min(T, length))
        n_chunks = -(-length // T)
        pad = n_chunks * T - length
        u_in = u
        if pad:
            # Padding sits after the last real token (dt = 0: decay 1, input 0), so it cannot change
            # any real output; the padded outputs are cropped.
            dt, u, B, C = (F.pad(t, (0, pad)) for t in (dt, u, B, C))

        # Step-major layout (T, chunks, batch, channels[, state]): step t of every chunk is one
        # contiguous slice, so each batched step is a single vector op.
        def steps(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], t.shape[1], n_chunks, T).permute(3, 2, 0, 1)

        dt_s = steps(dt)
        log_a = dt_s[..., None] * A  # (T, nc, b, d, n), all <= 0
        a = _decay(log_a)
        b_in = (dt_s * steps(u))[..., None] * steps(B)[:, :, :, None, :]
        C_s = steps(C)[:, :, :, None, :]

        # Pass 1: each chunk's final state from a zero start, all chunks at once.
        h = torch.zeros_like(b_in[0])
        for t in range(T):
            h = torch.addcmul(b_in[t], a[t], h)
        chunk_decay = _decay(log_a.sum(0))  # (nc, b, d, n): total decay across each chunk

        # Carry across chunks: state entering chunk c.
        starts = [torch.zeros_like(h[0])]
        for c in range(n_chunks - 1):
            starts.append(torch.addcmul(h[c], chunk_decay[c], starts[-1]))
        h = torch.stack(starts, dim=0)

        # Pass 2: rerun every chunk from its true start state; read y out in one batched product.
        states = []
        for t in range(T):
            h = torch.addcmul(b_in[t], a[t], h)
            states.append(h)
        y = (torch.stack(states, dim=0) * C_s).sum(-1)  # (T, nc, b, d)
        y = y.permute(2, 3, 1, 0).reshape(batch, channels, n_chunks * T)[..., :length]
        return y if D is None else y + D[:, None] * u_in


@functools.lru_cache(maxsize=1)
def _mamba_ssm_kernel() -> Callable | None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or installed without a working CUDA build
        return None
    return selective_scan_fn


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    use_kernel: bool = True,
) -> Tensor:
    """The selective scan the model calls: ``mamba_ssm``'s CUDA kernel when available, else chunked.

    Args: as ``selective_scan_loop``; ``use_kernel=False`` forces the PyTorch path.

    Returns:
        y: (batch, channels, L) float32.
    """
    if use_kernel and u.is_cuda:
        kernel = _mamba_ssm_kernel()
        if kernel is not None:
            with torch.autocast("cuda", enabled=False):
                return kernel(
                    u.float().contiguous(), delta.float().contiguous(), A.float().contiguous(),
                    B.float().contiguous(), C.float().contiguous(),
                    None if D is None else D.float(),
                    z=None,
                    delta_bias=None if delta_bias is None else delta_bias.float(),
                    delta_softplus=delta_softplus,
                )
    return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus)
