"""An exponential moving average of the model's weights (Polyak averaging), updated after every optimizer step.

On small datasets the weights of the last steps jump with each batch; their average generalises better and makes
the best-checkpoint choice less noisy. The average starts equal to the model and uses the usual warm-up
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``; timm's ``ModelEmaV3`` with warm-up), so a short run is not dominated by its random start.
Buffers (e.g. BatchNorm running statistics) are averaged too when they are floating point, copied otherwise.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from mammodetr.checkpoint import unwrap_model

__all__ = ["ModelEma"]


class ModelEma:
    """The averaged copy of a model.

    Args:
        model: the model being trained (a DDP or compiled wrapper is unwrapped).
        decay: the decay after warm-up, in [0, 1).

    Attributes:
        module: the averaged model (eval mode, no gradients); predict, validate and save this.
        updates: optimizer steps averaged so far.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model``'s current weights."""
        d = self.current_decay()
        live = unwrap_model(model).state_dict()
        for name, avg in self.module.state_dict().items():
            value = live[name].detach()
            if avg.dtype.is_floating_point:
                avg.lerp_(value.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor | int]:
        """What exact resume needs besides the averaged weights themselves: the update count."""
        return {"updates": self.updates}

    def load_state_dict(self, state: dict, weights: dict[str, Tensor]) -> None:
        """Restore the averaged ``weights`` and the update count."""
        self.module.load_state_dict(weights)
        self.updates = int(state["updates"])
