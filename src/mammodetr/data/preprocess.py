"""One image from file to prepared pixels: read, crop to the breast, mask the background, optionally flip to one
side, cap the size.

The same function serves ``mammodetr prepare`` (building a dataset) and ``mammodetr predict`` (raw inputs get the
same preprocessing), so a model never sees images prepared two different ways. Every geometric step is recorded
in an :class:`~mammodetr.data.geometry.ImageTransform` mapping ORIGINAL pixels to PREPARED pixels.

Laterality normalisation: ``flip_to="L"`` makes every breast lie on the left of the image (chest wall on the
left), ``"R"`` on the right. Which side a breast lies on is taken, with ``side_source="tag"`` (default), from the
tags (:func:`~mammodetr.data.laterality.chest_wall_side`: DICOM Patient Orientation when present, else the
laterality from the table or DICOM tag under the standard display), or from the pixels (``breast_side``) when
the tags do not tell; ``side_source="image"`` always uses the pixels. When both are known and disagree,
``side_mismatch`` is set so ``prepare`` can report it.

Background masking (``mask_background``, on by default for new datasets): every pixel outside the breast region
(:func:`~mammodetr.data.crop.breast_region`: skin line, pectoral muscle and a margin included) becomes 0, so film
edges, burnt-in labels, markers and rulers cannot be learnt as shortcuts. Lesion boxes given to
:func:`preprocess_pixels` are never masked. Options recorded before masking existed mean "not masked"
(:meth:`PrepareOptions.from_dict`), so an old dataset and its models keep their preparation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Literal, Optional

import numpy as np

from mammodetr.data.crop import breast_region, breast_side, find_breast
from mammodetr.data.geometry import ImageTransform
from mammodetr.data.image import DEFAULT_MAX_PIXELS
from mammodetr.data.io import read_image
from mammodetr.data.laterality import chest_wall_side, normalise_laterality

__all__ = ["PrepareOptions", "PreparedImage", "preprocess_image", "preprocess_pixels", "apply_background_mask",
           "capped_size_hw"]

_SIDES = ("L", "R")


@dataclass(frozen=True)
class PrepareOptions:
    """How raw images are turned into prepared images.

    Attributes:
        crop: crop to the breast (``find_breast``); False keeps the whole image.
        crop_margin: margin added on each side of the breast box, as a fraction of the image height/width.
        flip_to: "L" | "R" | None — flip so every breast lies on this side of the image; None keeps the side.
        side_source: "tag" (Patient Orientation, else laterality, else the pixels) or "image" (always the pixels).
        max_side: cap on the long side of the prepared image (downscaled, never upscaled); None keeps the size.
        resize_filter: Pillow filter for the downscale ("lanczos", "bicubic", "bilinear", "box", ...).
        allow_for_processing: accept DICOM "FOR PROCESSING" images (refused by default).
        frame: frame (TIFF: page) of multi-frame files, from 0; single-frame files ignore it; None refuses them.
        max_pixels: refuse images with more decoded pixels than this.
        mask_background: set pixels outside the breast region to 0 (film edges, labels, markers); boxes are kept.
        mask_margin: the breast region's dilation before masking, as a fraction of the image's long side.
    """

    # What a field added later means when a stored record lacks it: datasets prepared before masking existed
    # were not masked.
    LEGACY: ClassVar[dict] = {"mask_background": False}

    crop: bool = True
    crop_margin: float = 0.02
    flip_to: Optional[Literal["L", "R"]] = None
    side_source: Literal["tag", "image"] = "tag"
    max_side: Optional[int] = 2048
    resize_filter: str = "bicubic"
    allow_for_processing: bool = False
    frame: Optional[int] = field(default=None, metadata={"min": 0})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"min": 1})
    mask_background: bool = True
    mask_margin: float = 0.01

    def __post_init__(self) -> None:
        flip = self.flip_to
        if isinstance(flip, str):
            flip = None if flip.lower() in ("", "none") else flip.upper()
        object.__setattr__(self, "flip_to", flip)
        if flip not in (None, "L", "R"):
            raise ValueError(f"flip_to must be 'L', 'R' or None, got {self.flip_to!r}")
        if self.side_source not in ("tag", "image"):
            raise ValueError(f"side_source must be 'tag' or 'image', got {self.side_source!r}")
        if self.max_side is not None and int(self.max_side) < 8:
            raise ValueError(f"max_side must be at least 8, got {self.max_side}")
        if not 0.0 <= float(self.crop_margin) < 0.5:
            raise ValueError(f"crop_margin must be in [0, 0.5), got {self.crop_margin}")
        if self.frame is not None and int(self.frame) < 0:
            raise ValueError(f"frame must be a non-negative frame number, got {self.frame}")
        if int(self.max_pixels) < 1:
            raise ValueError(f"max_pixels must be at least 1, got {self.max_pixels}")
        if not 0.0 <= float(self.mask_margin) < 0.5:
            raise ValueError(f"mask_margin must be in [0, 0.5), got {self.mask_margin}")

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """The options that decide the prepared pixels, as a dict that stays the same across versions.

        Masking fields are left out while masking is off, so a dataset prepared before they existed keeps its
        options hash (and its images are reused, not prepared again).
        """
        d = self.to_dict()
        if not self.mask_background:
            d.pop("mask_background")
            d.pop("mask_margin")
        return d

    @classmethod
    def upgraded(cls, data: dict) -> dict:
        """A stored options dict with the fields it predates filled in with what their absence meant."""
        return {**cls.LEGACY, **data}

    @classmethod
    def from_dict(cls, data: dict) -> "PrepareOptions":
        """Options from a stored record; a record written before a field existed gets :attr:`LEGACY`'s value."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown prepare options: {', '.join(sorted(unknown))}")
        return cls(**cls.upgraded(data))


