"""Breast crop: Otsu against a brute-force reference, exact box scaling, fallbacks, side detection; the breast
region that background masking keeps (whole breast in, film edges, labels and markers out)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mammodetr.data.crop import CropResult, breast_mask, breast_region, breast_side, find_breast, otsu_threshold
from mammodetr.data.synth import SynthOptions, render_mammogram


def otsu_brute_force(values: np.ndarray, bins: int = 256) -> float:
    """Naive float64 loop: try every cut between bins, keep the largest between-class variance."""
    v = values.astype(np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins, range=(v.min(), v.max()))
    centers = (edges[:-1] + edges[1:]) / 2
    best, best_k = -1.0, 0
    for k in range(bins - 1):
        n0, n1 = hist[: k + 1].sum(), hist[k + 1 :].sum()
        if n0 == 0 or n1 == 0:
            continue
        m0 = (hist[: k + 1] * centers[: k + 1]).sum() / n0
        m1 = (hist[k + 1 :] * centers[k + 1 :]).sum() / n1
        var = n0 * n1 * (m0 - m1) ** 2
        if var > best:
            best, best_k = var, k
    return float(edges[best_k + 1])


def test_otsu_hand_case():
    # Two clusters {1, 2} and {8, 9}: every cut between 2 and 8 separates them; Otsu takes the first.
    values = np.array([1, 1, 2, 2, 8, 8, 9, 9], dtype=np.float64)
    t = otsu_threshold(values, bins=8)
    assert 2.0 <= t < 8.0
    assert ((values > t) == (values >= 8)).all()


def test_otsu_matches_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(3):
        v = np.concatenate([rng.normal(0.2, 0.05, 3000 + 500 * trial), rng.normal(0.7, 0.1, 2000)])
        assert otsu_threshold(v) == pytest.approx(otsu_brute_force(v), abs=1e-12)


def ellipse_image(h: int, w: int, depth: float = 0.6, noise: float = 0.02, seed: int = 0) -> tuple[np.ndarray, tuple]:
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx / (depth * w)) ** 2 + ((yy - h / 2) / (0.38 * h)) ** 2) < 1
    img = mask * 0.6 + np.random.default_rng(seed).normal(0, noise, (h, w))
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.clip(img, 0, 1).astype(np.float32), (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)


@pytest.mark.parametrize(("h", "w"), [(200, 160), (700, 530)])
def test_box_contains_breast_and_is_tight(h, w):
    img, (tx1, ty1, tx2, ty2) = ellipse_image(h, w)
    margin = 0.02
    res = find_breast(img, margin=margin)
    assert isinstance(res, CropResult) and not res.fallback and res.reason == ""
    x1, y1, x2, y2 = res.box_xyxy
    assert all(isinstance(c, int) for c in res.box_xyxy)
    factor = math.ceil(max(h, w) / 256)
    mx, my = math.ceil(margin * w), math.ceil(margin * h)
    # Contains the true region plus the margin (clipped at the border) ...
    assert x1 <= max(0, tx1 - mx) and y1 <= max(0, ty1 - my)
    assert x2 >= min(w, tx2 + mx) and y2 >= min(h, ty2 + my)
    # ... and is at most one block (plus blur spread) larger on each side.
    slack = 2 * factor + 2
    assert x1 >= tx1 - mx - slack and y1 >= ty1 - my - slack
    assert x2 <= tx2 + mx + slack and y2 <= ty2 + my + slack
    assert res.side == "L"


def test_bright_marker_is_not_the_breast():
    img, (tx1, ty1, tx2, ty2) = ellipse_image(256, 200)
    img[5:12, 180:190] = 1.0  # lead marker in the far corner
    res = find_breast(img, margin=0.0)
    assert res.box_xyxy[2] < 180 and not res.fallback


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (np.zeros((64, 48), np.float32), "constant"),
        (np.full((64, 48), 0.5, np.float32), "constant"),
        (np.pad(np.ones((6, 6), np.float32), ((30, 28), (20, 22))), "only"),
        (np.pad(np.full((128, 127), 0.8, np.float32), ((0, 0), (1, 0))), "covers"),
        (np.kron(np.indices((4, 4)).sum(0) % 2, np.ones((16, 12))).astype(np.float32), "fragmented"),
    ],
)
def test_fallback_to_whole_image_with_reason(image, words):
    res = find_breast(image)
    assert res.fallback and res.box_xyxy == (0, 0, image.shape[1], image.shape[0])
    assert words in res.reason


def test_breast_side_left_right():
    img, _ = ellipse_image(120, 100)
    assert breast_side(img) == "L"
    assert breast_side(img[:, ::-1]) == "R"
    assert find_breast(img[:, ::-1].copy()).side == "R"


def test_uint16_input_and_partial_blocks():
    img, (tx1, ty1, tx2, ty2) = ellipse_image(517, 389)  # not a multiple of the block size
    res = find_breast((img * 65535).astype(np.uint16), margin=0.0)
    x1, y1, x2, y2 = res.box_xyxy
    assert x1 <= tx1 and y1 <= ty1 and x2 >= tx2 and y2 >= ty2
    assert x2 <= 389 and y2 <= 517


ARTEFACTS = SynthOptions(film_edge=1.0, label_block=1.0)


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("size", [(96, 80), (512, 416), (1400, 1120)])
def test_region_holds_the_whole_breast_and_no_artefact(view, laterality, size):
    for seed, density in ((0, 0.1), (1, 0.9)):
        img = render_mammogram(np.random.default_rng(seed), size, view=view, laterality=laterality, density=density,
                               options=ARTEFACTS)
        assert img.artefacts["film_edge"] and img.artefacts["label_block"]
        region = breast_region(img.pixels)
        assert region.mask is not None and region.mask.shape == img.pixels.shape, region.reason
        assert region.mask[img.breast_mask].all()  # skin line and pectoral muscle included
        assert not (region.mask & img.artefact_mask).any()  # film edge, label block and marker left out
        # ... and only a margin more than the breast: the dilation is about 1 % of the long side.
        extra = (region.mask & ~img.breast_mask).sum() / img.breast_mask.sum()
        assert extra < 0.15
        assert region.area_fraction == pytest.approx(region.mask.mean())


@pytest.mark.parametrize("size", [(120, 100), (512, 416), (1500, 1200)])
def test_film_edges_touching_the_breast_are_cut_off(size):
    """An MLO breast reaches the top and bottom borders, where film edges run: the bands go, the breast stays."""
    h, w = size
    img = render_mammogram(np.random.default_rng(2), size, view="MLO", laterality="L", density=0.5,
                           options=SynthOptions(film_edge=0.0, label_block=0.0))
    top, bottom = max(3, int(0.03 * h)), max(2, int(0.02 * h))
    pixels = img.pixels.copy()
    pixels[:top], pixels[-bottom:] = 0.9, 0.93
    band = np.zeros(size, bool)
    band[:top], band[-bottom:] = True, True
    assert (img.breast_mask & band)[:top].any()  # the top band does touch the breast
    region = breast_region(pixels)
    assert set(region.film_edges) == {"top", "bottom"}
    assert region.mask[img.breast_mask & ~band].all()
    # Only a block straddling a band's inner edge may keep band pixels: at most one block row per band.
    factor = math.ceil(max(size) / 256)
    assert (region.mask & band).any(axis=1).sum() <= 2 * (factor - 1)


@pytest.mark.parametrize("side", ["L", "R"])
def test_flat_tissue_against_the_chest_wall_is_no_film_edge(side):
    """A bright, flat run along a side that goes on past a film edge's width is tissue reaching the border: kept."""
    img = np.zeros((96, 80), np.float32)
    img[2:94, :60] = 0.46  # a uniform "breast" against the left edge (as real-format fixtures draw them)
    img = img if side == "L" else img[:, ::-1].copy()
    region = breast_region(img)
    assert region.film_edges == () and region.mask[img > 0].all()


