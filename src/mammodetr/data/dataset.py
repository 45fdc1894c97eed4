"""Training/evaluation dataset over a prepared folder (``mammodetr prepare`` + ``mammodetr split``).

Each item is ``(image (1, S, S) float32 in [0, 1], target)``; the target holds normalised ``boxes_cxcywh``
relative to the S x S model input, their malignancy, the image label and the (opaque) patient id. Loading is
fast because the resized S x S image (before augmentation) is cached as a small ``.npy`` beside the dataset
(``cache/<S>_<plain|letterbox>/``); the 16-bit PNG is decoded only the first time. The cache is checked
against the PNG's modification time and can be turned off (``cache=False``) or moved (``cache_dir``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mammodetr.data.split import check_no_leakage
from mammodetr.data.transforms import augment, base_transform, boxes_xyxy_to_cxcywh, get_preset

__all__ = ["MammoDataset", "collate", "load_png16"]

_PATHOLOGY_CODE = {"malignant": 1, "benign": 0}


def load_png16(path: str | Path) -> np.ndarray:
    """Read a prepared PNG as an (H, W) uint16 array (8-bit PNGs are scaled to 16 bits)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        arr = np.asarray(im)
    if arr.dtype == np.uint8:
        return arr.astype(np.uint16) * 257
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a grayscale PNG, got shape {arr.shape}")
    return arr.astype(np.uint16, copy=False)


class MammoDataset(torch.utils.data.Dataset):
    """Prepared mammograms with image labels and lesion boxes.

    Args:
        root: prepared dataset folder (holding ``annotations.json`` and ``images/``).
        split: "train" | "val" | "test", or None for every image.
        image_size: S, the side of the square model input.
        augment: preset name ("none", "light", "strong").
        letterbox: keep the aspect ratio and pad (True) or resize plainly (False, as in the paper).
        seed: augmentation seed (combined with the DataLoader worker's seed so workers differ).
        cache: cache the resized image as .npy for fast reloads.
        cache_dir: where the cache goes (default ``<root>/cache``).

    Raises:
        ValueError: no annotations.json, a split was asked for but none was assigned, unknown preset.
        LeakageError: a patient has images in two splits.
    """

    def __init__(self, root: str | Path, split: Optional[str] = None, image_size: int = 512, augment: str = "none",
                 letterbox: bool = False, seed: int = 0, cache: bool = True,
                 cache_dir: str | Path | None = None) -> None:
        self.root = Path(root)
        ann_path = self.root / "annotations.json"
        if not ann_path.is_file():
            raise ValueError(f"{ann_path}: not found; run `mammodetr prepare` first")
        data = json.loads(ann_path.read_text(encoding="utf-8"))
        all_images = data.get("images", [])
        check_no_leakage(all_images, str(ann_path))
        if split is not None:
            if split not in ("train", "val", "test"):
                raise ValueError(f"split must be train, val, test or None, got {split!r}")
            if not any(img.get("split") for img in all_images):
                raise ValueError(f"{ann_path}: no split assigned; run `mammodetr split --data {self.root}`")
            images = [img for img in all_images if img.get("split") == split]
        else:
            images = list(all_images)
        self.split = split
        self.image_size = int(image_size)
        self.preset = get_preset(augment)
        self.letterbox = bool(letterbox)
        self.seed = int(seed)
        self.prepare_options = data.get("info", {}).get("prepare", {})
        boxes: dict[int, list] = {img["id"]: [] for img in images}
        for ann in data.get("annotations", []):
            if ann["image_id"] in boxes:
                boxes[ann["image_id"]].append(ann)
        self.images = images
        self._boxes_xyxy = []
        self._box_malignant = []
        for img in images:
            anns = boxes[img["id"]]
            b = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=np.float32).reshape(-1, 4)
            self._boxes_xyxy.append(b)
            self._box_malignant.append(np.array([_PATHOLOGY_CODE.get(a.get("pathology"), -1) for a in anns],
                                                dtype=np.int64))
        self.cache_dir: Optional[Path] = None
        if cache:
            kind = "letterbox" if self.letterbox else "plain"
            self.cache_dir = Path(cache_dir) if cache_dir else self.root / "cache"
            self.cache_dir = self.cache_dir / f"{self.image_size}_{kind}"
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> list[int]:
        """Image labels (1 = malignant) in dataset order, e.g. for a balanced sampler."""
        return [int(img["label"] == "malignant") for img in self.images]

    @property
    def patient_ids(self) -> list[str]:
        return [str(img["patient_id"]) for img in self.images]

    def set_epoch(self, epoch: int) -> None:
        """Augmentations are a function of (seed, epoch, index) alone (see ``_generator``)."""
        self.epoch = int(epoch)

    def _generator(self, index: int) -> np.random.Generator:
        # Keyed on (seed, epoch, index) rather than on worker state, so an augmentation does not depend
        # on the number of workers or processes, persistent workers, or a resumed run.
        return np.random.default_rng([self.seed, self.epoch, index])

    def _base_image(self, index: int) -> np.ndarray:
        """The S x S uint16 model-input image before augmentation (cached)."""
        img = self.images[index]
        png = self.root / img["file_name"]
        cached = None
        if self.cache_dir is not None:
            cached = self.cache_dir / (Path(img["file_name"]).stem + ".npy")
            try:
                if cached.stat().st_mtime_ns >= png.stat().st_mtime_ns:
                    return np.load(cached)
            except (OSError, ValueError):
                pass
        u16 = load_png16(png)
        t = base_transform(u16.shape, self.image_size, self.letterbox)
        out = t.apply_image(u16.astype(np.float32))
        out = np.clip(out + 0.5, 0, 65535).astype(np.uint16)
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.tmp.npy")
                np.save(tmp, out)
                os.replace(tmp, cached)
            except OSError as exc:
                warnings.warn(f"{self.cache_dir}: cannot write the image cache ({exc}); loading uncached")
                self.cache_dir = None
        return out

    def __getitem__(self, index: int):
        img = self.images[index]
        h, w = int(img["height"]), int(img["width"])
        image = torch.from_numpy(self._base_image(index).astype(np.float32)).mul_(1.0 / 65535.0)[None]
        t = base_transform((h, w), self.image_size, self.letterbox)
        boxes = torch.from_numpy(t.apply_boxes_xyxy(self._boxes_xyxy[index]).astype(np.float32))
        malignant = torch.from_numpy(self._box_malignant[index])
        if self.preset.name != "none":
            image, boxes, keep = augment(image, boxes, self.preset, self._generator(index))
            malignant = malignant[keep]
        s = float(self.image_size)
        boxes_cxcywh = (boxes_xyxy_to_cxcywh(boxes) / s).clamp(0.0, 1.0).to(torch.float32).reshape(-1, 4)
        target = {
            "boxes_cxcywh": boxes_cxcywh,
            "box_malignant": malignant.to(torch.int64),
            "label": torch.tensor(int(img["label"] == "malignant"), dtype=torch.int64),
            "image_id": int(img["id"]),
            "patient_id": str(img["patient_id"]),
            "file_name": str(img["file_name"]),
            "orig_size_hw": torch.tensor([h, w], dtype=torch.int64),
        }
        return image.contiguous(), target


def collate(batch):
    """Stack images into (B, 1, S, S); targets stay a list of dicts (their box counts differ)."""
    images = torch.stack([item[0] for item in batch])
    return images, [item[1] for item in batch]
