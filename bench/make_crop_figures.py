"""The before/after pictures of background masking in docs/data_io.md, made from synthetic mammograms.

Each figure is one row of four panels: the raw image (film edge, burnt-in label, lead marker), the breast region
found by ``breast_region`` (red outline; film-edge bands it removed in blue), the prepared image without masking
(``--no-mask-background``: the crop alone keeps part of the artefacts) and with masking (the default).

Usage: python bench/make_crop_figures.py [--out docs/images]
Writes mask_cc.png, mask_mlo.png and mask_film_edge.png (each well under 150 KB) and prints a line per figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from mammodetr.data.crop import breast_region
from mammodetr.data.preprocess import PrepareOptions, preprocess_pixels
from mammodetr.data.synth import LesionSpec, SynthOptions, render_mammogram

PANEL_H = 256
ARTEFACTS = SynthOptions(film_edge=1.0, label_block=1.0)


def _rgb(gray: np.ndarray, height: int = PANEL_H) -> np.ndarray:
    """``float (H, W)`` in [0, 1] -> ``uint8 (height, w, 3)``."""
    img = Image.fromarray(np.clip(gray * 255 + 0.5, 0, 255).astype(np.uint8))
    w = max(1, round(gray.shape[1] * height / gray.shape[0]))
    return np.repeat(np.asarray(img.resize((w, height), Image.LANCZOS))[..., None], 3, axis=2)


def _outlined(pixels: np.ndarray) -> tuple[np.ndarray, dict]:
    """The raw image with the breast region's outline in red and removed film-edge bands tinted blue."""
    from scipy import ndimage

    region = breast_region(pixels)
    small = _rgb(pixels).astype(np.float32)
    if region.mask is None:
        return small.astype(np.uint8), {"reason": region.reason}
    mask = np.asarray(Image.fromarray(region.mask.astype(np.uint8) * 255).resize(small.shape[1::-1])) > 127
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
    small[edge] = (230, 40, 40)
    return small.astype(np.uint8), {"film_edges": region.film_edges, "area": round(region.area_fraction, 3)}


def _figure(pixels: np.ndarray, boxes: list, path: Path) -> str:
    outlined, info = _outlined(pixels)
    unmasked = preprocess_pixels(pixels, PrepareOptions(mask_background=False, max_side=None), keep_boxes_xyxy=boxes)
    masked = preprocess_pixels(pixels, PrepareOptions(max_side=None), keep_boxes_xyxy=boxes)
    gap = np.full((PANEL_H, 6, 3), 255, np.uint8)
    row = np.concatenate([_rgb(pixels), gap, outlined, gap, _rgb(unmasked.pixels), gap, _rgb(masked.pixels)], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).quantize(64).save(path, optimize=True)
    return (f"{path} ({path.stat().st_size / 1024:.0f} KB): region {info}, masked "
            f"{masked.background_mask['fraction']:.1%} of the crop")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/images", help="output folder (default docs/images)")
    out = Path(p.parse_args().out)
    lesion = [LesionSpec("spiculated", 0.5, 0.2, 0.16, 0.3, seed=5)]
    cc = render_mammogram(np.random.default_rng(11), (640, 512), view="CC", laterality="L", density=0.4,
                          lesions=lesion, options=ARTEFACTS)
    print(_figure(cc.pixels, cc.boxes_xyxy_px.tolist(), out / "mask_cc.png"))
    mlo = render_mammogram(np.random.default_rng(12), (640, 512), view="MLO", laterality="R", density=0.6,
                           options=ARTEFACTS)
    print(_figure(mlo.pixels, [], out / "mask_mlo.png"))
    # Film edges across the top and bottom, touching an MLO breast: the crop cannot leave them out, masking does.
    touching = render_mammogram(np.random.default_rng(13), (640, 512), view="MLO", laterality="L", density=0.3,
                                options=SynthOptions(film_edge=0.0, label_block=1.0)).pixels
    touching[:20], touching[-14:] = 0.9, 0.93
    print(_figure(touching, [], out / "mask_film_edge.png"))


if __name__ == "__main__":
    main()
