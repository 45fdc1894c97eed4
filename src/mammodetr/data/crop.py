"""Find the breast in a mammogram, and which image side it lies on.

Algorithm (all on a block-averaged copy whose long side is at most ``work_size`` pixels, so a 3000x2400
image costs a few tens of milliseconds): percentile clip -> Gaussian blur -> Otsu threshold -> largest
connected component -> its bounding box, scaled back to full resolution so that it covers every full-size
pixel of the component's blocks -> plus a margin. When the component is implausible (empty, tiny, or the
whole image) the whole image is returned with ``fallback=True`` and the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WORK_SIZE = 256


@dataclass(frozen=True)
class CropResult:
    """Breast bounding box.

    Attributes:
        box_xyxy: ``(x1, y1, x2, y2)`` full-resolution pixels, end-exclusive (``pixels[y1:y2, x1:x2]``).
        fallback: True when no plausible breast region was found and the box is the whole image.
        reason: Why the fallback was taken ("" when not).
        area_fraction: Fraction of the image covered by the breast component (0 on fallback without one).
        side: :func:`breast_side` of the same image, computed from the same mask (saves a second pass).
    """

    box_xyxy: tuple[int, int, int, int]
    fallback: bool
    reason: str = ""
    area_fraction: float = 0.0
    side: str | None = None


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of a ``bins``-bin histogram.

    Args:
        values: Any array of finite numbers.
        bins: Histogram bins over ``[min, max]``.

    Returns:
        A threshold ``t``; foreground is ``values > t``. For a constant array, that constant.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)  # pixels at or below bin k
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    k = int(np.argmax(between[:-1]))  # cutting after the last bin would leave an empty class
    return float(edges[k + 1])


def _block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks; the last row/column of blocks may be partial."""
    h, w = pixels.shape
    if factor == 1:
        return pixels.astype(np.float32, copy=False)
    rows = np.arange(0, h, factor)
    cols = np.arange(0, w, factor)
    sums = np.add.reduceat(np.add.reduceat(pixels, rows, axis=0, dtype=np.float32), cols, axis=1, dtype=np.float32)
    counts = np.minimum(factor, h - rows)[:, None] * np.minimum(factor, w - cols)[None, :]
    return sums / counts.astype(np.float32)


def breast_mask(pixels: np.ndarray, *, work_size: int = WORK_SIZE) -> tuple[np.ndarray, int, str]:
    """Foreground mask of the largest bright component on the downsampled image.

    Args:
        pixels: ``(H, W)`` image, brighter = denser (as returned by ``read_image``).
        work_size: Long side of the working copy.

    Returns:
        ``(mask bool (h, w), factor, problem)``: the component on the working grid (cell ``(i, j)`` covers
        full-size rows ``[i*factor, (i+1)*factor)``, columns likewise), the block size, and a non-empty
        ``problem`` string when no component was found.
    """
    from scipy import ndimage

    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ValueError(f"expected a (H, W) image, got shape {pixels.shape}")
    factor = max(1, math.ceil(max(pixels.shape) / work_size))
    small = _block_mean(np.asarray(pixels), factor).astype(np.float64)
    if not np.isfinite(small).all():
        return np.zeros(small.shape, bool), factor, "image has non-finite values"
    lo, hi = np.percentile(small, [0.5, 99.5])
    if hi <= lo:
        return np.zeros(small.shape, bool), factor, "image is (nearly) constant"
    small = (np.clip(small, lo, hi) - lo) / (hi - lo)  # clip burned-in labels and dead pixels
    sigma = max(1.0, min(small.shape) / 128)
    small = ndimage.gaussian_filter(small, sigma=sigma)
    t = otsu_threshold(small)
    fg = small > t
    labels, n = ndimage.label(fg)
    if n == 0:
        return fg, factor, "nothing above the Otsu threshold"
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes))
    if sizes[largest] < 0.5 * sizes.sum():
        # A breast is one connected region; many comparable blobs mean texture or noise, not a breast.
        return np.zeros(small.shape, bool), factor, (
            f"bright region is fragmented (largest of {n} components holds {sizes[largest] / sizes.sum():.0%})"
        )
    return labels == (largest + 1), factor, ""


