"""MambaVision (Hatamizadeh & Kautz, CVPR 2025) in plain PyTorch, and its detection backbone.

A clean-room port written from the architecture description in ``docs/mambavision.md``: the module tree
and ``state_dict`` keys equal NVIDIA's, so their released checkpoints load with ``strict=True``; the
selective scan is our own PyTorch implementation (``selective_scan.py``), so the model runs on CPU and GPU
without ``mamba_ssm`` (which it still uses on CUDA when installed).

NVIDIA's pretrained MambaVision weights are licensed for non-commercial use only (CC-BY-NC-SA-4.0; NVIDIA's
code is under the NVIDIA Source Code License-NC). This file holds no NVIDIA code or weights.

Layout (MambaVision-T): stem (stride 4) -> 2 conv stages -> 2 hybrid stages (Mamba mixers, then
self-attention, inside non-overlapping windows) -> BatchNorm, average pool, linear classifier.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from mammodetr.models.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from mammodetr.models.selective_scan import selective_scan
from mammodetr.models.weights import (
    HubUnavailableError,
    LoadReport,
    load_state_dict_checked,
    read_state_dict,
    strip_prefixes,
)

log = logging.getLogger(__name__)

HUB_REPO_ID = "nvidia/MambaVision-T-1K"
HUB_FILENAME = "model.safetensors"
WEIGHTS_LICENSE = "CC-BY-NC-SA-4.0 (non-commercial); NVIDIA's MambaVision code: NVIDIA Source Code License-NC"
# Globals a MambaVision training checkpoint (``mambavision_tiny_1k.pth.tar``, timm's train.py format)
# holds besides tensors: the training arguments as an argparse.Namespace. Nothing else is allow-listed.
CHECKPOINT_SAFE_GLOBALS: tuple[object, ...] = (argparse.Namespace,)

# Stage 3/4 windows of the backbone at 512x512 input: the stride-16 map is 32x32 and the stride-32 map
# 16x16, so one window covers each map (global mixing, no padding).
DENSE_WINDOW_SIZES_512 = (32, 16)


# ---------------------------------------------------------------------------------------------------------
# Windows


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Split a map into non-overlapping windows of row-major tokens.

    Args:
        x: (B, C, H, W) with H and W multiples of ``window_size``.

    Returns:
        (B * H/ws * W/ws, ws*ws, C); windows ordered batch, window-row, window-column.
    """
    b, c, h, w = x.shape
    if h % window_size or w % window_size:
        raise ValueError(f"map {h}x{w} is not a multiple of the window size {window_size}; pad it first")
    x = x.view(b, c, h // window_size, window_size, w // window_size, window_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window_size * window_size, c)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of ``window_partition``.

    Args:
        windows: (B * H/ws * W/ws, ws*ws, C).
        height, width: the (padded) map size H, W.

    Returns:
        (B, C, H, W).
    """
    nh, nw = height // window_size, width // window_size
    c = windows.shape[-1]
    x = windows.reshape(-1, nh, nw, window_size, window_size, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, c, height, width)


def attention_block_indices(depth: int) -> list[int]:
    """Blocks of a hybrid stage that use self-attention; the others use the Mamba mixer.

    The second half of the stage is attention; for odd depths the middle block stays Mamba.
    """
    start = depth // 2 + 1 if depth % 2 else depth // 2
    return list(range(start, depth))


# ---------------------------------------------------------------------------------------------------------
# Blocks


class ConvBlock(nn.Module):
    """Residual conv block of stages 1-2: conv-BN-GELU(tanh)-conv-BN, added to the input."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(dim)
        self.act1 = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return x + self.drop_path(y)


class MambaVisionMixer(nn.Module):
    """MambaVision's token mixer: a selective-scan branch and a plain conv branch, concatenated.

    Half the channels go through depthwise conv, SiLU and the selective scan (non-causal conv, since an
    image window has no time direction); the other half through conv and SiLU only (no gating).
    """

    def __init__(self, dim: int, d_state: int = 8, d_conv: int = 3) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"MambaVisionMixer needs an even width; got {dim}")
        self.d_inner = dim
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        half = dim // 2
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True)
        # S4D-real initialisation: state n decays at rate n.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(half, 1))
        self.D = nn.Parameter(torch.ones(half))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, groups=half, bias=False)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, groups=half, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B', L, C) tokens -> (B', L, C)."""
        xz = self.in_proj(x).transpose(1, 2)  # (B', C, L)
        xs, z = xz.chunk(2, dim=1)
        pad = (self.conv1d_x.kernel_size[0] - 1) // 2
        xs = F.silu(F.conv1d(xs, self.conv1d_x.weight, padding=pad, groups=xs.shape[1]))
        z = F.silu(F.conv1d(z, self.conv1d_z.weight, padding=pad, groups=z.shape[1]))
        x_dbl = self.x_proj(xs.transpose(1, 2))  # (B', L, R + 2N)
        dt_low, b_ssm, c_ssm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt_low).transpose(1, 2)  # includes the bias; the scan adds it once more (as NVIDIA's)
        y = selective_scan(
            xs,
            dt,
            -torch.exp(self.A_log.float()),
            b_ssm.transpose(1, 2),
            c_ssm.transpose(1, 2),
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        y = torch.cat([y.to(z.dtype), z], dim=1)
        return self.out_proj(y.transpose(1, 2))


class Attention(nn.Module):
    """Multi-head self-attention over the tokens of one window (no mask, no relative bias)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B', L, C) -> (B', L, C)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class HybridBlock(nn.Module):
    """Pre-norm transformer block whose ``mixer`` is either self-attention or the Mamba mixer."""

    def __init__(
        self, dim: int, num_heads: int, use_attention: bool, mlp_ratio: float = 4.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer: nn.Module = Attention(dim, num_heads) if use_attention else MambaVisionMixer(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B', L, C) -> (B', L, C)."""
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Downsample(nn.Module):
    """3x3 stride-2 conv doubling the channels (no norm, no activation)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, out_dim, 3, stride=2, padding=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(x)


class PatchEmbed(nn.Module):
    """Stride-4 stem: two 3x3 stride-2 convs with BatchNorm (eps 1e-4) and ReLU."""

    def __init__(self, in_chans: int, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Identity()  # kept for key compatibility (NVIDIA's module has it, parameter-free)
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_down(self.proj(x))


class MambaVisionLevel(nn.Module):
    """One stage: conv blocks, or hybrid blocks run on windows; then an optional downsample.

    Args:
        dim: stage width.
        depth: number of blocks.
        num_heads: attention heads (hybrid stages only).
        window_size: window side in tokens (hybrid stages only); the map is zero-padded on the right and
            bottom to a multiple of it, and padded tokens take part in mixing, as in NVIDIA's model.
        conv: conv stage (stages 1-2) instead of hybrid.
        downsample: end with a stride-2 conv to ``2 * dim`` channels.
        mlp_ratio: MLP hidden width factor.
        drop_path: per-block stochastic depth rates (length ``depth``).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        conv: bool,
        downsample: bool,
        mlp_ratio: float = 4.0,
        drop_path: Sequence[float] = (),
    ) -> None:
        super().__init__()
        rates = list(drop_path) or [0.0] * depth
        self.conv = conv
        self.window_size = int(window_size)
        if conv:
            self.blocks = nn.ModuleList(ConvBlock(dim, rates[i]) for i in range(depth))
        else:
            attention = set(attention_block_indices(depth))
            self.blocks = nn.ModuleList(
                HybridBlock(dim, num_heads, i in attention, mlp_ratio, rates[i]) for i in range(depth)
            )
        self.downsample = Downsample(dim, 2 * dim) if downsample else None

    def forward_blocks(self, x: Tensor) -> Tensor:
        """The stage's blocks without the downsample: (B, C, H, W) -> (B, C, H, W)."""
        if self.conv:
            for blk in self.blocks:
                x = blk(x)
            return x
        h, w = x.shape[-2:]
        ws = self.window_size
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        hp, wp = x.shape[-2:]
        tokens = window_partition(x, ws)
        for blk in self.blocks:
            tokens = blk(tokens)
        x = window_reverse(tokens, ws, hp, wp)
        return x[:, :, :h, :w].contiguous() if (pad_b or pad_r) else x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


# ---------------------------------------------------------------------------------------------------------
# Model


class MambaVision(nn.Module):
    """MambaVision classifier; ``forward_stages`` gives the four pre-downsample feature maps.

    Args:
        dim: width of stage 1 (doubles at each stage).
        in_dim: hidden width of the stem.
        depths: blocks per stage (4 stages; stages 1-2 conv, 3-4 hybrid).
        num_heads: attention heads per stage (used in stages 3-4).
        window_size: window side per stage (used in stages 3-4).
        mlp_ratio: MLP hidden width factor of the hybrid blocks.
        drop_path_rate: stochastic depth, spread linearly over all blocks.
        num_classes: classifier outputs; 0 keeps ``norm`` and ``head`` as parameter-free identities.
        in_chans: input channels.
    """

    def __init__(
        self,
        dim: int,
        in_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: Sequence[int],
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if not len(depths) == len(num_heads) == len(window_size) == 4:
            raise ValueError("depths, num_heads and window_size need one entry per stage (4)")
        self.depths = [int(d) for d in depths]
        self.num_features = int(dim * 2 ** (len(depths) - 1))
        self.stage_channels = [int(dim * 2**i) for i in range(len(depths))]
        self.stage_strides = [4 * 2**i for i in range(len(depths))]
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(in_chans, in_dim, dim)
        rates = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.levels = nn.ModuleList()
        for i, depth in enumerate(self.depths):
            start = sum(self.depths[:i])
            self.levels.append(
                MambaVisionLevel(
                    dim=self.stage_channels[i],
                    depth=depth,
                    num_heads=num_heads[i],
                    window_size=window_size[i],
                    conv=i < 2,
                    downsample=i < len(self.depths) - 1,
                    mlp_ratio=mlp_ratio,
                    drop_path=rates[start : start + depth],
                )
            )
        self.norm = nn.BatchNorm2d(self.num_features) if num_classes > 0 else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def set_window_sizes(self, window_sizes: Sequence[int]) -> None:
        """Change the windows of the hybrid stages 3-4 (the weights do not depend on them).

        Args:
            window_sizes: two sizes (stages 3, 4) or four (stages 1-4; the conv stages ignore theirs).
        """
        for level, ws in zip(self.levels[2:], _check_window_sizes(window_sizes)):
            level.window_size = ws

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Feature maps of the four stages before their downsample.

        Args:
            x: (B, 3, H, W) normalised images, any H, W.

        Returns:
            four maps (B, dim * 2**i, ~H / 2**(i+2), ~W / 2**(i+2)) at strides 4, 8, 16, 32 (each stride-2
            conv rounds the size up).
        """
        x = self.patch_embed(x)
        feats = []
        for level in self.levels:
            x = level.forward_blocks(x)
            feats.append(x)
            if level.downsample is not None:
                x = level.downsample(x)
        return feats

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> pooled features (B, num_features) after the final BatchNorm."""
        x = self.norm(self.forward_stages(x)[-1])
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> logits (B, num_classes)."""
        return self.head(self.forward_features(x))


def _check_window_sizes(window_sizes: Sequence[int]) -> tuple[int, int]:
    sizes = [int(s) for s in window_sizes]
    if len(sizes) == 4:
        sizes = sizes[2:]
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"window_sizes must give 2 (stages 3-4) or 4 positive sizes; got {tuple(window_sizes)}")
    return sizes[0], sizes[1]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def mambavision_t(**kwargs) -> MambaVision:
    """MambaVision-T (31.8M parameters with the 1000-class head); keyword arguments override the config."""
    config = dict(
        dim=80,
        in_dim=32,
        depths=(1, 3, 8, 4),
        num_heads=(2, 4, 8, 16),
        window_size=(8, 8, 14, 7),
        mlp_ratio=4.0,
        drop_path_rate=0.2,
    )
    config.update(kwargs)
    return MambaVision(**config)


# ---------------------------------------------------------------------------------------------------------
# Weights


def _complete_bn_counters(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hub exports sometimes drop BatchNorm's ``num_batches_tracked``; it does not affect inference."""
    own = model.state_dict()
    out = dict(state_dict)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(value)
    return out


def _hub_file() -> str:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise HubUnavailableError(
            f"pretrained='hub' needs the huggingface_hub package to fetch {HUB_REPO_ID}/{HUB_FILENAME}; "
            "install it, or download the file elsewhere and pass its path (pretrained=/path/model.safetensors "
            "or /path/mambavision_tiny_1k.pth.tar), or use pretrained='none'."
        ) from exc
    try:
        return hf_hub_download(HUB_REPO_ID, HUB_FILENAME)
    except Exception as exc:  # offline, proxy refusal, missing file: all mean "cannot fetch from here"
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise HubUnavailableError(
            f"could not fetch {HUB_REPO_ID}/{HUB_FILENAME} from the Hugging Face hub ({type(exc).__name__}: {first}). "
            "When this machine is offline, download model.safetensors (or mambavision_tiny_1k.pth.tar) elsewhere "
            "and pass its path as pretrained, or use pretrained='none'. Licence of the weights: " + WEIGHTS_LICENSE
        ) from exc


def load_mambavision_weights(model: MambaVision, pretrained: str | Path) -> LoadReport | None:
    """Load NVIDIA's MambaVision weights into a full classifier model, strictly.

    Args:
        model: a ``MambaVision`` with the 1000-class head (the checkpoints hold ``norm`` and ``head``).
        pretrained: ``"none"`` (keep the random init), ``"hub"`` (``nvidia/MambaVision-T-1K``'s
            ``model.safetensors`` via huggingface_hub), or a local ``.safetensors`` file (keys may carry a
            ``model.`` prefix) or torch training checkpoint such as ``mambavision_tiny_1k.pth.tar`` (weights
            under ``state_dict``, keys may carry ``module.``), read with ``weights_only=True``.

    Returns:
        the load report, or None for ``"none"``.

    Raises:
        HubUnavailableError: ``"hub"`` but the hub cannot be reached or huggingface_hub is missing.
        WeightsError: unreadable file or keys/shapes that do not match the model exactly.
    """
    if pretrained in ("none", "", None):
        return None
    path = _hub_file() if pretrained == "hub" else str(pretrained)
    state = strip_prefixes(read_state_dict(path, safe_globals=CHECKPOINT_SAFE_GLOBALS), ("module.", "model."))
    state = _complete_bn_counters(model, state)
    state = _complete_classifier(model, state)
    return load_state_dict_checked(model, state, strict=True, what=f"MambaVision weights ({path})")


def _complete_classifier(model: MambaVision, state: dict) -> dict:
    """A backbone-only file (``mammodetr pretrain`` writes the stages, not the ImageNet head) loads strictly too:
    the final norm and the classifier, which the detection backbone drops anyway, keep their initialisation."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    classifier = [k for k in own if k.startswith(("head.", "norm."))]
    # Only a file without any of the classifier's tensors is backbone-only; one that lacks a few is damaged.
    if not missing or sorted(missing) != sorted(classifier):
        return state
    log.info("MambaVision weights without the classifier head (a backbone-only file): head and final norm keep "
             "their initialisation")
    return {**state, **{k: own[k] for k in missing}}


# ---------------------------------------------------------------------------------------------------------
# Backbone


class MambaVisionBackbone(Backbone):
    """The stem and stages of a ``MambaVision``, returning the selected pre-downsample stage maps.

    Stages after the deepest selected one, the unused last downsample, the final norm and the classifier
    are dropped, so every parameter contributes to the output.

    Args:
        model: a ``MambaVision`` (weights already loaded).
        out_indices: stages to return (0..3, negative counts from the deepest).
    """

    def __init__(self, model: MambaVision, out_indices: Sequence[int] = (-1,)) -> None:
        n = len(model.levels)
        for i in out_indices:
            if not -n <= i < n:
                raise ValueError(f"out_indices {tuple(out_indices)} out of range for {n} MambaVision stages")
        indices = sorted({i % n for i in out_indices})
        if not indices:
            raise ValueError("out_indices selects no stage")
        super().__init__(
            channels=[model.stage_channels[i] for i in indices],
            strides=[model.stage_strides[i] for i in indices],
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )
        self.indices = indices
        self.patch_embed = model.patch_embed
        self.levels = nn.ModuleList(model.levels[: indices[-1] + 1])
        self.levels[-1].downsample = None

    @property
    def window_sizes(self) -> tuple[int, ...]:
        """Window sides of the kept hybrid stages (3, 4)."""
        return tuple(level.window_size for level in self.levels if not level.conv)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) normalised, H and W multiples of 32 -> selected maps, shallow to deep."""
        if x.shape[-1] % self.size_divisor or x.shape[-2] % self.size_divisor:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of the backbone's stride {self.size_divisor}"
            )
        x = self.patch_embed(x)
        feats = []
        for i, level in enumerate(self.levels):
            x = level.forward_blocks(x)
            if i in self.indices:
                feats.append(x)
            if level.downsample is not None:
                x = level.downsample(x)
        return feats


def build_mambavision_backbone(
    pretrained: str = "none",
    out_indices: Sequence[int] = (-1,),
    window_sizes: Sequence[int] | None = None,
    drop_path_rate: float = 0.0,
    **unused,
) -> MambaVisionBackbone:
    """MambaVision-T as a detection backbone (registry name ``mambavision_t``).

    Args:
        pretrained: ``"none"``, ``"hub"`` or a local weights file (see ``load_mambavision_weights``).
            NVIDIA's weights are non-commercial (CC-BY-NC-SA-4.0).
        out_indices: stages to return (0..3 at strides 4, 8, 16, 32; negative allowed).
        window_sizes: windows of stages 3 and 4 (two values, or four with the first two ignored);
            default ``DENSE_WINDOW_SIZES_512`` = (32, 16), one window per map at 512x512 input.
        drop_path_rate: stochastic depth over all 16 blocks (0.2 in ImageNet training).
        **unused: options of other backbones; ignored.

    Returns:
        a ``Backbone`` with ``channels`` e.g. [640] and ``strides`` [32] for the default ``out_indices``.
    """
    windows = _check_window_sizes(DENSE_WINDOW_SIZES_512 if window_sizes is None else window_sizes)
    model = mambavision_t(drop_path_rate=drop_path_rate)
    load_mambavision_weights(model, pretrained)
    model.set_window_sizes(windows)
    return MambaVisionBackbone(model, out_indices)
