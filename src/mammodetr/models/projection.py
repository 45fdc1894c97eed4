"""The shared feature projection: a 1x1 conv from backbone channels to d_model, plus GroupNorm."""

from __future__ import annotations

from torch import Tensor, nn


class Projection(nn.Module):
    """(B, C_in, H, W) -> (B, d_model, H, W). GroupNorm (32 groups) as in Deformable DETR's input_proj."""

    def __init__(self, in_channels: int, d_model: int = 256, groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, d_model, kernel_size=1)
        self.norm = nn.GroupNorm(min(groups, d_model), d_model)
        nn.init.xavier_uniform_(self.conv.weight, gain=1)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))
