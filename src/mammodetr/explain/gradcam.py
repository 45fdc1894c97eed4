"""Grad-CAM on the malignancy logit, with the ``grad-cam`` package (``pytorch_grad_cam``).

The default target layer is the model's projection of the deepest level (``projections.-1``): the map the
classifier pools, a (B, d_model, h, w) tensor for every backbone family (CNNs, ViTs whose tokens the backbone
wrapper already reshaped, MambaVision whose windows are already merged back), so no family needs special
treatment there. Another layer can be named by dotted path (``backbone.model.blocks.-1``); token outputs
(B, N, C) are reshaped to a grid with the prefix tokens (class, registers) dropped.

The model's train/eval mode is restored afterwards (the package switches the model to eval), and a target
layer whose hooks never fired raises a clear error instead of the package's IndexError.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_TARGET_LAYER", "TargetLayerError", "resolve_layer", "token_reshape_transform", "gradcam",
           "CamResult"]

log = logging.getLogger(__name__)

DEFAULT_TARGET_LAYER = "projections.-1"


class TargetLayerError(ValueError):
    """The Grad-CAM target layer is not on the path to the malignancy logit (its hooks never fired)."""


class _ImageLogits(nn.Module):
    """Wraps the multi-task model so Grad-CAM sees a classifier: returns ``image_logits`` (B, C)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["image_logits"]


def resolve_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """Find a sub-module by dotted path; integer parts index sequences (negative allowed).

    Raises:
        ValueError: naming the part that does not exist.
    """
    name = name or DEFAULT_TARGET_LAYER
    module: nn.Module = model
    for part in name.split("."):
        if part.lstrip("-").isdigit() and isinstance(module, (nn.ModuleList, nn.Sequential)):
            idx = int(part)
            if not -len(module) <= idx < len(module):
                raise ValueError(f"target layer {name!r}: index {idx} out of range ({len(module)} entries)")
            module = module[idx]
        elif hasattr(module, part) and isinstance(getattr(module, part), nn.Module):
            module = getattr(module, part)
        else:
            children = ", ".join(n for n, _ in module.named_children()) or "none"
            raise ValueError(f"target layer {name!r}: no sub-module {part!r} (children: {children})")
    return name, module


def token_reshape_transform(input_hw: tuple[int, int], patch_sizes: Sequence[int] = (16, 14, 8, 32, 4)):
    """A reshape transform for (B, N, C) token outputs of a ViT layer: drops prefix tokens, returns (B, C, h, w).

    The grid is the input size divided by the first patch size for which N - h*w is a plausible number of
    prefix tokens (0 to 16: class token, register tokens). 4-D outputs pass through unchanged.
    """
    h_in, w_in = input_hw

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"the target layer returns {type(t).__name__}, not a tensor")
        if t.dim() == 4:
            return t
        if t.dim() != 3:
            raise ValueError(f"cannot reshape an activation of shape {tuple(t.shape)} for Grad-CAM")
        n = t.shape[1]
        for p in patch_sizes:
            gh, gw = math.ceil(h_in / p), math.ceil(w_in / p)
            if 0 <= n - gh * gw <= 16:
                return t[:, n - gh * gw:, :].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)
        raise ValueError(f"{n} tokens do not form a grid for a {h_in}x{w_in} input")

    return reshape


@dataclass
class CamResult:
    """Grad-CAM maps in model-input pixels.

    Attributes:
        cams: (B, S, S) float32 in [0, 1] (per-image min-max scaled, as the package returns them).
        logits: (B, C) the model's image logits for the same inputs.
        target_layer: dotted name of the layer used.
    """

    cams: np.ndarray
    logits: np.ndarray
    target_layer: str


def gradcam(model: nn.Module, images: torch.Tensor, *, target_layer: str | None = None,
            class_index: int = 1) -> CamResult:
    """Grad-CAM of ``image_logits[:, class_index]`` (default: the malignant class).

    Args:
        model: multi-task model (returns a dict with ``image_logits``).
        images: (B, 1|3, S, S) model input in [0, 1].
        target_layer: dotted module path (default ``projections.-1``).
        class_index: logit to explain.

    Raises:
        TargetLayerError: the target layer's hooks did not fire (the layer is not on the logit's path).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    name, layer = resolve_layer(model, target_layer)
    fired = {"forward": 0}
    probe = layer.register_forward_hook(lambda *_: fired.__setitem__("forward", fired["forward"] + 1))
    modes = {m: m.training for m in model.modules()}
    wrapper = _ImageLogits(model)
    x = images.detach().clone().requires_grad_(True)  # so the graph exists even with frozen parameters
    try:
        with GradCAM(model=wrapper, target_layers=[layer],
                     reshape_transform=token_reshape_transform(tuple(images.shape[-2:]))) as cam:
            error = ""
            try:
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)] * len(x))
            except (IndexError, ValueError, TypeError, AttributeError) as e:  # what the package raises then
                maps, error = None, f" ({type(e).__name__}: {e})"
            got_grads = list(cam.activations_and_grads.gradients)
            outputs = getattr(cam, "outputs", None)
            logits = outputs.detach().cpu().numpy() if isinstance(outputs, torch.Tensor) else None
    finally:
        probe.remove()
        for m, was in modes.items():  # the package calls model.eval(); restore every module's own mode
            m.train(was)
        model.zero_grad(set_to_none=True)
    if fired["forward"] == 0 or maps is None or not got_grads:
        msg = (f"Grad-CAM target layer {name!r}: forward hook fired {fired['forward']} times, "
               f"gradient hook {'fired' if got_grads else 'never fired'}; the layer is not on the path to "
               f"image_logits{error}")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        raise TargetLayerError(msg)
    return CamResult(np.asarray(maps, dtype=np.float32), logits, name)