@dataclass
class PreparedImage:
    """The result of :func:`preprocess_image`.

    Attributes:
        pixels: (H', W') float32 in [0, 1], the prepared image.
        transform: original pixels -> prepared pixels.
        laterality: "L" | "R" | None — the breast's laterality (given, else from the DICOM tag).
        view: "CC" | "MLO" | ... | None.
        crop_fallback: True when the breast crop fell back to the whole image.
        crop_reason: ``find_breast``'s explanation (empty when cropping is off).
        breast_side: side of the ORIGINAL image the breast lies on ("L"/"R"), when it was computed.
        side_mismatch: laterality and pixels disagree about the side (only checked when flipping).
        meta: reader metadata (bits, photometric, transfer syntax; never patient identifiers).
        background_mask: what masking did (:func:`apply_background_mask`); None when ``mask_background`` is off.
    """

    pixels: np.ndarray
    transform: ImageTransform
    laterality: Optional[str] = None
    view: Optional[str] = None
    crop_fallback: bool = False
    crop_reason: str = ""
    breast_side: Optional[str] = None
    side_mismatch: bool = False
    meta: dict = field(default_factory=dict)
    background_mask: Optional[dict] = None


def capped_size_hw(size_hw: tuple[int, int], max_side: Optional[int]) -> tuple[int, int]:
    """The size after scaling so the long side is at most ``max_side`` (aspect ratio kept, never upscaled)."""
    h, w = size_hw
    if max_side is None or max(h, w) <= max_side:
        return (h, w)
    scale = max_side / max(h, w)
    return (max(1, int(round(h * scale))), max(1, int(round(w * scale))))


def _box_slices(box_xyxy: Sequence[float], size_hw: tuple[int, int]) -> Optional[tuple[slice, slice]]:
    """The pixels a box touches (outward-rounded, clipped), as ``(rows, cols)``; None for an empty or bad box."""
    b = np.asarray(box_xyxy, dtype=np.float64)
    if b.shape != (4,) or not np.isfinite(b).all():
        return None
    h, w = size_hw
    x1, y1 = max(0, int(np.floor(b[0]))), max(0, int(np.floor(b[1])))
    x2, y2 = min(w, int(np.ceil(b[2]))), min(h, int(np.ceil(b[3])))
    return (slice(y1, y2), slice(x1, x2)) if x2 > x1 and y2 > y1 else None


def apply_background_mask(pixels: np.ndarray, *, margin: float = 0.01, keep_boxes_xyxy: Sequence[Sequence[float]] = (),
                    within_xyxy: Optional[Sequence[int]] = None) -> tuple[np.ndarray, dict]:
    """Set every pixel outside the breast region to 0, except inside the given boxes.

    Args:
        pixels: (H, W) float image in [0, 1], brighter = denser.
        margin: the region's dilation (:func:`~mammodetr.data.crop.breast_region`).
        keep_boxes_xyxy: boxes in these pixels (e.g. lesions) that stay untouched even where they reach outside.
        within_xyxy: the part of the image that is kept afterwards (the crop box), for the masked fraction.

    Returns:
        ``(pixels, record)``: the masked image (the input itself when no region was found) and ``{"applied",
        "fraction" (of the pixels within ``within_xyxy`` set to 0), "reason" (why not applied), "film_edges",
        "boxes_outside_mask" (boxes that reached outside the region and were kept)}``.
    """
    region = breast_region(pixels, margin=margin)
    if region.mask is None:
        return pixels, {"applied": False, "fraction": 0.0, "reason": region.reason,
                        "film_edges": list(region.film_edges), "boxes_outside_mask": 0}
    keep = region.mask.copy()
    outside = 0
    for box in keep_boxes_xyxy:
        cells = _box_slices(box, pixels.shape)
        if cells is not None and not keep[cells].all():
            outside += 1
            keep[cells] = True
    x0, y0, x1, y1 = within_xyxy if within_xyxy is not None else (0, 0, pixels.shape[1], pixels.shape[0])
    fraction = 1.0 - float(keep[y0:y1, x0:x1].mean()) if y1 > y0 and x1 > x0 else 0.0
    masked = np.where(keep, pixels, np.zeros((), pixels.dtype))
    return masked, {"applied": True, "fraction": round(fraction, 4), "reason": "",
                    "film_edges": list(region.film_edges), "boxes_outside_mask": outside}


