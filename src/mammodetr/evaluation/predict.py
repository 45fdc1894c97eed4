"""Prediction with a trained model: raw files (DICOM/PNG/TIFF, prepared like the training data) or the images
of a prepared dataset folder.

Raw inputs go through the checkpoint's own preparation (``config["data"]["prepare"]``: breast crop, side flip,
long-side cap), then the model's resize/letterbox to ``S x S``. Predicted boxes are mapped back through both
recorded transforms, so they are in the pixels of the file that was given. A file that fails is reported as
``{"file_name", "error"}`` and the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .predictions import Prediction, PredictionError, PredictionSet

__all__ = ["ModelGeometry", "geometry_from_config", "collect_inputs", "to_model_input", "outputs_to_predictions",
           "predict_files", "predict_prepared", "draw_overlay"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".tif", ".tiff", ".pgm", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class ModelGeometry:
    """How a prepared image becomes the model input."""

    image_size: int = 512
    letterbox: bool = False


def geometry_from_config(config: dict) -> ModelGeometry:
    data = config.get("data", {}) or {}
    return ModelGeometry(int(data.get("image_size", 512)), bool(data.get("letterbox", False)))


def _is_dicom_without_suffix(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def collect_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into image files, sorted within each folder.

    Raises:
        ValueError: an input does not exist.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and (f.suffix.lower() in IMAGE_SUFFIXES or (not f.suffix and _is_dicom_without_suffix(f))):
                    files.append(f)
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    return files


def to_model_input(pixels_u16: np.ndarray, geometry: ModelGeometry) -> tuple[torch.Tensor, object]:
    """Prepared 16-bit image (H, W) -> model input (1, S, S) float in [0, 1] and the recorded transform.

    Mirrors ``MammoDataset``: resize the uint16 values as float, round back to uint16, scale by 1/65535, so a
    raw file gives the same tensor as its prepared PNG does in training.
    """
    from mammodetr.data.transforms import base_transform

    t = base_transform(pixels_u16.shape, geometry.image_size, geometry.letterbox)
    out = t.apply_image(pixels_u16.astype(np.float32))
    out = np.clip(out + 0.5, 0, 65535).astype(np.uint16)
    return torch.from_numpy(out.astype(np.float32) / 65535.0)[None], t


def outputs_to_predictions(outputs: dict, image_hw: Sequence[tuple[int, int]], geometry: ModelGeometry,
                           names: Sequence[str], inverse: Sequence | None = None) -> list[Prediction]:
    """Model outputs of a batch -> predictions with boxes in prepared pixels, or in original pixels when
    ``inverse`` (one ``ImageTransform`` original->prepared per image) is given.
    """
    from mammodetr.data.transforms import model_boxes_to_image
    from mammodetr.models.postprocess import malignancy_probability

    p = malignancy_probability(outputs["image_logits"].detach()).cpu().numpy()
    scores = outputs["pred_obj_logits"].detach().float().sigmoid().cpu().numpy()
    boxes = outputs["pred_boxes"].detach().float().cpu()
    preds = []
    for i, name in enumerate(names):
        order = np.argsort(-scores[i], kind="mergesort")
        b = model_boxes_to_image(boxes[i], tuple(image_hw[i]), geometry.image_size, geometry.letterbox)
        b = b.numpy().astype(np.float64)[order]
        if inverse is not None:
            t = inverse[i]
            b = t.invert_boxes_xyxy(b)
            h, w = t.input_size_hw
            b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
            b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
        preds.append(Prediction(str(name), float(p[i]), b, scores[i][order].astype(np.float64)))
    return preds


@dataclass
class RawInput:
    """A raw file after the checkpoint's preprocessing: what ``predict`` and ``gradcam`` feed the model."""

    image: torch.Tensor  # (1, S, S) model input
    pixels_u16: np.ndarray  # prepared image, 16-bit
    prepared: object  # PreparedImage (pixels, transform original->prepared, ...)
    original: np.ndarray  # the file's own pixels, float in [0, 1] (for overlays)


def prepare_options_from_config(config: dict):
    from mammodetr.data.preprocess import PrepareOptions

    prepare = (config.get("data", {}) or {}).get("prepare")
    if not prepare:
        log.warning("the checkpoint config has no data.prepare; raw inputs get the default preparation, which "
                    "may differ from the training data's")
    return PrepareOptions.from_dict(dict(prepare or {}))


