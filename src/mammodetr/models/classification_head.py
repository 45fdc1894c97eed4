"""Image-level classification branch: global average pooling over the projected map + linear."""

from __future__ import annotations

from torch import Tensor, nn


class ClassificationHead(nn.Module):
    """(B, d_model, H, W) -> image logits (B, num_classes)."""

    def __init__(self, d_model: int = 256, num_classes: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, num_classes)

    def forward(self, feature: Tensor) -> Tensor:
        return self.fc(feature.mean(dim=(-2, -1)))
