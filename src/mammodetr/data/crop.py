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


def _working_copy(pixels: np.ndarray, work_size: int) -> tuple[np.ndarray, int, str]:
    """The block-averaged, percentile-clipped copy every mask is computed on (before the blur).

    Returns:
        ``(small float64 (h, w) in [0, 1], factor, problem)``; ``problem`` is non-empty when the image cannot
        hold a breast (non-finite or constant values).
    """
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ValueError(f"expected a (H, W) image, got shape {pixels.shape}")
    factor = max(1, math.ceil(max(pixels.shape) / work_size))
    small = _block_mean(np.asarray(pixels), factor).astype(np.float64)
    if not np.isfinite(small).all():
        return small, factor, "image has non-finite values"
    lo, hi = np.percentile(small, [0.5, 99.5])
    if hi <= lo:
        return small, factor, "image is (nearly) constant"
    return (np.clip(small, lo, hi) - lo) / (hi - lo), factor, ""  # clip burned-in labels and dead pixels


def _blurred(small: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(small, sigma=max(1.0, min(small.shape) / 128))


def _largest_component(fg: np.ndarray) -> tuple[np.ndarray, str]:
    """The largest connected component of ``fg``, or an empty mask and why it is not a breast."""
    from scipy import ndimage

    labels, n = ndimage.label(fg)
    if n == 0:
        return fg, "nothing above the Otsu threshold"
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes))
    if sizes[largest] < 0.5 * sizes.sum():
        # A breast is one connected region; many comparable blobs mean texture or noise, not a breast.
        return np.zeros(fg.shape, bool), (
            f"bright region is fragmented (largest of {n} components holds {sizes[largest] / sizes.sum():.0%})"
        )
    return labels == (largest + 1), ""


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
    small, factor, problem = _working_copy(pixels, work_size)
    if problem:
        return np.zeros(small.shape, bool), factor, problem
    small = _blurred(small)
    mask, problem = _largest_component(small > otsu_threshold(small))
    return mask, factor, problem


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


@dataclass(frozen=True)
class BreastRegion:
    """The breast pixel by pixel: what background masking keeps.

    Attributes:
        mask: ``bool (H, W)`` full-resolution breast region (skin line, pectoral muscle and a margin included);
            None when no plausible region was found.
        reason: Why there is no mask ("" when there is one).
        area_fraction: Fraction of the image the region covers (0 without one).
        film_edges: Image sides ("top", "bottom", "left", "right") where a bright film-edge band was found; it is
            never part of the region, even where it touches the breast.
    """

    mask: np.ndarray | None
    reason: str = ""
    area_fraction: float = 0.0
    film_edges: tuple[str, ...] = ()


# A film edge is a strip along the border: never wider than this fraction of the image.
_BAND_MAX = 0.12
# A hole in the breast region larger than this fraction of the image is not filled.
_MAX_HOLE = 0.02
# A band line is bright (its 5th percentile above the 90th of the tissue inside the border frame) and flat (5th-95th
# percentile spread below this, on the clipped [0, 1] scale): breast tissue along a whole image side is neither.
_BAND_SPREAD = 0.15


def _band_depth(lines: np.ndarray, t: float, t_band: float) -> int:
    """How many lines, counted from the border (``lines[0]``), belong to a film-edge band (0 = none).

    Empty lines at the very border (the scanner bed beyond the film) are skipped first; the band is the run of
    bright, flat lines after them, and it must end within ``_BAND_MAX`` of the side: a bright flat run that goes
    on is tissue (or whatever it is) reaching the border, not a strip of film, and is never cut.
    """
    limit = max(1, int(_BAND_MAX * len(lines)))
    k = 0
    while k < limit and np.quantile(lines[k], 0.95) <= t:
        k += 1
    start = k
    while k < limit:
        q05, q95 = np.quantile(lines[k], [0.05, 0.95])
        if q05 < t_band or q95 - q05 > _BAND_SPREAD:
            break
        k += 1
    return 0 if k in (start, limit) else k


def _from_border(a: np.ndarray, side: str) -> np.ndarray:
    """A view of ``a`` whose rows are its lines parallel to ``side``, the border line first."""
    return {"top": a, "bottom": a[::-1], "left": a.T, "right": a.T[::-1]}[side]


def film_edge_bands(small: np.ndarray, t: float) -> tuple[np.ndarray, dict[str, int]]:
    """Bright bands along the image border (film edges) on a working copy.

    Args:
        small: The working copy, clipped to [0, 1] and not blurred (so a band's inner edge stays sharp).
        t: The Otsu threshold of the blurred copy.

    Returns:
        ``(band bool (h, w), {side: depth in lines})``.
    """
    band = np.zeros(small.shape, bool)
    h, w = small.shape
    dy, dx = max(1, int(_BAND_MAX * h)), max(1, int(_BAND_MAX * w))
    inner = small[dy:-dy, dx:-dx]
    tissue = inner[inner > t]  # the reference brightness, away from the border where bands would weigh in
    if not tissue.size:
        return band, {}
    t_band = max(t, float(np.quantile(tissue, 0.9)))
    depths = {}
    for side in ("top", "bottom", "left", "right"):
        depth = _band_depth(_from_border(small, side), t, t_band)
        if depth:
            _from_border(band, side)[:depth] = True  # a view of ``band``: marks the band's lines in place
            depths[side] = depth
    return band, depths


