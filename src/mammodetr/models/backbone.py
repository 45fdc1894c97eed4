"""Backbones behind one registry. Each returns feature maps and reports their channels and strides.

Registered names: ``resnet50``, ``convnextv2_tiny``, ``dinov3_vitb16`` (timm ``vit_base_patch16_dinov3``)
and ``mambavision_t`` (our plain-PyTorch port). Any other timm model name works as an escape hatch,
as long as the model implements timm's ``forward_intermediates``.

Input contract: ``forward`` takes images already normalised with the backbone's own ``mean``/``std``;
the multi-task model does the grayscale-to-3-channel repeat and the normalisation (see ``detr.py``).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mammodetr.models.weights import HubUnavailableError, load_state_dict_checked, read_state_dict, strip_prefixes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> timm model name, or "module:function" for builders outside timm.
BACKBONES: dict[str, str] = {
    "resnet50": "resnet50",
    "convnextv2_tiny": "convnextv2_tiny",
    "dinov3_vitb16": "vit_base_patch16_dinov3",
    "mambavision_t": "mammodetr.models.mambavision:build_mambavision_backbone",
}

# Extra timm kwargs per timm model family: ViTs must accept any input size that is a multiple of the patch.
_TIMM_KWARGS: dict[str, dict] = {"vit_base_patch16_dinov3": {"dynamic_img_size": True}}


class Backbone(nn.Module):
    """Base class: a module returning a list of feature maps, shallow to deep.

    Attributes:
        channels: channels of each returned map.
        strides: input-pixels-per-feature-pixel of each returned map.
        mean, std: the per-channel normalisation the backbone's weights expect (RGB order).
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.strides = [int(s) for s in strides]
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    @property
    def size_divisor(self) -> int:
        """Input height/width must be a multiple of this."""
        return max(self.strides)

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def normalize(self, images: Tensor) -> Tensor:
        """(B, 1|3, H, W) in [0, 1] -> (B, 3, H, W) normalised with this backbone's statistics.

        Mammograms are grayscale: the single channel is repeated to RGB, so ImageNet-pretrained weights see the
        same intensity in every channel.
        """
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def pretrained_state_dict(self) -> dict[str, Tensor]:
        """The weights as a ``pretrained=`` file must hold them for :func:`build_backbone` to load them back (the
        keys of the backbone's own model, e.g. timm's, without our wrapper's prefix)."""
        return dict(self.state_dict())


class TimmBackbone(Backbone):
    """Any timm model with ``forward_intermediates``; unused later stages and the head are pruned.

    For ViTs, ``forward_intermediates`` drops every prefix token (class + register tokens; DINOv3 has 5)
    and reshapes the patch tokens to an NCHW map at stride 16.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int]) -> None:
        info = list(model.feature_info)
        n = len(info)
        indices = sorted({i % n for i in out_indices})
        for i in out_indices:
            if not -n <= i < n:
                raise ValueError(f"out_indices {tuple(out_indices)} out of range for {n} feature levels")
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        super().__init__(
            channels=[info[i]["num_chs"] for i in indices],
            strides=[info[i]["reduction"] for i in indices],
            mean=cfg.get("mean", IMAGENET_MEAN),
            std=cfg.get("std", IMAGENET_STD),
        )
        # Pruning removes the classifier and the stages after the deepest index, so every remaining
        # parameter is used (and receives a gradient).
        model.prune_intermediate_layers(indices, prune_norm=False, prune_head=True)
        self.body = model
        self.indices = indices
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def pretrained_state_dict(self) -> dict[str, Tensor]:
        return dict(self.body.state_dict())  # timm's own keys: a full timm model of this name loads them

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[-1] % self.size_divisor or x.shape[-2] % self.size_divisor:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of the backbone's stride {self.size_divisor}"
            )
        kwargs = {"norm": True} if self.num_prefix_tokens else {}  # ViTs: final LayerNorm on every taken block
        return list(self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True, **kwargs))


def _hub_error(name: str, exc: BaseException) -> HubUnavailableError:
    return HubUnavailableError(
        f"could not fetch pretrained weights for backbone '{name}' from the model hub "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "When this machine is offline, download the weights elsewhere and pass the file with "
        "--pretrained /path/to/weights.safetensors (or a torch .pth/.bin), "
        "or train from scratch with --pretrained none."
    )


def load_local_weights(model: nn.Module, path: str, *, what: str, safe_globals: Sequence[object] = ()):
    """Load a local weights file into a full (unpruned) model; returns the LoadReport.

    Common wrapper prefixes are stripped, and timm's own key converter for the model family is applied
    when it has one, so original-repo checkpoints (e.g. Meta's DINOv3 release) load too.
    """
    state = strip_prefixes(read_state_dict(path, safe_globals=safe_globals))
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    # A file whose keys are all the model's own (e.g. from ``mammodetr pretrain``) needs no conversion, and a
    # converter written for another layout could rename them wrongly.
    if filter_fn is not None and not set(state) <= set(model.state_dict()):
        try:
            state = filter_fn(state, model)
        except Exception:  # a converter that does not apply to this file's layout: keep the keys as they are
            pass
    return load_state_dict_checked(model, state, strict=False, what=f"{what} ({path})")


def _create_timm(name: str, timm_name: str, pretrained: str, options: dict) -> nn.Module:
    import timm

    kwargs = {**_TIMM_KWARGS.get(timm_name, {}), **options}
    if pretrained == "hub":
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise _hub_error(name, RuntimeError("HF_HUB_OFFLINE=1"))
        try:
            return timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as exc:  # network, missing hub client, or hub refusal all mean "cannot fetch"
            raise _hub_error(name, exc) from exc
    model = timm.create_model(timm_name, pretrained=False, **kwargs)
    if pretrained not in ("none", "", None):
        load_local_weights(model, pretrained, what=f"backbone '{name}'")
    return model


def build_backbone(
    name: str,
    pretrained: str = "none",
    out_indices: Sequence[int] = (-1,),
    **options,
) -> Backbone:
    """Build a registered backbone (or any timm model by name).

    Args:
        name: registry name or timm model name.
        pretrained: ``"none"``, ``"hub"`` (timm's default pretrained tag, needs network) or a local
            weights file path (``.safetensors`` or a torch file read with ``weights_only=True``).
        out_indices: which feature levels to return (negative = from the deepest).
        **options: backbone-specific options (e.g. ``window_sizes`` for MambaVision); unknown options
            are passed to ``timm.create_model``.
    """
    target = BACKBONES.get(name, name)
    if ":" in target:
        module_name, fn_name = target.split(":")
        builder = getattr(importlib.import_module(module_name), fn_name)
        return builder(pretrained=pretrained, out_indices=tuple(out_indices), **options)
    import timm

    if not timm.is_model(target):
        known = ", ".join(BACKBONES)
        raise ValueError(f"unknown backbone '{name}': not registered ({known}) and not a timm model name")
    model = _create_timm(name, target, pretrained, options)
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"timm model '{target}' has no forward_intermediates; it cannot be used as a backbone")
    return TimmBackbone(model, out_indices)
