"""Synthetic mammograms for demos, tests and benchmarks (not for any clinical or scientific claim).

Each patient gets four views (L/R x CC/MLO). The picture is built in a canonical frame with the chest wall
on the left, then mirrored for right breasts, so that the stored images follow the standard display (DICOM
Patient Orientation L CC ``A\\R``, R CC ``P\\L``, L MLO ``A\\F``, R MLO ``P\\F``): a left breast lies against
the image's left edge, a right breast against the right edge (see :mod:`mammodetr.data.laterality`).

Ingredients: a breast outline (half-ellipse on CC; on MLO a drooping outline with the axillary tail and a
pectoral-muscle triangle in the upper chest-wall corner), a thickness fall-off toward the skin line,
fibroglandular tissue from power-law (1/f^beta) noise whose amount follows the patient's density, and
lesions: benign round/oval circumscribed masses; malignant spiculated irregular masses or clustered
calcifications. A bright lead marker (the laterality letter) sits in the upper corner opposite the chest wall
(it also pins the image's maximum at 1, so min-max normalisation of unwindowed DICOMs is the identity).

Film artefacts, the shortcuts a model can learn instead of the breast: a bright film-edge band along the border
away from the chest wall or along the top or bottom one (where it may cross the breast, never a lesion), and a
burnt-in label block (a bright block with dark letters: the view and a site code, never an identifier) low in the
free part of the image, between the breast and the border. Each appears with its own chance per image;
``artefact_bias`` ties them to malignant patients. Ground-truth boxes are the bounding boxes of each
lesion's rendered mask. Everything is deterministic given the seed.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from tqdm import tqdm

from mammodetr.data.image import to_uint16
from mammodetr.data.png16 import write_png16

LABELS = ("normal", "benign", "malignant")
DICOM_VARIANTS = ("mono2", "mono1", "window", "mono1_window", "sigmoid")
FILM_EDGE_SIDES = ("far", "top", "bottom")
_SIDE_WEIGHT = {"far": 2.0, "top": 1.0, "bottom": 1.0}
TABLE_COLUMNS = (
    "image_path", "patient_id", "label", "laterality", "view", "study_id", "x1", "y1", "x2", "y2", "lesion_label"
)
# Patient Orientation (row direction \ column direction) for the standard display used here.
PATIENT_ORIENTATION = {
    ("L", "CC"): ("A", "R"), ("R", "CC"): ("P", "L"), ("L", "MLO"): ("A", "F"), ("R", "MLO"): ("P", "F")
}


@dataclass(frozen=True)
class SynthOptions:
    """Knobs of the generator; the defaults are tuned so a small model learns at 64-128 px input.

    "Breast width" below is the smaller of the breast's chest-wall-to-nipple depth and its height. The outline
    and texture are computed on a grid whose long side is ``work_size`` and upsampled for larger images (the
    "fast mode" for full-field images); lesions are always drawn at full resolution.

    Attributes:
        p_normal: Fraction of normal patients.
        p_benign: Fraction of patients with a benign lesion; the other 1 - p_normal - p_benign have a malignant one.
        lesion_size: Range of lesion (or calcification cluster) diameter as a fraction of the breast width.
        benign_contrast: Peak added intensity of a circumscribed mass.
        malignant_contrast: Peak added intensity of a spiculated mass core.
        calc_contrast: Peak added intensity of a calcification.
        calc_fraction: Fraction of malignant lesions drawn as calcification clusters.
        calc_size: Range of a calcification's radius as a fraction of the breast width.
        p_second_lesion: Chance that a malignant breast also holds a benign mass.
        density_range: Range of the breast density (0 fatty .. 1 extremely dense).
        noise: Standard deviation of the per-pixel noise inside the breast.
        work_size: Long side of the grid on which outline and texture are computed.
        variants: DICOM encodings to draw from (see DICOM_VARIANTS).
        film_edge: Chance of a film edge: a bright band along the top, bottom or non-chest-wall border.
        film_edge_sides: Borders a film edge may run along: far (from the chest wall; 2x as likely), top, bottom.
        label_block: Chance of a burnt-in film label (bright block, dark letters) low beside the breast.
        marker: Lead marker in the upper corner away from the chest wall: the laterality letter, a square or none.
        artefact_bias: 0..1, how much film edges and labels favour malignant patients (0: a shortcut-free task).
    """

    p_normal: float = 0.4
    p_benign: float = 0.3
    lesion_size: tuple[float, float] = (0.10, 0.20)
    benign_contrast: float = 0.2
    malignant_contrast: float = 0.26
    calc_contrast: float = 0.55
    calc_fraction: float = 0.35
    calc_size: tuple[float, float] = (0.012, 0.02)
    p_second_lesion: float = 0.15
    density_range: tuple[float, float] = (0.05, 0.85)
    noise: float = 0.012
    work_size: int = 512
    variants: tuple[str, ...] = DICOM_VARIANTS
    film_edge: float = 0.5
    film_edge_sides: tuple[str, ...] = FILM_EDGE_SIDES
    label_block: float = 0.5
    marker: Literal["letter", "square", "none"] = "letter"
    artefact_bias: float = 0.0


def artefact_chances(options: SynthOptions, malignant: bool) -> tuple[float, float]:
    """Chances of a film edge and of a label block on one image of a malignant (or other) patient.

    With ``artefact_bias`` b, a chance p becomes ``p + (1 - p) * b`` for malignant patients and ``p * (1 - b)``
    for the others: b = 0 leaves p, b = 1 puts the artefact on every malignant patient's image and on no other.
    """
    b = float(options.artefact_bias)
    return tuple(p + (1 - p) * b if malignant else p * (1 - b)  # type: ignore[return-value]
                 for p in (float(options.film_edge), float(options.label_block)))


@dataclass(frozen=True)
class LesionSpec:
    """One lesion to draw, in breast-relative coordinates.

    Attributes:
        kind: ``"circumscribed"`` (benign), ``"spiculated"`` or ``"calcifications"`` (malignant).
        depth: Centre's distance from the chest wall as a fraction of the breast edge at that height.
        height: Centre's vertical position as a fraction (-1..1) of the breast's half-height about its centre.
        diameter: Diameter as a fraction of the breast width.
        contrast: Peak added intensity.
        seed: Seed for the lesion's own shape.
    """

    kind: str
    depth: float
    height: float
    diameter: float
    contrast: float
    seed: int

    @property
    def pathology(self) -> str:
        return "benign" if self.kind == "circumscribed" else "malignant"


@dataclass
class SynthImage:
    """A rendered view.

    Attributes:
        pixels: ``float32 (H, W)`` in ``[0, 1]``.
        boxes_xyxy_px: ``int (N, 4)`` lesion boxes, pixel corners (x2 = last column + 1).
        lesion_labels: ``benign``/``malignant`` per box.
        lesion_kinds: Lesion kind per box.
        breast_mask: ``bool (H, W)`` breast region (including pectoral muscle) where no film edge covers it.
        artefact_mask: ``bool (H, W)`` film edge, label block and marker pixels (never overlapping the breast).
        artefacts: Which artefacts were drawn (``film_edge``, ``label_block``: bool; ``film_edge_side``: "far"
            (the border away from the chest wall), "top", "bottom" or None; ``marker``: its kind).
    """

    pixels: np.ndarray
    boxes_xyxy_px: np.ndarray
    lesion_labels: list[str] = field(default_factory=list)
    lesion_kinds: list[str] = field(default_factory=list)
    breast_mask: np.ndarray | None = None
    artefact_mask: np.ndarray | None = None
    artefacts: dict = field(default_factory=dict)


def powerlaw_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    """Gaussian noise with power spectrum ``1 / f**beta``, zero mean and unit variance, ``float32 shape``."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = (rng.standard_normal((h, w // 2 + 1)) + 1j * rng.standard_normal((h, w // 2 + 1))) * amp
    out = np.fft.irfft2(spec, s=(h, w))
    out -= out.mean()
    return (out / (out.std() + 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class _Outline:
    view: str
    depth: float  # chest wall to nipple, fraction of width
    cy: float  # vertical centre, fraction of height
    ry: float  # half-height, fraction of height
    power: float
    pect_top: float  # pectoral width at the top edge, fraction of width (MLO)
    pect_len: float  # pectoral length down the chest wall, fraction of height (MLO)

    def edge(self, v: np.ndarray) -> np.ndarray:
        """Skin line: distance from the chest wall (fraction of width) at heights ``v`` (fraction of height)."""
        t = np.clip(1.0 - ((v - self.cy) / self.ry) ** 2, 0.0, 1.0)
        e = self.depth * t ** (1.0 / self.power)
        if self.view == "MLO":
            # Axillary tail: the outline runs from the muscle's top corner down to the breast body.
            tail = self.pect_top * 1.1 + (0.8 * self.depth - self.pect_top * 1.1) * np.clip(v / self.cy, 0, 1)
            e = np.where(v < self.cy, np.maximum(e, tail), e)
        return e


def _outline(rng: np.random.Generator, view: str) -> _Outline:
    if view == "MLO":
        return _Outline("MLO", rng.uniform(0.58, 0.74), rng.uniform(0.56, 0.64), rng.uniform(0.34, 0.4),
                        rng.uniform(1.8, 2.4), rng.uniform(0.22, 0.34), rng.uniform(0.45, 0.7))
    return _Outline("CC", rng.uniform(0.56, 0.74), rng.uniform(0.46, 0.54), rng.uniform(0.36, 0.44),
                    rng.uniform(1.8, 2.6), 0.0, 0.0)


def _upsample(a: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if a.shape == tuple(size_hw):
        return a.astype(np.float32, copy=False)
    from PIL import Image

    img = Image.fromarray(a.astype(np.float32), mode="F").resize((size_hw[1], size_hw[0]), Image.BILINEAR)
    return np.array(img, dtype=np.float32)  # writable copy


def _lesion_patch(spec: LesionSpec, radius_px: float, rd_range: tuple[float, float], breast_px: float
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw one lesion on a square patch centred on it.

    Returns:
        ``(intensity float32 (S, S), mask bool (S, S), half)``; the patch centre is at index ``half``.
    """
    from scipy import ndimage

    rng = np.random.default_rng(spec.seed)
    r = max(2.0, radius_px)
    reach = r * (2.2 if spec.kind == "spiculated" else 1.2)
    if spec.kind == "calcifications":
        reach = r + max(1.0, breast_px * rd_range[1]) + 1
    half = int(math.ceil(reach)) + 3
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    grid = _PatchGrid(xx, yy, np.arctan2(yy, xx), np.hypot(xx, yy))
    if spec.kind == "circumscribed":
        intensity, mask = _circumscribed(rng, grid, r, spec.contrast)
    elif spec.kind == "spiculated":
        intensity, mask = _spiculated(rng, grid, r, spec.contrast)
    elif spec.kind == "calcifications":
        intensity, mask = _calcifications(rng, grid, r, spec.contrast, rd_range, breast_px)
    else:
        raise ValueError(f"unknown lesion kind {spec.kind!r}")
    intensity = ndimage.gaussian_filter(intensity.astype(np.float32), sigma=max(0.5, r * 0.03))
    return intensity.astype(np.float32), mask, half


@dataclass(frozen=True)
class _PatchGrid:
    """Pixel offsets from a lesion patch's centre: ``xx``, ``yy``, their angle and distance, all ``(S, S)``."""

    xx: np.ndarray
    yy: np.ndarray
    theta: np.ndarray
    dist: np.ndarray


def _circumscribed(rng: np.random.Generator, g: _PatchGrid, r: float, contrast: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A benign mass: a slightly lobulated, rotated ellipse with a sharp margin."""
    aspect = rng.uniform(0.65, 1.0)
    rot = rng.uniform(0, math.pi)
    c, s = math.cos(rot), math.sin(rot)
    xr, yr = c * g.xx + s * g.yy, -s * g.xx + c * g.yy
    lobes = 1.0 + 0.04 * np.cos(2 * g.theta + rng.uniform(0, 6.3)) + 0.03 * np.cos(3 * g.theta + rng.uniform(0, 6.3))
    rho = np.hypot(xr / r, yr / (r * aspect)) / lobes
    return contrast * np.clip((1.0 - rho) / 0.25, 0.0, 1.0) ** 0.6, rho < 1.0


def _spiculated(rng: np.random.Generator, g: _PatchGrid, r: float, contrast: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """A malignant mass: an irregular core with thin spicules radiating from it."""
    core_r = r * 0.75
    mod = np.ones_like(g.theta)
    for k in range(2, 6):
        mod += rng.uniform(0.0, 0.12) * np.cos(k * g.theta + rng.uniform(0, 2 * math.pi))
    rho = g.dist / (core_r * mod)
    core = rho < 1.0
    intensity = contrast * np.clip(1.0 - rho**2, 0.0, 1.0) ** 0.35
    spic = np.zeros_like(core)
    spic_int = np.zeros_like(intensity)
    n_spic = int(rng.integers(9, 17))
    width0 = max(0.9, 0.13 * core_r)
    for k in range(n_spic):
        ang = 2 * math.pi * (k + rng.uniform(-0.3, 0.3)) / n_spic
        length = core_r * rng.uniform(1.5, 2.8)
        d = np.array([math.cos(ang), math.sin(ang)], dtype=np.float32)
        t = np.clip(g.xx * d[0] + g.yy * d[1], 0.0, length)
        perp = np.hypot(g.xx - t * d[0], g.yy - t * d[1])
        on = perp < width0 * (1.0 - 0.7 * t / length)
        spic |= on
        spic_int = np.maximum(spic_int, np.where(on, 0.75 * contrast * (1.0 - 0.6 * t / length), 0.0))
    return np.maximum(intensity, spic_int), core | spic


def _calcifications(rng: np.random.Generator, g: _PatchGrid, r: float, contrast: float,
                    rd_range: tuple[float, float], breast_px: float) -> tuple[np.ndarray, np.ndarray]:
    """A malignant cluster: 7-16 bright specks of radius ``rd_range`` x breast width within ``r``."""
    n = int(rng.integers(7, 17))
    mask = np.zeros(g.dist.shape, bool)
    intensity = np.zeros(g.dist.shape, np.float32)
    for _ in range(n):
        a, rr = rng.uniform(0, 2 * math.pi), r * math.sqrt(rng.uniform(0, 1))
        cx, cy = rr * math.cos(a), rr * math.sin(a)
        rd = max(1.0, breast_px * rng.uniform(*rd_range))
        d2 = np.hypot(g.xx - cx, g.yy - cy) / rd
        on = d2 < 1.0
        mask |= on
        speck = contrast * np.sqrt(np.clip(1 - d2**2, 0, 1)) + 0.3 * contrast
        intensity = np.maximum(intensity, np.where(on, speck, 0.0))
    return intensity, mask


def render_mammogram(
    rng: np.random.Generator,
    size_hw: tuple[int, int],
    *,
    view: str,
    laterality: str,
    density: float,
    lesions: Sequence[LesionSpec] = (),
    options: SynthOptions = SynthOptions(),
    artefact_odds: tuple[float, float] | None = None,
) -> SynthImage:
    """Render one view.

    Args:
        rng: Source of randomness for outline and texture (lesion shapes use their own seeds).
        size_hw: Output ``(H, W)``.
        view: ``"CC"`` or ``"MLO"``.
        laterality: ``"L"`` (chest wall on the image's left) or ``"R"`` (mirrored).
        density: 0 (fatty) .. 1 (extremely dense).
        lesions: Lesions to draw.
        options: Generator options.
        artefact_odds: Chances of a film edge and of a label block (default: ``options.film_edge`` and
            ``options.label_block``; see :func:`artefact_chances`). They are drawn from a stream of their own,
            so the breast and its lesions do not depend on them.

    Returns:
        SynthImage with ``pixels float32 (H, W)`` in ``[0, 1]`` and exact lesion boxes.
    """
    if view not in ("CC", "MLO") or laterality not in ("L", "R"):
        raise ValueError(f"view must be CC/MLO and laterality L/R, got {view!r}/{laterality!r}")
    H, W = int(size_hw[0]), int(size_hw[1])
    scale = max(1.0, max(H, W) / options.work_size)
    ol = _outline(rng, view)
    tissue, inside = _anatomy(rng, ol, (max(8, round(H / scale)), max(8, round(W / scale))), density)
    pixels = _upsample(tissue, (H, W))
    inside_full = _upsample(inside.astype(np.float32), (H, W)) > 0.5
    boxes, labels, kinds = _draw_lesions(pixels, inside_full, ol, lesions, options)
    if options.noise > 0:
        noise = rng.standard_normal((H, W), dtype=np.float32)
        noise *= np.float32(options.noise)
        pixels += noise * inside_full
    np.clip(pixels, 0.0, 1.0, out=pixels)

    boxes_arr = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if laterality == "R":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
        inside_full = np.ascontiguousarray(inside_full[:, ::-1])
        if len(boxes_arr):
            boxes_arr = np.stack([W - boxes_arr[:, 2], boxes_arr[:, 1], W - boxes_arr[:, 0], boxes_arr[:, 3]], axis=1)
    odds = artefact_odds if artefact_odds is not None else (options.film_edge, options.label_block)
    artefact_mask, drawn = _draw_artefacts(pixels, inside_full, laterality, view, _artefact_stream(rng), odds,
                                           options, boxes_arr)
    inside_full &= ~artefact_mask  # a film edge along the top or bottom may cover the breast's end
    return SynthImage(pixels, boxes_arr, labels, kinds, inside_full, artefact_mask, drawn)


def _artefact_stream(rng: np.random.Generator) -> np.random.Generator:
    """A generator for the artefacts that leaves ``rng`` where it is (a jumped copy of its stream)."""
    jumped = getattr(rng.bit_generator, "jumped", None)
    return np.random.Generator(jumped()) if jumped is not None else np.random.default_rng(rng.integers(2**63))


def _glyphs(text: str) -> np.ndarray:
    """``bool (h, w)`` pixels of ``text`` in Pillow's built-in bitmap font (the same on every platform)."""
    from PIL import Image, ImageDraw, ImageFont

    font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
    x0, y0, x1, y1 = font.getbbox(text)
    canvas = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(canvas).text((1 - x0, 1 - y0), text, fill=255, font=font)
    return np.array(canvas) > 127


def _scaled(glyphs: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean picture."""
    h, w = size_hw
    rows = np.minimum((np.arange(h) * glyphs.shape[0]) // h, glyphs.shape[0] - 1)
    cols = np.minimum((np.arange(w) * glyphs.shape[1]) // w, glyphs.shape[1] - 1)
    return glyphs[rows][:, cols]


def _film_edge(pixels: np.ndarray, art: np.ndarray, rng: np.random.Generator, side: str, far_right: bool) -> int:
    """A bright film-edge band along one border (in place); returns its width in pixels."""
    def lines(a: np.ndarray) -> np.ndarray:  # a view whose first rows are the lines along the border
        if side == "top":
            return a
        if side == "bottom":
            return a[::-1]
        return a.T[::-1] if far_right else a.T

    target = lines(pixels)
    width = max(2, int(round(target.shape[0] * rng.uniform(0.015, 0.04))))
    band = np.float32(rng.uniform(0.86, 0.94)) + rng.normal(0, 0.008, (width, target.shape[1])).astype(np.float32)
    band[-1] *= 0.5  # a soft inner edge, as a film edge scanned slightly out of focus
    target[:width] = np.clip(band, 0.0, 0.97)
    lines(art)[:width] = True
    return width


def _edge_side(rng: np.random.Generator, sides: Sequence[str], boxes: np.ndarray, H: int) -> str:
    """The border a film edge runs along; a top or bottom band that could reach a lesion's box goes to the far
    border instead (a ground-truth box never holds band pixels)."""
    weights = np.array([_SIDE_WEIGHT[s] for s in sides])
    side = sides[int(rng.choice(len(sides), p=weights / weights.sum()))]
    widest = int(round(H * 0.04)) + 1  # _film_edge's widest band
    if side == "top" and len(boxes) and int(boxes[:, 1].min()) < widest:
        return "far"
    if side == "bottom" and len(boxes) and int(boxes[:, 3].max()) > H - widest:
        return "far"
    return side


def _draw_artefacts(pixels: np.ndarray, breast: np.ndarray, laterality: str, view: str, rng: np.random.Generator,
                    odds: tuple[float, float], options: SynthOptions, boxes: np.ndarray) -> tuple[np.ndarray, dict]:
    """Film edge (the border away from the chest wall, or the top or bottom one), marker and label (in place).

    Returns:
        ``(artefact mask bool (H, W), what was drawn)``.
    """
    H, W = pixels.shape
    art = np.zeros((H, W), bool)
    far_right = laterality == "L"  # the chest wall is on the left, so the free border is the right one
    has_edge, has_label = bool(rng.uniform() < odds[0]), bool(rng.uniform() < odds[1])
    inset = {"far": 0, "top": 0, "bottom": 0}
    edge_side = None
    if has_edge:
        edge_side = _edge_side(rng, options.film_edge_sides, boxes, H)
        inset[edge_side] = _film_edge(pixels, art, rng, edge_side, far_right)
    s = max(3, int(round(0.035 * min(H, W))))
    pad = max(1, s // 2)
    marker = options.marker
    if marker != "none":
        shape = np.ones((s, s), bool) if marker == "square" else _scaled(_glyphs(laterality), (s, s))
        shape[s // 2, s // 2] = True  # at least one pixel at 1, whatever the scaling left of the letter
        x = W - inset["far"] - pad - s if far_right else inset["far"] + pad
        rows, cols = slice(inset["top"] + pad, inset["top"] + pad + s), slice(x, x + s)
        pixels[rows, cols][shape] = 1.0
        art[rows, cols] |= shape
    if has_label:
        has_label = _draw_label(pixels, art, breast, rng, f"{laterality} {view}", far_right,
                                (inset["far"] + pad, inset["bottom"] + pad))
    return art, {"film_edge": has_edge, "film_edge_side": edge_side, "label_block": has_label, "marker": marker}


def _draw_label(pixels: np.ndarray, art: np.ndarray, breast: np.ndarray, rng: np.random.Generator, text: str,
                far_right: bool, inset_xy: tuple[int, int]) -> bool:
    """A burnt-in label block low in the free part of the image, anywhere between the breast (not touching it)
    and the border; returns whether there was room for it."""
    H, W = pixels.shape
    lh, lw = max(4, int(round(H * rng.uniform(0.05, 0.08)))), max(8, int(round(W * rng.uniform(0.16, 0.24))))
    y1 = H - inset_xy[1] - int(round(H * rng.uniform(0.0, 0.04)))
    rows = slice(max(0, y1 - lh), y1)
    reach = max(6, int(round(0.05 * max(H, W))))  # clear of the breast by more than a mask margin
    cols_with_breast = np.flatnonzero(breast[max(0, rows.start - reach) : rows.stop + reach].any(axis=0))
    if far_right:
        lo, hi = (int(cols_with_breast.max()) + reach + 1 if cols_with_breast.size else 0), W - inset_xy[0] - lw
    else:
        lo, hi = inset_xy[0], (int(cols_with_breast.min()) - reach - lw if cols_with_breast.size else W - lw)
    if hi < lo or rows.stop - rows.start < 4:
        return False
    x0 = int(rng.integers(lo, hi + 1))
    cols = slice(x0, x0 + lw)
    site = f"SITE {chr(ord('A') + int(rng.integers(26)))}{int(rng.integers(10))}"
    letters = _scaled(_glyphs(f"{text} {site}"), (rows.stop - rows.start - 2, lw - 2))
    block = np.full((rows.stop - rows.start, lw), np.float32(rng.uniform(0.78, 0.9)))
    block[1:-1, 1:-1][letters] = np.float32(0.12)
    pixels[rows, cols] = block
    art[rows, cols] = True
    return True


def _anatomy(rng: np.random.Generator, ol: _Outline, shape_hw: tuple[int, int], density: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Tissue intensity and breast region on the low-resolution work grid, chest wall on the left.

    Returns:
        ``(tissue float32 (h, w), inside bool (h, w))``.
    """
    h, w = shape_hw
    # u = distance from the chest wall / width, v = height / height.
    v = (np.arange(h, dtype=np.float32) + 0.5)[:, None] / h
    u = (np.arange(w, dtype=np.float32) + 0.5)[None, :] / w
    wobble = 1.0 + 0.025 * np.sin(2 * math.pi * (rng.uniform(1.5, 3.0) * v + rng.uniform(0, 1)))
    edge = ol.edge(v) * wobble  # (h, 1)
    inside = u < edge
    skin = 0.07 * ol.depth
    thickness = np.clip((edge - u) / skin, 0.0, 1.0) ** 0.5
    coarse = powerlaw_noise(rng, (h, w), 3.0)
    fine = powerlaw_noise(rng, (h, w), 1.8)
    prior = np.exp(-(((u - 0.4 * edge) / (0.45 * ol.depth + 1e-6)) ** 2) - ((v - ol.cy) / (0.75 * ol.ry)) ** 2)
    gland_logit = 1.1 * coarse + 0.35 * fine + 2.2 * prior + (4.0 * density - 2.8)
    gland = 1.0 / (1.0 + np.exp(-gland_logit / 0.45))
    tissue = (0.26 + 0.34 * gland + 0.03 * fine) * thickness
    if ol.view == "MLO":
        pect_edge = ol.pect_top * (1.0 - v / ol.pect_len)
        pect = np.clip((pect_edge - u) / (0.02 + 1e-6), 0.0, 1.0)  # soft muscle boundary
        muscle = (0.62 + 0.03 * fine) * np.clip(thickness * 1.5, 0, 1)
        tissue = tissue * (1 - pect) + muscle * pect
        inside = inside | (pect > 0)
    return np.where(inside, tissue, 0.0).astype(np.float32), inside


def _draw_lesions(pixels: np.ndarray, inside: np.ndarray, ol: _Outline, lesions: Sequence[LesionSpec],
                  options: SynthOptions) -> tuple[list[list[int]], list[str], list[str]]:
    """Add each lesion to ``pixels`` (in place, full resolution, only inside the breast).

    Returns:
        ``(boxes, pathologies, kinds)`` of the lesions that landed in the breast; a box is the bounding box of
        the lesion's mask, ``[x1, y1, x2, y2]`` end-exclusive.
    """
    H, W = pixels.shape
    breast_w = min(float(ol.depth) * W, 2 * float(ol.ry) * H)
    boxes: list[list[int]] = []
    labels: list[str] = []
    kinds: list[str] = []
    for spec in lesions:
        vy = ol.cy + spec.height * ol.ry * 0.55
        e = float(ol.edge(np.array([vy]))[0])
        inten, mask, half = _lesion_patch(spec, spec.diameter * breast_w / 2, options.calc_size, breast_w)
        x0, y0 = int(round(spec.depth * e * W)) - half, int(round(vy * H)) - half
        xa, ya = max(0, x0), max(0, y0)
        xb, yb = min(W, x0 + mask.shape[1]), min(H, y0 + mask.shape[0])
        if xb <= xa or yb <= ya:
            continue
        sub_mask = mask[ya - y0 : yb - y0, xa - x0 : xb - x0] & inside[ya:yb, xa:xb]
        if not sub_mask.any():
            continue
        pixels[ya:yb, xa:xb] += inten[ya - y0 : yb - y0, xa - x0 : xb - x0] * inside[ya:yb, xa:xb]
        rows = np.flatnonzero(sub_mask.any(axis=1))
        cols = np.flatnonzero(sub_mask.any(axis=0))
        boxes.append([xa + int(cols[0]), ya + int(rows[0]), xa + int(cols[-1]) + 1, ya + int(rows[-1]) + 1])
        labels.append(spec.pathology)
        kinds.append(spec.kind)
    return boxes, labels, kinds


def make_dicom_dataset(
    values_u16: np.ndarray,
    *,
    variant: str = "mono2",
    laterality: str | None = None,
    view: str | None = None,
    patient_id: str = "SYN0000",
    uid_seed: str = "0",
) -> Any:
    """A Digital Mammography (For Presentation) dataset holding ``values_u16`` in one of the variants.

    Variants (``values_u16`` are display values, 0 = black): ``mono2`` (stored as is, no window),
    ``mono1`` (stored inverted, MONOCHROME1), ``window`` (Rescale 0.5/-100 plus a LINEAR window mapping
    display values 0..0.95 to black..white), ``mono1_window`` (inverted storage with a LINEAR_EXACT window
    on the stored values), ``sigmoid`` (a SIGMOID window).

    Returns:
        A ``pydicom.Dataset`` with file meta (explicit VR little endian).
    """
    if variant not in DICOM_VARIANTS:
        raise ValueError(f"unknown DICOM variant {variant!r}; choose from {DICOM_VARIANTS}")
    values = np.asarray(values_u16, dtype=np.uint16)
    ds = _mammogram_header(patient_id, uid_seed)
    if laterality:
        ds.ImageLaterality = laterality
    if view:
        ds.ViewPosition = view
    if (laterality, view) in PATIENT_ORIENTATION:
        ds.PatientOrientation = list(PATIENT_ORIENTATION[(laterality, view)])
    ds.Rows, ds.Columns = int(values.shape[0]), int(values.shape[1])
    ds.SamplesPerPixel = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImagerPixelSpacing = [0.1, 0.1]
    stored = _encode_variant(ds, values, variant)
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2").tobytes()
    return ds


def _mammogram_header(patient_id: str, uid_seed: str) -> Any:
    """File meta, UIDs (deterministic given ``uid_seed``), modality and the synthetic patient."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.2"
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sop", uid_seed])
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", patient_id, uid_seed.split("/")[0]])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", uid_seed])
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientID = patient_id
    return ds


def _encode_variant(ds: Any, values: np.ndarray, variant: str) -> np.ndarray:
    """Set the photometric, rescale and window tags of ``variant`` on ``ds``; returns the stored values."""
    stored = values
    top = 0.95 * 65535.0
    if variant in ("mono1", "mono1_window"):
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PresentationLUTShape = "INVERSE"
        stored = (65535 - values.astype(np.int32)).astype(np.uint16)
    else:
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PresentationLUTShape = "IDENTITY"
    if variant == "window":
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 0.5, -100, "US"
        lo, hi = 0.5 * 0 - 100, 0.5 * top - 100
        ds.WindowCenter, ds.WindowWidth = round((lo + hi) / 2 + 0.5, 3), round(hi - lo + 1, 3)
        ds.VOILUTFunction = "LINEAR"
    elif variant == "mono1_window":
        lo, hi = 65535.0 - top, 65535.0
        ds.WindowCenter, ds.WindowWidth = round((lo + hi) / 2, 3), round(hi - lo, 3)
        ds.VOILUTFunction = "LINEAR_EXACT"
    elif variant == "sigmoid":
        ds.WindowCenter, ds.WindowWidth = round(0.45 * 65535, 1), 65535.0
        ds.VOILUTFunction = "SIGMOID"
    return stored


def write_dicom(path: str | os.PathLike[str], ds: Any, *, jpeg2000: bool = False) -> Path:
    """Write ``ds`` as a DICOM Part 10 file, JPEG 2000 lossless compressed if asked."""
    if jpeg2000:
        from pydicom.uid import JPEG2000Lossless

        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path


def _lesion_spec(rng: np.random.Generator, options: SynthOptions, kind: str, contrast: float) -> LesionSpec:
    return LesionSpec(kind, float(rng.uniform(0.3, 0.7)), float(rng.uniform(-1, 1)),
                      float(rng.uniform(*options.lesion_size)), contrast, int(rng.integers(2**31)))


def _patient_plan(rng: np.random.Generator, options: SynthOptions) -> tuple[str, str | None, list[LesionSpec], float]:
    """Label, lesion breast and lesions of one patient."""
    density = float(rng.uniform(*options.density_range))
    r = rng.uniform()
    if r < options.p_normal:
        return "normal", None, [], density
    label = "benign" if r < options.p_normal + options.p_benign else "malignant"
    side = "L" if rng.uniform() < 0.5 else "R"
    if label == "benign":
        lesions = [_lesion_spec(rng, options, "circumscribed", options.benign_contrast)]
    else:
        if rng.uniform() < options.calc_fraction:
            lesions = [_lesion_spec(rng, options, "calcifications", options.calc_contrast)]
        else:
            lesions = [_lesion_spec(rng, options, "spiculated", options.malignant_contrast)]
        if rng.uniform() < options.p_second_lesion:
            second = _lesion_spec(rng, options, "circumscribed", options.benign_contrast)
            # Keep the two lesions apart: the second one goes to the other half of the breast height.
            h2 = -math.copysign(abs(second.height) * 0.5 + 0.5, lesions[0].height)
            lesions.append(LesionSpec(second.kind, second.depth, h2, second.diameter, second.contrast, second.seed))
    return label, side, lesions, density


def generate_dataset(
    out_dir: str | os.PathLike[str],
    *,
    n_patients: int,
    image_size: tuple[int, int] = (256, 208),
    fmt: str = "png",
    seed: int = 0,
    options: SynthOptions | None = None,
    views: Sequence[str] = ("CC", "MLO"),
    jpeg2000: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic dataset: images under ``out_dir/images`` plus ``out_dir/table.csv``.

    The table follows the generic CSV schema of ``mammodetr prepare --source csv``: one row per lesion box
    (``x1, y1, x2, y2`` pixel corners of the original image, ``lesion_label`` benign/malignant) or one row
    per box-less image (empty box cells). ``label`` is the image label (normal/benign/malignant; an image
    with a malignant lesion is malignant). Paths are relative to the csv. File names carry no patient id.
    ``synth_manifest.json`` records per-image details (variant, density, lesion kinds).

    Args:
        out_dir: Output folder (created).
        n_patients: Number of patients; each gets ``len(views)`` x 2 images.
        image_size: ``(H, W)`` of every image.
        fmt: ``"dicom"`` or ``"png"`` (16-bit).
        seed: Everything is a deterministic function of the seed (patient ``i`` does not depend on
            ``n_patients``).
        options: Generator options.
        views: Views per breast.
        jpeg2000: DICOM only: JPEG 2000 lossless compression.
        progress: Show a tqdm progress bar.

    Returns:
        Path of ``table.csv``.
    """
    options = options or SynthOptions()
    _check_generate_args(n_patients, fmt, jpeg2000, views, options)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    writer = _DatasetWriter(out, int(seed), tuple(image_size), fmt, jpeg2000, options)
    for p in tqdm(range(n_patients), desc="synth", unit="patient", disable=not progress):
        writer.add_patient(p, views)
    table = out / "table.csv"
    with open(table, "w", newline="") as fh:
        csv_writer = csv.DictWriter(fh, fieldnames=list(TABLE_COLUMNS))
        csv_writer.writeheader()
        csv_writer.writerows(writer.rows)
    info = {"seed": seed, "n_patients": n_patients, "image_size": list(image_size), "format": fmt,
            "jpeg2000": jpeg2000, "views": list(views), "options": asdict(options), "images": writer.manifest}
    (out / "synth_manifest.json").write_text(json.dumps(info, indent=1))
    return table


def _check_generate_args(n_patients: int, fmt: str, jpeg2000: bool, views: Sequence[str],
                         options: SynthOptions) -> None:
    if fmt not in ("dicom", "png"):
        raise ValueError(f"fmt must be 'dicom' or 'png', got {fmt!r}")
    if jpeg2000 and fmt != "dicom":
        raise ValueError("jpeg2000 applies to fmt='dicom' only")
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    if any(vw not in ("CC", "MLO") for vw in views):
        raise ValueError(f"views must be CC and/or MLO, got {list(views)}")
    if not 0 <= options.p_normal + options.p_benign <= 1:
        raise ValueError("p_normal + p_benign must lie in [0, 1]")
    for name in ("film_edge", "label_block", "artefact_bias"):
        if not 0 <= getattr(options, name) <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {getattr(options, name)}")
    if not options.film_edge_sides or set(options.film_edge_sides) - set(FILM_EDGE_SIDES):
        raise ValueError(f"film_edge_sides must be some of {', '.join(FILM_EDGE_SIDES)}, got "
                         f"{list(options.film_edge_sides)}")
    if options.marker not in ("letter", "square", "none"):
        raise ValueError(f"marker must be letter, square or none, got {options.marker!r}")


@dataclass
class _DatasetWriter:
    """Renders and writes a synthetic dataset's images, collecting its table rows and manifest entries.

    Attributes:
        out: Output folder (images go to ``out/images``).
        seed: Dataset seed; each patient and view draws from its own generator seeded from it.
        image_size: ``(H, W)`` of every image.
        fmt: ``"dicom"`` or ``"png"``.
        jpeg2000: DICOM only: JPEG 2000 lossless compression.
        options: Generator options.
        rows: table.csv rows so far.
        manifest: synth_manifest.json ``images`` entries so far.
        n_images: Images written so far (numbers the files).
    """

    out: Path
    seed: int
    image_size: tuple[int, int]
    fmt: str
    jpeg2000: bool
    options: SynthOptions
    rows: list[dict[str, Any]] = field(default_factory=list)
    manifest: list[dict[str, Any]] = field(default_factory=list)
    n_images: int = 0

    def add_patient(self, p: int, views: Sequence[str]) -> None:
        """Both breasts of patient ``p`` (0-based), each in ``views``."""
        rng = np.random.default_rng([self.seed, p])
        label, lesion_side, lesions, density = _patient_plan(rng, self.options)
        odds = artefact_chances(self.options, label == "malignant")
        for lat in ("R", "L"):
            breast_density = float(np.clip(density + rng.uniform(-0.05, 0.05), 0, 1))
            for vw in views:
                self._add_image(p, lat, vw, breast_density, lesions if lat == lesion_side else [], odds)

    def _add_image(self, p: int, lat: str, vw: str, density: float, lesions: list[LesionSpec],
                   odds: tuple[float, float]) -> None:
        self.n_images += 1
        img_rng = np.random.default_rng([self.seed, p, 0 if lat == "R" else 1, 0 if vw == "CC" else 1])
        img = render_mammogram(img_rng, self.image_size, view=vw, laterality=lat, density=density,
                               lesions=lesions, options=self.options, artefact_odds=odds)
        rel = f"images/{self.n_images:06d}{'.dcm' if self.fmt == 'dicom' else '.png'}"
        values = to_uint16(img.pixels)
        variant = None
        if self.fmt == "dicom":
            variant = self.options.variants[int(img_rng.integers(len(self.options.variants)))]
            ds = make_dicom_dataset(values, variant=variant, laterality=lat, view=vw, patient_id=f"SYN{p + 1:04d}",
                                    uid_seed=f"{self.seed}/{self.n_images}")
            write_dicom(self.out / rel, ds, jpeg2000=self.jpeg2000)
        else:
            write_png16(self.out / rel, values)
        img_label = "normal"
        if img.lesion_labels:
            img_label = "malignant" if "malignant" in img.lesion_labels else "benign"
        base = {"image_path": rel, "patient_id": f"SYN{p + 1:04d}", "label": img_label, "laterality": lat,
                "view": vw, "study_id": f"STUDY{p + 1:04d}"}
        if len(img.boxes_xyxy_px) == 0:
            self.rows.append({**base, "x1": "", "y1": "", "x2": "", "y2": "", "lesion_label": ""})
        for box, ll in zip(img.boxes_xyxy_px.tolist(), img.lesion_labels, strict=True):
            self.rows.append({**base, "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3], "lesion_label": ll})
        self.manifest.append({"image_path": rel, "label": img_label, "variant": variant,
                              "density": round(density, 3), "lesion_kinds": img.lesion_kinds,
                              "boxes_xyxy_px": img.boxes_xyxy_px.tolist(), "artefacts": img.artefacts})