def test_no_film_edge_without_one():
    for seed in range(4):
        for view in ("CC", "MLO"):
            img = render_mammogram(np.random.default_rng(seed), (384, 304), view=view, laterality="R",
                                   density=0.3 * seed, options=SynthOptions(film_edge=0.0, label_block=0.0))
            region = breast_region(img.pixels)
            assert region.film_edges == ()
            assert region.mask[img.breast_mask].all() and not (region.mask & img.artefact_mask).any()


def test_faint_skin_line_and_fatty_holes_are_kept():
    h, w = 300, 240
    yy, xx = np.mgrid[:h, :w]
    rho = np.hypot(xx / (0.6 * w), (yy - h / 2) / (0.4 * h))
    # Tissue at 0.6, a faint outer rim (thin skin and fat) at 0.15, film background at 0.02 with grain.
    img = np.where(rho < 0.85, 0.6, np.where(rho < 1.0, 0.15, 0.02))
    hole = np.hypot(xx - 0.25 * w, yy - h / 2) < 12
    img[hole] = 0.02  # fat as dark as the background, inside the breast
    img = (img + np.random.default_rng(0).normal(0, 0.005, img.shape)).astype(np.float32)
    otsu_only, _, _ = breast_mask(img)
    assert not otsu_only[rho[::2, ::2] > 0.9].all()  # the Otsu component alone misses the rim ...
    region = breast_region(img, margin=0.0)
    assert region.mask[rho < 1.0].all() and region.mask[hole].all()  # ... the region has it, and the hole
    assert not region.mask[rho > 1.1].any()  # one block and the blur at most beyond the rim


@pytest.mark.parametrize(("image", "words"), [
    (np.zeros((64, 48), np.float32), "constant"),
    (np.pad(np.ones((6, 6), np.float32), ((30, 28), (20, 22))), "only"),
    # Bright and flat up to every side, but no strip: not a film edge (never cut), and no background either.
    (np.pad(np.full((128, 127), 0.8, np.float32), ((0, 0), (1, 0))), "no background found"),
    (np.kron(np.indices((4, 4)).sum(0) % 2, np.ones((16, 12))).astype(np.float32), "fragmented"),
])
def test_region_gives_the_reason_when_there_is_no_breast(image, words):
    region = breast_region(image)
    assert region.mask is None and words in region.reason