def preprocess_pixels(
    pixels: np.ndarray,
    options: PrepareOptions,
    *,
    laterality: Optional[str] = None,
    view: Optional[str] = None,
    meta: Optional[dict] = None,
    keep_boxes_xyxy: Sequence[Sequence[float]] = (),
) -> PreparedImage:
    """Crop, mask, flip and cap already-read pixels (see :func:`preprocess_image`).

    Args:
        pixels: (H, W) float32 in [0, 1] as returned by ``read_image``.
        options: the preparation options.
        laterality: the breast's laterality if known ("L"/"R").
        view: the view if known.
        meta: reader metadata to pass through.
        keep_boxes_xyxy: lesion boxes in these pixels, never masked (``prepare`` passes the ground truth;
            prediction has none).
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    transform = ImageTransform(pixels.shape[:2])
    crop_fallback, crop_reason = False, ""
    side_from_image: Optional[str] = None
    crop_box = (0, 0, pixels.shape[1], pixels.shape[0])
    if options.crop:
        found = find_breast(pixels, margin=options.crop_margin)
        crop_fallback, crop_reason = bool(found.fallback), str(found.reason)
        side_from_image = getattr(found, "side", None)
        x0, y0, x1, y1 = crop_box = tuple(int(v) for v in found.box_xyxy)
        if (x0, y0, x1, y1) != (0, 0, pixels.shape[1], pixels.shape[0]):
            transform = transform.crop(x0, y0, x1, y1)
    masking = None
    if options.mask_background:
        # The side and the crop come from the unmasked pixels, so masking never changes the geometry.
        masked, masking = apply_background_mask(pixels, margin=options.mask_margin, keep_boxes_xyxy=keep_boxes_xyxy,
                                          within_xyxy=crop_box)
    else:
        masked = pixels

    laterality = normalise_laterality(laterality)
    side_mismatch = False
    if options.flip_to is not None:
        if side_from_image is None:
            side_from_image = breast_side(pixels)
        tag_side, _ = chest_wall_side(laterality, (meta or {}).get("patient_orientation"))
        side_mismatch = tag_side is not None and side_from_image is not None and tag_side != side_from_image
        side = tag_side if (options.side_source == "tag" and tag_side is not None) else side_from_image
        if side in _SIDES and side != options.flip_to:
            transform = transform.hflip()

    out_hw = capped_size_hw(transform.output_size_hw, options.max_side)
    if out_hw != transform.output_size_hw:
        transform = transform.resize(out_hw, options.resize_filter)

    # read_image gives [0, 1] and the resize clips its overshoot to the input range, so no clip is needed here.
    prepared = transform.apply_image(masked)
    return PreparedImage(
        pixels=prepared,
        transform=transform,
        laterality=laterality,
        view=view,
        crop_fallback=crop_fallback,
        crop_reason=crop_reason,
        breast_side=side_from_image,
        side_mismatch=side_mismatch,
        meta=dict(meta or {}),
        background_mask=masking,
    )


def preprocess_image(
    path: str | Path,
    options: PrepareOptions = PrepareOptions(),
    *,
    laterality: Optional[str] = None,
    view: Optional[str] = None,
    keep_boxes_xyxy: Sequence[Sequence[float]] = (),
) -> PreparedImage:
    """Read an image file and prepare it: read -> breast crop -> background mask -> optional side flip -> long
    side capped.

    Args:
        path: DICOM, PNG, TIFF, PGM or JPEG file.
        options: the preparation options.
        laterality: the breast's laterality from a table; overrides the DICOM tag when given.
        view: the view from a table; overrides the DICOM tag when given.
        keep_boxes_xyxy: lesion boxes in the file's pixels, never masked.

    Returns:
        A :class:`PreparedImage` whose ``transform`` maps original pixels to prepared pixels.

    Raises:
        mammodetr.data.io.ImageReadError: the file cannot be read (message names the file and the problem).
    """
    loaded = read_image(
        path,
        frame=options.frame,
        allow_for_processing=options.allow_for_processing,
        max_pixels=options.max_pixels,
    )
    return preprocess_pixels(
        loaded.pixels,
        options,
        laterality=laterality if normalise_laterality(laterality) else loaded.laterality,
        view=view or loaded.view,
        meta=loaded.meta,
        keep_boxes_xyxy=keep_boxes_xyxy,
    )
