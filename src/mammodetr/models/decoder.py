"""Deformable-DETR-style decoder with learned queries, iterative box refinement and per-layer heads.

No encoder: the memory is the localisation branch's output (projected backbone maps after the dilated
context module). Each layer: self-attention among queries, deformable cross-attention into the memory,
FFN (post-norm, as Deformable DETR). After every layer a box head and an objectness head predict; with
refinement each layer's box head predicts a correction to the previous layer's boxes in logit space.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammodetr.models.box_ops import inverse_sigmoid
from mammodetr.models.deformable_attention import MultiScaleDeformableAttention


class MLP(nn.Module):
    """A few linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DecoderLayer(nn.Module):
    def __init__(
        self, d_model: int, n_levels: int, nheads: int, n_points: int, dim_feedforward: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MultiScaleDeformableAttention(d_model, n_levels, nheads, n_points)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt, need_weights=False)[0]))
        tgt = self.norm2(tgt + self.dropout(self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


class DeformableDecoder(nn.Module):
    """Learned queries -> per-layer boxes (normalised cxcywh) and objectness logits.

    Args:
        d_model, n_levels, nheads, n_points, dim_feedforward, dropout: layer settings.
        num_layers: decoder layers (each gives a prediction).
        num_queries: learned object queries (paper: 3).
        box_refine: iterative refinement; without it all layers share one box head and reference points.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 1,
        nheads: int = 8,
        n_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_layers: int = 6,
        num_queries: int = 3,
        box_refine: bool = True,
    ) -> None:
        super().__init__()
        layer = DecoderLayer(d_model, n_levels, nheads, n_points, dim_feedforward, dropout)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.query_embed = nn.Embedding(num_queries, 2 * d_model)  # (positional part, content part)
        self.reference_points = nn.Linear(d_model, 2)
        self.box_refine = box_refine
        box_head = MLP(d_model, d_model, 4, 3)
        obj_head = nn.Linear(d_model, 1)
        # Objectness starts at p = 0.01 (focal-loss prior), boxes at the reference point with a small
        # size (sigmoid(-2) ~ 0.12 of the image): lesions are small and most images have none.
        nn.init.constant_(obj_head.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)
        nn.init.constant_(box_head.layers[-1].bias[2:], -2.0)
        if box_refine:
            self.box_heads = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_layers))
            self.obj_heads = nn.ModuleList(copy.deepcopy(obj_head) for _ in range(num_layers))
        else:
            self.box_heads = nn.ModuleList([box_head] * num_layers)
            self.obj_heads = nn.ModuleList([obj_head] * num_layers)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)

    def forward(self, memory: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """
        Args:
            memory: (B, S, d_model) flattened multi-level features.
            spatial_shapes: (H, W) of each level, Python ints.

        Returns:
            boxes (num_layers, B, K, 4) normalised cxcywh, obj_logits (num_layers, B, K).
        """
        B = memory.shape[0]
        query_pos, tgt = self.query_embed.weight.unsqueeze(0).expand(B, -1, -1).chunk(2, dim=-1)
        reference = self.reference_points(query_pos).sigmoid()
        n_levels = len(spatial_shapes)
        all_boxes, all_obj = [], []
        for i, layer in enumerate(self.layers):
            tgt = layer(tgt, query_pos, reference[:, :, None].expand(-1, -1, n_levels, -1), memory, spatial_shapes)
            delta = self.box_heads[i](tgt)
            if reference.shape[-1] == 4:
                boxes = (delta + inverse_sigmoid(reference)).sigmoid()
            else:
                boxes = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
            all_boxes.append(boxes)
            all_obj.append(self.obj_heads[i](tgt).squeeze(-1))
            if self.box_refine:
                # detach: each layer learns a correction, gradients do not flow through earlier boxes
                reference = boxes.detach()
        return torch.stack(all_boxes), torch.stack(all_obj)
