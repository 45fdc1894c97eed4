"""Training/evaluation dataset over a prepared folder (``mammodetr prepare`` + ``mammodetr split``).

Each item is ``(image (1, S, S) float32 in [0, 1], target)``; the target holds normalised ``boxes_cxcywh``
relative to the S x S model input, their malignancy, the image label and the (opaque) patient id. Loading is
fast because the resized S x S image (before augmentation) is cached as a small ``.npy`` beside the dataset
(``cache/<S>_<plain|letterbox>/``); the 16-bit PNG is decoded only the first time. The cache is checked
against the PNG's modification time and can be turned off (``cache=False``) or moved (``cache_dir``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mammodetr.data.boxes import box_xyxy_to_cxcywh
from mammodetr.data.ground_truth import ANNOTATIONS, boxes_by_image, label_index, read_annotations, xyxy
from mammodetr.data.model_input import InputGeometry, input_transform, resize_to_input, to_tensor
from mammodetr.data.png16 import read_png16
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.data.split import check_no_leakage
from mammodetr.data.transforms import augment, get_preset

__all__ = ["MammoDataset", "collate"]

_PATHOLOGY_CODE = {"malignant": 1, "benign": 0}


class MammoDataset(torch.utils.data.Dataset):
    """Prepared mammograms with image labels and lesion boxes.

    Args:
        root: prepared dataset folder (holding ``annotations.json`` and ``images/``).
        split: "train" | "val" | "test", or None for every image.
        image_size: S, the side of the square model input.
        augment: preset name ("none", "light", "strong", "mammo").
        letterbox: keep the aspect ratio and pad (True) or resize plainly (False, as in the paper).
        seed: augmentation seed; an image's augmentation depends on (seed, epoch, index) only.
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
        data = read_annotations(self.root)
        all_images = data.get("images", [])
        check_no_leakage(all_images, str(self.root / ANNOTATIONS))
        self.images = self._select(all_images, split)
        self.split = split
        self.geometry = InputGeometry(int(image_size), bool(letterbox))
        self.preset = get_preset(augment)
        self.seed = int(seed)
        prepare = data.get("info", {}).get("prepare")
        self.prepare_options: Optional[PrepareOptions] = PrepareOptions.from_dict(prepare) if prepare else None
        anns = boxes_by_image(data)
        self._boxes_xyxy = [xyxy(anns.get(int(img["id"]), [])).astype(np.float32) for img in self.images]
        self._box_malignant = [
            np.array([_PATHOLOGY_CODE.get(a.get("pathology"), -1) for a in anns.get(int(img["id"]), [])],
                     dtype=np.int64)
            for img in self.images
        ]
        self._labels = [label_index(img.get("label"), f"{self.root / ANNOTATIONS}: {img.get('file_name')}")[0]
                        for img in self.images]
        self.cache_dir: Optional[Path] = None
        if cache:
            kind = "letterbox" if letterbox else "plain"
            self.cache_dir = (Path(cache_dir) if cache_dir else self.root / "cache") / f"{int(image_size)}_{kind}"
        self.epoch = 0
        self.repeat = 0

    def _select(self, all_images: list[dict], split: Optional[str]) -> list[dict]:
        if split is None:
            return list(all_images)
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val, test or None, got {split!r}")
        if not any(img.get("split") for img in all_images):
            raise ValueError(f"{self.root / ANNOTATIONS}: no split assigned; run `mammodetr split --data {self.root}`")
        return [img for img in all_images if img.get("split") == split]

    @property
    def image_size(self) -> int:
        return self.geometry.image_size

    @property
    def letterbox(self) -> bool:
        return self.geometry.letterbox

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> list[int]:
        """Image labels (1 = malignant) in dataset order, e.g. for a balanced sampler."""
        return list(self._labels)

    @property
    def patient_ids(self) -> list[str]:
        return [str(img["patient_id"]) for img in self.images]

    def set_epoch(self, epoch: int, repeat: int = 0) -> None:
        """Augmentations are a function of (seed, epoch, index) alone (see ``_generator``); ``repeat`` k > 0 marks
        the k-th repeat of an image within an epoch (sampling with replacement), which gets its own draw."""
        self.epoch = int(epoch)
        self.repeat = int(repeat)

    def _generator(self, index: int) -> np.random.Generator:
        # Keyed on (seed, epoch, index) rather than on worker state, so an augmentation does not depend
        # on the number of workers or processes, persistent workers, or a resumed run.
        key = [self.seed, self.epoch, index] + ([self.repeat] if self.repeat else [])
        return np.random.default_rng(key)

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
        out, _ = resize_to_input(read_png16(png), self.geometry)
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.tmp.npy")
                np.save(tmp, out)
                os.replace(tmp, cached)
            except OSError as exc:
                warnings.warn(f"{self.cache_dir}: cannot write the image cache ({exc}); loading uncached", stacklevel=2)
                self.cache_dir = None
        return out

    def __getitem__(self, index: int):
        img = self.images[index]
        h, w = int(img["height"]), int(img["width"])
        image = to_tensor(self._base_image(index))
        t = input_transform((h, w), self.geometry)
        boxes = torch.from_numpy(t.apply_boxes_xyxy(self._boxes_xyxy[index]).astype(np.float32))
        malignant = torch.from_numpy(self._box_malignant[index])
        if self.preset.name != "none":
            image, boxes, keep = augment(image, boxes, self.preset, self._generator(index))
            malignant = malignant[keep]
        s = float(self.image_size)
        boxes_cxcywh = (box_xyxy_to_cxcywh(boxes) / s).clamp(0.0, 1.0).to(torch.float32).reshape(-1, 4)
        target = {
            "boxes_cxcywh": boxes_cxcywh,
            "box_malignant": malignant.to(torch.int64),
            "label": torch.tensor(self._labels[index], dtype=torch.int64),
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
