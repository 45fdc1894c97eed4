"""Selective scan: chunked implementation vs. the token loop vs. the closed form (float64)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammodetr.models.selective_scan import selective_scan, selective_scan_chunked, selective_scan_loop

REFERENCE = Path(
    os.environ.get("MAMMODETR_MAMBAVISION_REFERENCE")
    or Path(__file__).resolve().parents[3] / "shared" / "reference" / "mambavision"
) / "reference_small.pt"


def random_inputs(batch: int, channels: int, length: int, d_state: int, seed: int, dtype=torch.float64,
                  delta_shift: float = 0.0, a_scale: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return dict(
        u=randn(batch, channels, length),
        delta=randn(batch, channels, length) + delta_shift,
        A=-torch.exp(randn(channels, d_state)) * a_scale,
        B=randn(batch, d_state, length),
        C=randn(batch, d_state, length),
        D=randn(channels),
        delta_bias=randn(channels),
        delta_softplus=True,
    )


def closed_form(u, delta, A, B, C, D, delta_bias, delta_softplus) -> torch.Tensor:
    """y_t = sum_{s<=t} sum_n C_t[n] exp(A[d,n] * sum_{r=s+1..t} dt_r) dt_s B_s[n] u_s + D u_t, in float64."""
    u, delta, A, B, C, D, delta_bias = (t.double() for t in (u, delta, A, B, C, D, delta_bias))
    dt = delta + delta_bias[:, None]
    dt = F.softplus(dt) if delta_softplus else dt
    cum = dt.cumsum(-1)  # (b, d, L)
    length = u.shape[-1]
    span = cum[..., :, None] - cum[..., None, :]  # (b, d, t, s) = sum_{r=s+1..t} dt_r for s <= t
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    decay = torch.exp(A[None, :, None, None, :] * span[..., None])  # (b, d, t, s, n)
    decay = decay * causal[None, None, :, :, None]
    x = (dt * u)[:, :, None, :, None] * B.transpose(1, 2)[:, None, None, :, :]  # (b, 1.., s, n)
    y = (decay * x * C.transpose(1, 2)[:, None, :, None, :]).sum(dim=(-1, -2))
    return y + D[:, None] * u


@pytest.mark.parametrize("length", [1, 2, 7, 16, 37])
@pytest.mark.parametrize("chunk_size", [None, 4, 5])
def test_chunked_equals_loop_and_closed_form_float64(length: int, chunk_size: int | None) -> None:
    inputs = random_inputs(2, 3, length, 4, seed=length)
    expected = closed_form(**inputs)
    loop = selective_scan_loop(**inputs)
    chunked = selective_scan_chunked(**inputs, chunk_size=chunk_size)
    assert chunked.dtype == torch.float64
    torch.testing.assert_close(loop, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunked, expected, rtol=1e-10, atol=1e-10)


def test_without_optional_terms_matches_closed_form() -> None:
    inputs = random_inputs(1, 2, 9, 3, seed=3)
    inputs.update(D=torch.zeros(2, dtype=torch.float64), delta_bias=torch.zeros(2, dtype=torch.float64),
                  delta_softplus=False)
    inputs["delta"] = inputs["delta"].abs()  # without softplus the step must still be positive
    expected = closed_form(**inputs)
    got = selective_scan_chunked(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("regime", ["strong decay", "long memory"])
def test_float32_stable_for_long_windows(regime: str) -> None:
    """1536 tokens in float32, with strong decays (cumulative exponent in the thousands) or weak ones."""
    length = 1536
    shift, scale = (3.0, 8.0) if regime == "strong decay" else (-6.0, 0.05)
    inputs64 = random_inputs(1, 4, length, 8, seed=7, delta_shift=shift, a_scale=scale)
    dt = F.softplus(inputs64["delta"] + inputs64["delta_bias"][:, None])
    total_log_decay = (dt.sum(-1)[..., None] * inputs64["A"]).abs()
    if regime == "strong decay":
        # exp(+cumulative exponent), the naive cumulative-sum formulation, would overflow float32 here.
        assert total_log_decay.max() > 88.0
    else:
        # some states keep most of their memory over the whole window: errors could accumulate.
        assert total_log_decay.min() < 1.0
    inputs32 = {k: v.float() if torch.is_tensor(v) else v for k, v in inputs64.items()}
    expected = selective_scan_loop(**inputs64)
    got = selective_scan_chunked(**inputs32)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    rel = (got.double() - expected).abs().max() / expected.abs().max()
    assert rel < 1e-4


def test_gradients_match_loop() -> None:
    inputs = random_inputs(2, 3, 11, 4, seed=11)
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    weights = torch.randn(2, 3, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for fn in (selective_scan_loop, selective_scan_chunked):
        leaves = {k: inputs[k].clone().requires_grad_(True) for k in names}
        (fn(**leaves, delta_softplus=True) * weights).sum().backward()
        grads.append([leaves[k].grad for k in names])
    for name, g_loop, g_chunk in zip(names, *grads):
        torch.testing.assert_close(g_chunk, g_loop, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")


def test_autocast_bf16_runs_in_float32() -> None:
    inputs = {k: v.float() if torch.is_tensor(v) else v for k, v in random_inputs(1, 4, 20, 8, seed=5).items()}
    expected = selective_scan_chunked(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan(**inputs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_bad_shapes_are_named() -> None:
    inputs = random_inputs(1, 4, 6, 8, seed=1)
    inputs["B"] = inputs["B"][:, :, :5]
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_chunked(**inputs)


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"reference outputs not found at {REFERENCE}")
def test_matches_official_scan_case() -> None:
    case = torch.load(REFERENCE, weights_only=True)["scan_case"]
    args = {k: case[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias", "delta_softplus")}
    for fn in (selective_scan_loop, selective_scan_chunked, selective_scan):
        out = fn(**args)
        rel = (out - case["out"]).abs().max() / case["out"].abs().max()
        assert rel <= 1e-4, fn.__name__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_paths_match_loop() -> None:
    inputs = {k: v.float() if torch.is_tensor(v) else v for k, v in random_inputs(2, 16, 300, 8, seed=2).items()}
    expected = selective_scan_loop(**{k: v.double() if torch.is_tensor(v) else v for k, v in inputs.items()})
    cuda = {k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}
    # The PyTorch path always; mamba_ssm's kernel too when it is installed (selective_scan picks it).
    for fn in (selective_scan_chunked, selective_scan):
        got = fn(**cuda).cpu().double()
        assert ((got - expected).abs().max() / expected.abs().max()) < 1e-4, fn.__name__


def test_an_exported_scan_runs_at_every_batch_size(tmp_path):
    """A chunk size taken from the symbolic batch sized the tensors per batch while the loops stayed unrolled at
    the traced size: onnxruntime failed at every batch but the traced one (MambaVision-T at 512 px)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from torch import nn

    channels, d_state, length = 160, 8, 1024  # on CPU the eager chunk size is 41 at batch 1, 86 at batch 2

    class Scan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.A = nn.Parameter(-torch.rand(channels, d_state))

        def forward(self, u, B):
            return selective_scan_chunked(u, u * 0.5, self.A, B, B * 0.3, None, None, True)

    scan = Scan().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(scan, (torch.rand(2, channels, length), torch.rand(2, d_state, length)), dynamo=True,
                                dynamic_shapes=({0: batch}, {0: batch}), input_names=["u", "B"], verbose=False)
    program.save(tmp_path / "scan.onnx")
    session = ort.InferenceSession(str(tmp_path / "scan.onnx"), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        u, B = torch.rand(b, channels, length), torch.rand(b, d_state, length)
        with torch.no_grad():
            expected = scan(u, B).numpy()
        got = session.run(None, {"u": u.numpy(), "B": B.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