def load_raw_input(path: Path, options, geometry: ModelGeometry) -> RawInput:
    """Read a raw DICOM/PNG/TIFF and apply the training preprocessing (crop, flip, cap) and model resize.

    Raises:
        ValueError: naming the file, whatever the reader raised.
    """
    from mammodetr.data.io import read_image
    from mammodetr.data.preprocess import preprocess_pixels

    try:
        loaded = read_image(path, frame=options.frame, allow_for_processing=options.allow_for_processing,
                            max_pixels=options.max_pixels)
        prepared = preprocess_pixels(loaded.pixels, options, laterality=loaded.laterality, view=loaded.view,
                                     meta=loaded.meta)
        u16 = np.clip(prepared.pixels * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
        x, _ = to_model_input(u16, geometry)
    except Exception as e:  # noqa: BLE001 - one bad file is reported and skipped, whatever the reader raised
        msg = str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"
        raise ValueError(msg if str(path) in msg else f"{path}: {msg}") from e
    return RawInput(x, u16, prepared, loaded.pixels)


@torch.no_grad()
def _forward(model: torch.nn.Module, batch: list[torch.Tensor], device: str) -> dict:
    was_training = model.training
    model.eval()
    try:
        return model(torch.stack(batch).to(device))
    finally:
        model.train(was_training)


def predict_files(
    model: torch.nn.Module,
    config: dict,
    inputs: Iterable[str | Path],
    *,
    batch_size: int = 8,
    device: str = "cpu",
    overlay_dir: str | Path | None = None,
    progress: bool = True,
) -> list[Prediction | PredictionError]:
    """Predict raw image files; boxes come back in each file's own pixels.

    Args:
        model: the multi-task model (output contract: ``image_logits``, ``pred_boxes``, ``pred_obj_logits``).
        config: checkpoint config (``config["data"]``: ``image_size``, ``letterbox``, ``prepare``).
        inputs: files or folders.
        batch_size: images per forward pass.
        device: torch device.
        overlay_dir: write ``<stem>.png`` with the boxes and scores drawn on the original image.
        progress: show a tqdm bar.

    Returns:
        one entry per file, in input order: a ``Prediction`` or a ``PredictionError``.
    """
    from tqdm import tqdm

    files = collect_inputs(inputs)
    geometry = geometry_from_config(config)
    options = prepare_options_from_config(config)
    results: dict[int, Prediction | PredictionError] = {}
    pending: list[tuple[int, torch.Tensor, tuple[int, int], object, np.ndarray | None]] = []

    def flush() -> None:
        if not pending:
            return
        idx = [p[0] for p in pending]
        try:
            out = _forward(model, [p[1] for p in pending], device)
            preds = outputs_to_predictions(out, [p[2] for p in pending], geometry, [str(files[i]) for i in idx],
                                           inverse=[p[3] for p in pending])
        except Exception as e:  # noqa: BLE001 - a failing batch must not end the run; every file gets the error
            for i in idx:
                results[i] = PredictionError(str(files[i]), f"model failed: {type(e).__name__}: {e}")
            pending.clear()
            return
        for (i, _, _, _, original), pred in zip(pending, preds):
            results[i] = pred
            if overlay_dir is not None and original is not None:
                try:
                    draw_overlay(original, pred, Path(overlay_dir) / f"{files[i].stem}.png")
                except OSError as e:
                    log.warning("%s: overlay not written (%s)", files[i], e)
        pending.clear()

    for i, f in enumerate(tqdm(files, desc="predict", unit="img", disable=not progress)):
        try:
            raw = load_raw_input(f, options, geometry)
        except ValueError as e:
            results[i] = PredictionError(str(f), str(e))
            log.warning("%s", results[i].error)
            continue
        x, u16, prepared = raw.image, raw.pixels_u16, raw.prepared
        pending.append((i, x, u16.shape, prepared.transform, raw.original if overlay_dir is not None else None))
        if len(pending) >= batch_size:
            flush()
    flush()
    return [results[i] for i in range(len(files))]


def predict_prepared(
    model: torch.nn.Module,
    config: dict,
    data_dir: str | Path,
    file_names: Sequence[str],
    *,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> PredictionSet:
    """Predict images of a prepared dataset folder; boxes in the prepared images' pixels.

    Uses ``MammoDataset`` (no augmentation) so the input is exactly what validation saw in training.
    """
    from tqdm import tqdm

    from mammodetr.data.dataset import MammoDataset

    geometry = geometry_from_config(config)
    ds = MammoDataset(data_dir, split=None, image_size=geometry.image_size, augment="none",
                      letterbox=geometry.letterbox, cache=False)
    index = {img["file_name"]: i for i, img in enumerate(ds.images)}
    by_name: dict[str, Prediction] = {}
    errors: list[PredictionError] = []
    batch: list[tuple[str, torch.Tensor, tuple[int, int]]] = []

    def flush() -> None:
        if not batch:
            return
        out = _forward(model, [b[1] for b in batch], device)
        for pred in outputs_to_predictions(out, [b[2] for b in batch], geometry, [b[0] for b in batch]):
            by_name[pred.file_name] = pred
        batch.clear()

    for name in tqdm(file_names, desc="predict", unit="img", disable=not progress):
        if name not in index:
            errors.append(PredictionError(name, f"{name}: not in {data_dir}/annotations.json"))
            continue
        try:
            image, target = ds[index[name]]
        except (ValueError, OSError) as e:
            errors.append(PredictionError(name, f"{Path(data_dir) / name}: {e}"))
            continue
        batch.append((name, image, tuple(int(v) for v in target["orig_size_hw"])))
        if len(batch) >= batch_size:
            flush()
    flush()
    return PredictionSet(by_name, errors)


def draw_overlay(pixels: np.ndarray, pred: Prediction, path: str | Path, max_side: int = 1024,
                 min_score: float = 0.0) -> Path:
    """Save the image with the predicted boxes and scores drawn (long side scaled to ``max_side``)."""
    from PIL import Image, ImageDraw

    h, w = pixels.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for b, s in zip(pred.boxes_xyxy_px, pred.scores):
        if s < min_score:
            continue
        x1, y1, x2, y2 = (float(v) * scale for v in b)
        draw.rectangle([x1, y1, x2, y2], outline=(255, 80, 0), width=2)
        draw.text((x1 + 2, max(0.0, y1 - 12)), f"{s:.2f}", fill=(255, 80, 0))
    draw.text((4, 4), f"p_malignant {pred.p_malignant:.2f}", fill=(255, 255, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
