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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_TARGET_LAYER", "resolve_layer", "token_reshape_transform", "gradcam", "CamResult",
           "pointing_game_hit", "energy_in_boxes", "cam_to_image", "overlay_heatmap", "LocalisationScores",
           "localisation_scores", "gradcam_files"]

log = logging.getLogger(__name__)

DEFAULT_TARGET_LAYER = "projections.-1"


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
        RuntimeError: the target layer's hooks did not fire (the layer is not on the logit's path).
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
        raise RuntimeError(msg)
    return CamResult(np.asarray(maps, dtype=np.float32), logits, name)


def pointing_game_hit(cam: np.ndarray, boxes_xyxy: np.ndarray) -> bool:
    """True when the CAM's maximum (pixel centre) lies inside any box."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    cx, cy = x + 0.5, y + 0.5
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return bool(((cx >= b[:, 0]) & (cx <= b[:, 2]) & (cy >= b[:, 1]) & (cy <= b[:, 3])).any())


def _box_mask(shape_hw: tuple[int, int], boxes_xyxy: np.ndarray) -> np.ndarray:
    h, w = shape_hw
    ys = np.arange(h)[:, None] + 0.5
    xs = np.arange(w)[None, :] + 0.5
    mask = np.zeros((h, w), dtype=bool)
    for x1, y1, x2, y2 in np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4):
        mask |= (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    return mask


def energy_in_boxes(cam: np.ndarray, boxes_xyxy: np.ndarray) -> float:
    """Fraction of the CAM's total (non-negative) energy on pixels whose centre lies in a box."""
    c = np.clip(cam, 0, None)
    total = float(c.sum())
    if total <= 0:
        return math.nan
    return float(c[_box_mask(c.shape, boxes_xyxy)].sum() / total)


