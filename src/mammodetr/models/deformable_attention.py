"""Multi-scale deformable attention (Zhu et al. 2020) in pure PyTorch: no compiled op to build.

The core function keeps the reference implementation's tensor contract, so it can be checked against
Deformable DETR's CUDA kernel or any other port. Sampling runs in float32 even under autocast: bilinear
weights and the weighted sum lose too much in fp16/bf16 at 512x512 inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Sample ``value`` at fractional locations on several levels and sum with attention weights.

    Args:
        value: (B, S, heads, head_dim), levels flattened row-major and concatenated; S = sum H_l * W_l.
        spatial_shapes: (H, W) of each level, as Python ints: they shape the computation, so they stay on the
            host (no device read-back, and an exporter sees constants).
        sampling_locations: (B, Q, heads, L, P, 2), (x, y) in [0, 1] of each level's extent
            (0 = left/top edge, 1 = right/bottom edge); points outside read zeros.
        attention_weights: (B, Q, heads, L, P).

    Returns:
        (B, Q, heads * head_dim) in ``value``'s dtype. Bilinear sampling with ``align_corners=False``
        semantics (pixel centres at (i + 0.5) / size), zero padding. Half-precision inputs are computed in
        float32; float32 and float64 keep their own precision.
    """
    out_dtype = value.dtype
    work = torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    with torch.autocast(device_type=value.device.type, enabled=False):
        value = value.to(work)
        sampling_locations = sampling_locations.to(work)
        attention_weights = attention_weights.to(work)
        B, S, M, D = value.shape
        _, Q, _, L, P, _ = sampling_locations.shape
        if sum(h * w for h, w in shapes) != S:
            raise ValueError(f"spatial_shapes {shapes} do not sum to the value length {S}")
        value_levels = value.split([h * w for h, w in shapes], dim=1)
        grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
        sampled = []
        for lvl, (h, w) in enumerate(shapes):
            # (B, HW, M, D) -> (B*M, D, H, W)
            v = value_levels[lvl].permute(0, 2, 3, 1).reshape(B * M, D, h, w)
            # (B, Q, M, P, 2) -> (B*M, Q, P, 2)
            g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
            sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
        # (B*M, D, Q, L*P) weighted by (B*M, 1, Q, L*P)
        stacked = torch.stack(sampled, dim=-2).flatten(-2)
        weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)
        out = (stacked * weights).sum(-1).view(B, M * D, Q)
    return out.transpose(1, 2).contiguous().to(out_dtype)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention module: predicts offsets and weights from the query, then samples.

    Args:
        d_model: model width; must be divisible by ``n_heads``.
        n_levels: feature levels attended to.
        n_heads: attention heads.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 1, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Deformable DETR's init: heads start looking in 8 evenly spread directions, point k at distance k.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value_input: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """
        Args:
            query: (B, Q, d_model), positional embedding already added.
            reference_points: (B, Q, L, 2) normalised (x, y), or (B, Q, L, 4) normalised (cx, cy, w, h):
                with boxes, offsets are scaled by the box size.
            value_input: (B, S, d_model) flattened multi-level features.
            spatial_shapes: (H, W) of each level, Python ints.

        Returns:
            (B, Q, d_model).
        """
        B, Q, _ = query.shape
        S = value_input.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_input).view(B, S, M, self.d_model // M)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, M, L * P).softmax(-1).view(B, Q, M, L, P)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (W, H). Built with fill kernels: a host list turned
            # into a GPU tensor (new_tensor) would be a blocking copy in every forward.
            normalizer = torch.stack([offsets.new_full((), float(v)) for h, w in spatial_shapes for v in (w, h)])
            normalizer = normalizer.view(len(spatial_shapes), 2)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points must end in 2 or 4, got {reference_points.shape[-1]}")
        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
