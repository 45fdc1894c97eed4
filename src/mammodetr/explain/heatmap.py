"""Grad-CAM maps as pictures: mapped back onto the image the model saw, coloured, and written for raw files."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mammodetr.atomic import write_bytes_atomic
from mammodetr.data.geometry import ImageTransform
from mammodetr.data.model_input import InputGeometry, input_transform
from mammodetr.inference.decode import malignancy_probability
from mammodetr.inference.inputs import IMAGE_SUFFIXES, collect_inputs, load_raw_input
from mammodetr.inference.predictor import Predictor
from mammodetr.outputs import mirrored_paths, write_error

from .gradcam import gradcam

__all__ = ["cam_to_image", "cam_on_original", "overlay_heatmap", "explain_files"]


def cam_to_image(cam: np.ndarray, image_hw: tuple[int, int], geometry: InputGeometry) -> np.ndarray:
    """Map an (S, S) model-input CAM back onto the (H, W) prepared image (undoing resize / letterbox)."""
    t = input_transform(image_hw, geometry)
    x1, y1, x2, y2 = t.apply_boxes_xyxy(np.array([[0, 0, image_hw[1], image_hw[0]]], float))[0]
    region = cam[int(round(y1)):int(round(y2)), int(round(x1)):int(round(x2))]
    img = Image.fromarray(region.astype(np.float32), mode="F").resize((int(image_hw[1]), int(image_hw[0])),
                                                                      Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def cam_on_original(cam: np.ndarray, transform: ImageTransform, out_hw: tuple[int, int]) -> np.ndarray:
    """Map an (S, S) model-input CAM onto a grid of ``out_hw`` cells covering the ORIGINAL image (a raw file's
    pixels, e.g. a downscaled view of it).

    Each cell's centre goes through the recorded transform (crop, flip, resize, letterbox: original -> model
    input) and the CAM is sampled there bilinearly; cells the model never saw (cropped away) get 0. Every op is
    axis-aligned, so columns and rows are mapped separately.

    Args:
        cam: (S_h, S_w) map in model-input pixels.
        transform: original pixels -> model input (``RawInput.transform``).
        out_hw: (h, w) of the grid.

    Returns:
        (h, w) float32.
    """
    from scipy import ndimage

    (H, W), (h, w) = transform.input_size_hw, (int(out_hw[0]), int(out_hw[1]))
    xs, ys = (np.arange(w) + 0.5) * (W / w), (np.arange(h) + 0.5) * (H / h)
    zx, zy = np.zeros_like(xs), np.zeros_like(ys)
    x_in = transform.apply_boxes_xyxy(np.stack([xs, zx, xs, zx], 1))[:, 0]
    y_in = transform.apply_boxes_xyxy(np.stack([zy, ys, zy, ys], 1))[:, 1]
    gy, gx = np.meshgrid(y_in - 0.5, x_in - 0.5, indexing="ij")
    out = ndimage.map_coordinates(np.asarray(cam, np.float32), [gy, gx], order=1, mode="nearest")
    # What the model saw, in original pixels: the whole input mapped back, clipped at every step (so the
    # letterbox padding and what the crop removed are left out).
    x1, y1, x2, y2 = transform.invert_boxes_xyxy([[0, 0, cam.shape[1], cam.shape[0]]], clip=True)[0]
    seen = ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]
    return np.where(seen, out, 0.0).astype(np.float32)


def overlay_heatmap(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) image in [0, 1] + (H, W) CAM in [0, 1] -> (H, W, 3) uint8 overlay (jet colour map)."""
    import matplotlib  # optional (mammodetr[eval]); only pictures need it

    rgb = np.repeat(np.clip(pixels, 0, 1)[..., None], 3, axis=2)
    heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return (255 * ((1 - alpha) * rgb + alpha * heat)).astype(np.uint8)


def explain_files(predictor: Predictor, inputs: Sequence[str | Path], out_dir: str | Path, *,
                  target_layer: str | None = None) -> list[dict]:
    """Grad-CAM overlays for raw files (prepared as in ``predict``), written as ``<name>_gradcam.png`` on the
    prepared image (the view the model saw, before its resize), mirroring the inputs' folders (``a/case.dcm`` ->
    ``out/a/case_gradcam.png``) so no overlay replaces another. Returns one record per file (path or error).

    Raises:
        OutputWriteError: an overlay cannot be written (disk full, read-only); says how many were saved.
    """
    out = Path(out_dir)
    files = collect_inputs(inputs)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for f, path in zip(files, mirrored_paths(files, out, "_gradcam.png", IMAGE_SUFFIXES)):
        try:
            raw = load_raw_input(f, predictor.prepare_options, predictor.geometry)
        except ValueError as e:
            records.append({"file_name": str(f), "error": str(e)})
            continue
        res = gradcam(predictor.model, raw.image[None].to(predictor.device), target_layer=target_layer)
        cam = cam_to_image(res.cams[0], raw.pixels_u16.shape, predictor.geometry)
        p = float(malignancy_probability(torch.as_tensor(res.logits))[0])
        _save_png(overlay_heatmap(raw.prepared.pixels, cam), path, sum("overlay" in r for r in records), out)
        records.append({"file_name": str(f), "overlay": str(path), "p_malignant": p,
                        "target_layer": res.target_layer, "prepared_transform": raw.prepared.transform.to_dict()})
    return records


def _save_png(rgb: np.ndarray, path: Path, n_saved: int, out: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise write_error(path, exc, f"stopped after {n_saved} overlays were saved in {out}") from exc
