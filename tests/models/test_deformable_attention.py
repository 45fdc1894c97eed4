import math

import torch

from mammodetr import multi_scale_deformable_attention
from mammodetr.models.deformable_attention import MultiScaleDeformableAttention


def _bilinear(img, x, y):
    """img (D, H, W); (x, y) in [0, 1] with align_corners=False; zeros outside. Naive float64 loop."""
    D, H, W = img.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(D, dtype=torch.float64)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= xx < W and 0 <= yy < H:
                out += wx * wy * img[:, yy, xx]
    return out


def _naive(value, shapes, loc, attn):
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = loc.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Q, M * D, dtype=torch.float64)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                acc = torch.zeros(D, dtype=torch.float64)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl]:starts[lvl + 1], m].T.reshape(D, h, w)
                    for p in range(P):
                        x, y = loc[b, q, m, lvl, p].tolist()
                        acc += attn[b, q, m, lvl, p] * _bilinear(img, x, y)
                out[b, q, m * D:(m + 1) * D] = acc
    return out


def test_matches_naive_bilinear_loop_float64():
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (3, 4), (2, 1)]
    B, M, D, Q, P = 2, 2, 3, 4, 3
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=torch.float64)
    # locations span [-0.3, 1.3]: some points fall outside the map and must read zeros
    loc = torch.rand(B, Q, M, len(shapes), P, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    attn = torch.rand(B, Q, M, len(shapes), P, generator=g, dtype=torch.float64)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    got = multi_scale_deformable_attention(value.float(), shapes, loc.float(), attn.float())
    assert got.shape == (B, Q, M * D) and got.dtype == torch.float32
    want = _naive(value, shapes, loc, attn)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    # float64 in, float64 computed: the reference agrees to rounding, not to float32's 1e-7
    got64 = multi_scale_deformable_attention(value, shapes, loc, attn)
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, want, atol=1e-12, rtol=1e-12)
    outside = ((loc < -0.2) | (loc > 1.2)).any()
    assert bool(outside), "the random case must include points well outside the map"


def test_point_fully_outside_reads_zero_and_pixel_centre_reads_pixel():
    value = torch.arange(12, dtype=torch.float32).view(1, 12, 1, 1)  # one level 3x4
    shapes = [(3, 4)]
    attn = torch.ones(1, 2, 1, 1, 1)
    # pixel (row 1, col 2) centre is at x = 2.5/4, y = 1.5/3; (-1, -1) is far outside
    loc = torch.tensor([[2.5 / 4, 1.5 / 3], [-1.0, -1.0]]).view(1, 2, 1, 1, 1, 2)
    out = multi_scale_deformable_attention(value, shapes, loc, attn)
    assert out[0, 0, 0].item() == 6.0
    assert out[0, 1, 0].item() == 0.0


def test_bf16_autocast_samples_in_float32_and_returns_value_dtype():
    g = torch.Generator().manual_seed(2)
    value = torch.randn(1, 20, 2, 4, generator=g)
    loc = torch.rand(1, 3, 2, 1, 2, 2, generator=g)
    attn = torch.rand(1, 3, 2, 1, 2, generator=g)
    ref = multi_scale_deformable_attention(value, [(4, 5)], loc, attn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = multi_scale_deformable_attention(
            value.bfloat16(), [(4, 5)], loc.bfloat16(), attn.bfloat16()
        )
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, atol=5e-2, rtol=5e-2)


def test_module_shapes_for_point_and_box_references():
    attn = MultiScaleDeformableAttention(d_model=32, n_levels=2, n_heads=4, n_points=2)
    shapes = [(4, 4), (2, 2)]
    memory = torch.randn(2, 20, 32)
    query = torch.randn(2, 3, 32)
    for ref in (torch.rand(2, 3, 2, 2), torch.rand(2, 3, 2, 4)):
        assert attn(query, ref, memory, shapes).shape == (2, 3, 32)