def _full_resolution_bands(pixels: np.ndarray, depths: dict[str, int], factor: int) -> np.ndarray:
    """The bands at full resolution, their inner edge found line by line.

    The working-grid band's last block and the block after it may straddle the edge: there, a full-resolution
    line belongs to the band when its 5th percentile is at least 40 % of the band's own (its soft, half-bright
    inner edge included); a line partly over the breast or the background is not.
    """
    band = np.zeros(pixels.shape, bool)
    for side, depth in depths.items():
        lines = _from_border(pixels, side)
        sure = max(1, (depth - 1) * factor)  # lines of whole band blocks
        floor = float(np.median(np.quantile(lines[:sure], 0.05, axis=1)))
        n, limit = (depth - 1) * factor, min(len(lines), (depth + 1) * factor)
        while n < limit and float(np.quantile(lines[n], 0.05)) >= 0.4 * floor:
            n += 1
        _from_border(band, side)[:n] = True
    return band


def _disk(r: int) -> np.ndarray:
    yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
    return xx * xx + yy * yy <= r * r


def _grow(small: np.ndarray, core: np.ndarray, t: float, allowed: np.ndarray) -> np.ndarray:
    """The core plus the faint pixels connected to it (hysteresis), holes filled.

    The skin line and a thin breast edge fade below the Otsu threshold; everything above a low threshold (30 % of
    the way from the background level to ``t``) that touches the core belongs to the breast too.
    """
    from scipy import ndimage

    background = small[~(small > t) & allowed]
    level = float(np.median(background)) if background.size else 0.0
    labels, _ = ndimage.label((small > level + 0.3 * (t - level)) & allowed)
    touching = np.unique(labels[core])
    region = np.isin(labels, touching[touching > 0]) | core
    # Only small holes are fatty tissue; a large one is background ringed by artefacts along the border.
    holes, n = ndimage.label(ndimage.binary_fill_holes(region) & ~region)
    if n:
        sizes = np.bincount(holes.ravel())
        region |= (sizes < _MAX_HOLE * region.size)[holes] & (holes > 0)
    return region


def breast_region(pixels: np.ndarray, *, margin: float = 0.01, min_area: float = 0.03, max_area: float = 0.97,
                  work_size: int = WORK_SIZE) -> BreastRegion:
    """The breast as a pixel mask, for background masking: every pixel outside it may be set to background.

    On the working copy of :func:`breast_mask`: Otsu threshold -> bright film-edge bands along the border removed
    -> largest component -> grown into the faint pixels connected to it (skin line) -> small holes filled ->
    dilated by ``margin`` (plus one block, for blocks only partly covered) -> scaled back to full resolution (each
    working cell covers its whole block) -> bands removed at full resolution. Labels, markers and rulers that do
    not touch the breast are separate components and stay outside; ones that touch it are kept (the mask never
    cuts into what may be tissue).

    Args:
        pixels: ``(H, W)`` image, brighter = denser.
        margin: Dilation as a fraction of the image's long side.
        min_area, max_area: A region covering less or more than this fraction of the image is implausible.
        work_size: Long side of the working copy.

    Returns:
        A :class:`BreastRegion`; its ``mask`` is None (with the reason) when no plausible breast was found.
    """
    from scipy import ndimage

    sharp, factor, problem = _working_copy(pixels, work_size)
    if problem:
        return BreastRegion(None, problem)
    small = _blurred(sharp)
    band, depths = film_edge_bands(sharp, otsu_threshold(small))
    sides = tuple(depths)
    t = otsu_threshold(small[~band]) if band.any() else otsu_threshold(small)  # bands would pull it up
    # The blur smears a band's glow a few lines inward: that glow must not join the breast to other artefacts
    # along the band, so the component is found without it, and the tissue next to the band is given back after.
    spread = math.ceil(2 * max(1.0, min(small.shape) / 128))
    glow = ndimage.binary_dilation(band, iterations=spread) if depths else band
    core, problem = _largest_component((small > t) & ~glow)
    if problem:
        return BreastRegion(None, problem, film_edges=sides)
    region = _grow(small, core, t, ~glow)
    r = max(1, math.ceil(margin * max(small.shape))) + (1 if factor > 1 else 0)
    region = ndimage.binary_dilation(region, structure=_disk(r))
    if depths:  # bands themselves go below, at full resolution
        region |= ndimage.binary_dilation(region, structure=_disk(spread + 1)) & glow
    h, w = pixels.shape
    full = np.repeat(np.repeat(region, factor, axis=0), factor, axis=1)[:h, :w]
    if depths:
        full &= ~_full_resolution_bands(np.asarray(pixels), depths, factor)
    area = float(full.mean())
    if area < min_area:
        return BreastRegion(None, f"breast region covers only {area:.1%} of the image", area, sides)
    if area > max_area:
        return BreastRegion(None, f"breast region covers {area:.1%} of the image (no background found)", area, sides)
    return BreastRegion(full, "", area, sides)