def find_breast(
    pixels: np.ndarray, *, margin: float = 0.02, min_area: float = 0.03, max_area: float = 0.97
) -> CropResult:
    """Bounding box of the breast, or the whole image with a reason.

    Args:
        pixels: ``float (H, W)`` image in ``[0, 1]``, brighter = denser.
        margin: Added on each side as a fraction of the image's height (y) and width (x), then clipped.
        min_area: A component covering less than this fraction of the image is implausible.
        max_area: A component covering more than this fraction means thresholding failed.

    Returns:
        CropResult with an end-exclusive ``box_xyxy`` in full-resolution pixels.
    """
    h, w = pixels.shape
    whole = (0, 0, int(w), int(h))
    mask, factor, problem = breast_mask(pixels)
    side = _side(pixels, mask, problem)
    if problem:
        return CropResult(whole, True, problem, side=side)
    # Area measured in full-size pixels (edge blocks may be partial).
    hs, ws = mask.shape
    row_px = np.minimum(factor, h - np.arange(hs) * factor)
    col_px = np.minimum(factor, w - np.arange(ws) * factor)
    area = float(row_px @ mask @ col_px) / (h * w)
    if area < min_area:
        return CropResult(whole, True, f"largest bright component covers only {area:.1%} of the image", area, side)
    if area > max_area:
        reason = f"bright component covers {area:.1%} of the image (no background found)"
        return CropResult(whole, True, reason, area, side)
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if factor > 1:
        # Blocks only partly covered by the breast (thin skin edge, nipple tip) can average below the
        # threshold: widen by one block so the box errs on the side of keeping tissue.
        ys = np.array([max(0, ys[0] - 1), min(hs - 1, ys[-1] + 1)])
        xs = np.array([max(0, xs[0] - 1), min(ws - 1, xs[-1] + 1)])
    # Block (i, j) covers full rows [i*f, min((i+1)*f, h)): the scaled box contains the component.
    x1, x2 = int(xs[0]) * factor, min(w, (int(xs[-1]) + 1) * factor)
    y1, y2 = int(ys[0]) * factor, min(h, (int(ys[-1]) + 1) * factor)
    mx, my = math.ceil(margin * w), math.ceil(margin * h)
    box = (max(0, x1 - mx), max(0, y1 - my), min(w, x2 + mx), min(h, y2 + my))
    return CropResult(box, False, "", area, side)


def breast_side(pixels: np.ndarray) -> str:
    """Which side of the image the breast lies on (the chest-wall side).

    The breast is attached to the chest wall at one vertical image edge; that edge's columns are the most
    covered by the breast mask. Ties (e.g. no mask) fall back to the brighter half of the image.

    Args:
        pixels: ``float (H, W)``, brighter = denser.

    Returns:
        ``"L"`` if the chest wall is on the image's left (breast on the left), else ``"R"``.
    """
    mask, _, problem = breast_mask(pixels)
    return _side(pixels, mask, problem)


def _side(pixels: np.ndarray, mask: np.ndarray, problem: str) -> str:
    if not problem:
        cols = mask.mean(axis=0)
        k = max(1, cols.size // 10)
        left, right = float(cols[:k].mean()), float(cols[-k:].mean())
        if abs(left - right) > 1e-6:
            return "L" if left > right else "R"
    half = pixels.shape[1] // 2
    left_sum = float(np.asarray(pixels[:, :half], dtype=np.float64).sum())
    right_sum = float(np.asarray(pixels[:, pixels.shape[1] - half :], dtype=np.float64).sum())
    return "L" if left_sum >= right_sum else "R"
