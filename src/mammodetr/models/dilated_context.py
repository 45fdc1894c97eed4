"""Localisation branch's multi-scale context module: three parallel dilated 3x3 convolutions.

The paper says only that the three outputs are "aggregated". We sum them, apply GroupNorm and ReLU,
and add the input back (residual): the sum keeps the width at d_model, and the residual lets the
decoder start from the plain projected features while the dilated paths are still untrained.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class DilatedContext(nn.Module):
    """(B, d, H, W) -> (B, d, H, W): x + ReLU(GN(sum_d conv3x3_dilation_d(x)))."""

    def __init__(self, d_model: int = 256, dilations: Sequence[int] = (1, 2, 4), groups: int = 32) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(d_model, d_model, kernel_size=3, padding=d, dilation=d) for d in dilations
        )
        self.norm = nn.GroupNorm(min(groups, d_model), d_model)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return x + self.act(self.norm(out))