def cam_to_image(cam: np.ndarray, image_hw: tuple[int, int], image_size: int, letterbox: bool) -> np.ndarray:
    """Map an (S, S) model-input CAM back onto the (H, W) prepared image (undoing resize / letterbox)."""
    from PIL import Image

    from mammodetr.data.transforms import base_transform

    t = base_transform(image_hw, image_size, letterbox)
    x1, y1, x2, y2 = t.apply_boxes_xyxy(np.array([[0, 0, image_hw[1], image_hw[0]]], float))[0]
    region = cam[int(round(y1)):int(round(y2)), int(round(x1)):int(round(x2))]
    img = Image.fromarray(region.astype(np.float32), mode="F").resize((int(image_hw[1]), int(image_hw[0])),
                                                                      Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def overlay_heatmap(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) image in [0, 1] + (H, W) CAM in [0, 1] -> (H, W, 3) uint8 overlay (jet colour map)."""
    import matplotlib

    rgb = np.repeat(np.clip(pixels, 0, 1)[..., None], 3, axis=2)
    heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return (255 * ((1 - alpha) * rgb + alpha * heat)).astype(np.uint8)


@dataclass
class LocalisationScores:
    """Grad-CAM localisation over images with boxes: ``summary`` (JSON) and a few overlay panels."""

    summary: dict
    overlays: list[dict] = field(default_factory=list)


def localisation_scores(model: nn.Module, config: dict, data_dir: str | Path, images: Sequence, *,
                        device: str = "cpu", n_overlays: int = 4, batch_size: int = 4,
                        max_images: int | None = 500, target_layer: str | None = None) -> LocalisationScores:
    """Pointing-game hit rate and in-box CAM energy over the images that have ground-truth boxes.

    Args:
        model: the multi-task model.
        config: checkpoint config (model input geometry).
        data_dir: prepared dataset folder.
        images: ``EvalImage`` records (ground-truth boxes in prepared pixels).
        n_overlays: overlay panels returned for the report.
        max_images: cap on the images scored (None = all); the summary states how many were used.
    """
    from tqdm import tqdm

    from mammodetr.data.dataset import MammoDataset

    from .predict import geometry_from_config

    geometry = geometry_from_config(config)
    ds = MammoDataset(data_dir, split=None, image_size=geometry.image_size, augment="none",
                      letterbox=geometry.letterbox, cache=False)
    index = {img["file_name"]: i for i, img in enumerate(ds.images)}
    todo = [im for im in images if len(im.boxes_xyxy_px) and im.file_name in index]
    n_with_boxes = len(todo)
    if max_images is not None:
        todo = todo[:max_images]
    hits, energies, area_fracs, overlays = [], [], [], []
    used_layer = target_layer or DEFAULT_TARGET_LAYER
    for s in tqdm(range(0, len(todo), batch_size), desc="grad-cam", unit="batch", leave=False):
        chunk = todo[s:s + batch_size]
        x = torch.stack([ds[index[im.file_name]][0] for im in chunk]).to(device)
        res = gradcam(model, x, target_layer=target_layer)
        used_layer = res.target_layer
        for j, im in enumerate(chunk):
            hw = (im.height, im.width) if im.height and im.width else tuple(ds[index[im.file_name]][1]["orig_size_hw"].tolist())
            cam = cam_to_image(res.cams[j], hw, geometry.image_size, geometry.letterbox)
            hits.append(pointing_game_hit(cam, im.boxes_xyxy_px))
            energies.append(energy_in_boxes(cam, im.boxes_xyxy_px))
            area_fracs.append(float(_box_mask(hw, im.boxes_xyxy_px).mean()))
            if len(overlays) < n_overlays:
                from .evaluate import load_prepared_pixels

                pixels = load_prepared_pixels(data_dir, im.file_name)
                overlays.append({"overlay": overlay_heatmap(pixels, cam), "gt": im.boxes_xyxy_px,
                                 "title": f"{Path(im.file_name).name} ({im.label_name})"})
    e = np.array(energies, dtype=np.float64)
    summary = {
        "n_images": len(todo), "n_images_with_boxes": n_with_boxes, "target_layer": used_layer,
        "class": "malignant logit",
        "pointing_game": float(np.mean(hits)) if hits else math.nan,
        "energy_in_box": float(np.nanmean(e)) if np.isfinite(e).any() else math.nan,
        "box_area_fraction": float(np.mean(area_fracs)) if area_fracs else math.nan,
    }
    return LocalisationScores(summary, overlays)


def gradcam_files(model: nn.Module, config: dict, inputs: Sequence[str | Path], out_dir: str | Path, *,
                  device: str = "cpu", target_layer: str | None = None) -> list[dict]:
    """Grad-CAM overlays for raw files (prepared as in ``predict``), written as ``<stem>_gradcam.png`` on the
    prepared image (the view the model saw, before its resize). Returns one record per file (path or error).
    """
    from PIL import Image

    from .predict import collect_inputs, geometry_from_config, load_raw_input, prepare_options_from_config

    geometry = geometry_from_config(config)
    options = prepare_options_from_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for f in collect_inputs(inputs):
        try:
            raw = load_raw_input(f, options, geometry)
        except ValueError as e:
            records.append({"file_name": str(f), "error": str(e)})
            continue
        x, u16, prepared = raw.image, raw.pixels_u16, raw.prepared
        res = gradcam(model, x[None].to(device), target_layer=target_layer)
        cam = cam_to_image(res.cams[0], u16.shape, geometry.image_size, geometry.letterbox)
        p = float(torch.softmax(torch.as_tensor(res.logits[0]), 0)[1]) if res.logits.shape[1] > 1 else \
            float(torch.sigmoid(torch.as_tensor(res.logits[0, 0])))
        path = out / f"{f.stem}_gradcam.png"
        Image.fromarray(overlay_heatmap(prepared.pixels, cam)).save(path)
        records.append({"file_name": str(f), "overlay": str(path), "p_malignant": p,
                        "target_layer": res.target_layer, "prepared_transform": prepared.transform.to_dict()})
    return records
