"""Tissue detection on one low-resolution level of a slide.

:func:`detect_tissue_rgb` is the pure-array core (RGB uint8 in, boolean mask out);
:func:`detect_tissue` picks and reads the level, runs the core and returns a
:class:`~wsi_ai.tissue.mask.TissueMask` with polygons in level-0 pixels.

Brightfield (bright glass): tissue is what is coloured. Saturation (OpenCV HSV, 0-255, lightly
smoothed) gets two thresholds, as in hysteresis thresholding: a *strong* one, Otsu on the
non-dark, non-ink pixels clamped into ``[SAT_STRONG_MIN, SAT_STRONG_MAX]`` (Otsu alone tends to
split stained tissue in two, and means nothing on an almost-empty or almost-full slide), and a
*weak* one, ``WEAK_MARGIN`` above the glass peak but at least ``SAT_WEAK_MIN``. Pale tissue
above the weak threshold counts when its region (after clean-up) holds strongly coloured
pixels; faint specks and smudges on the glass do not. Excluded before thresholding:

* near-black pixels (value < ``DARK_VALUE``) and greyish ones (chroma, max - min of RGB, below
  ``MIN_CHROMA``): slide borders, scanner padding, black and grey ink, dust;
* pen marks, conservatively: saturated green to cyan hues (OpenCV hue 35-87, saturation >= 50:
  a colour H&E never has) and strongly saturated blue (hue 88-114, saturation >= 110;
  hematoxylin is blue-purple, hue about 118-140, and keratin's pale blue is far less
  saturated), plus the paler rim of such strokes (hue 35-125 at any saturation within
  ``PEN_HALO_UM`` of a stroke, so tissue right next to a stroke may lose that rim).
  *Not* caught: red, pink or purple ink (it looks like H&E), pale blue ink below that
  saturation, and tissue under a stroke, which is lost with the stroke. Green or blue
  tissue-marking dye is treated like ink.

Fluorescence (dark background): the brightest channel is smoothed (Gaussian, ``FLUO_SMOOTH_UM``)
so nuclei and the faint autofluorescence between them merge into one region, and Otsu is taken
on its logarithm (background, autofluorescent tissue and nuclei span decades), with the
threshold kept at or above ``FLUO_MIN_LEVEL`` so an empty dark slide gives no tissue.

Both then get the same clean-up, with sizes in µm converted to mask pixels: closing, opening,
filling holes smaller than ``max_hole_area_um2`` and dropping regions smaller than
``min_tissue_area_um2``. Without an MPP, sizes scale with the image instead, as if its longer
side were ``FALLBACK_SIDE`` px (the values in the ``*_PX`` constants).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np
from numpy.typing import NDArray

from wsi_ai.errors import ParameterError
from wsi_ai.slide.slide import detect_modality
from wsi_ai.tissue.mask import TissueMask
from wsi_ai.tissue.polygons import mask_to_polygons

if TYPE_CHECKING:
    from wsi_ai.slide.metadata import Modality
    from wsi_ai.slide.slide import Slide

log = logging.getLogger(__name__)

# 2-D uint8 masks (0/1 or 0/255) as OpenCV hands them back.
Mask8 = NDArray[Any]

METHODS = ("auto", "brightfield", "fluorescence")

# Level choice: mask longest side bounds (px) and the no-MPP target.
MIN_MASK_SIDE = 512
MAX_MASK_SIDE = 8192
FALLBACK_SIDE = 2048
# A level this much larger than needed is shrunk while it is read (bounded memory).
OVERSIZE = 1.5

# Brightfield thresholds on OpenCV's HSV scales (H 0-180, S and V 0-255).
DARK_VALUE = 45
MIN_CHROMA = 10
SAT_STRONG_MIN, SAT_STRONG_MAX = 25, 40
SAT_WEAK_MIN, WEAK_MARGIN = 15, 10
GREEN_HUE = (35, 88)
GREEN_SAT = 50
BLUE_HUE = (88, 115)
BLUE_SAT = 110
# Next to a stroke, ink blended with glass or tissue drifts towards purple: up to this hue.
HALO_HUE_MAX = 125

# Fluorescence: smoothing and the lowest threshold, on the 0-255 brightest channel.
FLUO_SMOOTH_UM = 10.0
FLUO_MIN_LEVEL = 6.0

# Morphology, in µm (radii) and µm² (areas).
CLOSE_UM = 16.0
OPEN_UM = 8.0
PEN_HALO_UM = 24.0
MAX_HOLE_AREA_UM2 = 5_000.0
MIN_TISSUE_AREA_UM2 = 10_000.0
# The same without an MPP, in px of an image whose longer side is FALLBACK_SIDE px.
CLOSE_PX, OPEN_PX, PEN_HALO_PX, FLUO_SMOOTH_PX = 2.0, 1.0, 3.0, 1.5
MAX_HOLE_AREA_PX, MIN_TISSUE_AREA_PX = 80.0, 200.0


@dataclass(frozen=True)
class _Sizes:
    """Morphology sizes in image pixels."""

    close: float
    open: float
    pen_halo: float
    smooth: float
    max_hole: float
    min_area: float


def _sizes(
    shape: tuple[int, ...],
    mpp: float | None,
    min_tissue_area_um2: float,
    max_hole_area_um2: float,
    min_tissue_area_px: float | None,
) -> _Sizes:
    if mpp is not None:
        if not mpp > 0:
            raise ParameterError(f"mpp must be a positive number of µm per pixel, got {mpp}")
        px2 = mpp * mpp
        sizes = _Sizes(
            CLOSE_UM / mpp,
            OPEN_UM / mpp,
            PEN_HALO_UM / mpp,
            FLUO_SMOOTH_UM / mpp,
            max_hole_area_um2 / px2,
            min_tissue_area_um2 / px2,
        )
    else:
        k = max(shape[0], shape[1]) / FALLBACK_SIDE
        sizes = _Sizes(
            CLOSE_PX * k,
            OPEN_PX * k,
            PEN_HALO_PX * k,
            FLUO_SMOOTH_PX * k,
            MAX_HOLE_AREA_PX * k * k,
            MIN_TISSUE_AREA_PX * k * k,
        )
    if min_tissue_area_px is not None:
        sizes = replace(sizes, min_area=min_tissue_area_px)
    return sizes


def detect_tissue_rgb(
    image: NDArray[np.uint8],
    modality: str,
    *,
    mpp: float | None = None,
    min_tissue_area_um2: float = MIN_TISSUE_AREA_UM2,
    max_hole_area_um2: float = MAX_HOLE_AREA_UM2,
    min_tissue_area_px: float | None = None,
) -> NDArray[np.bool_]:
    """Tissue mask (True = tissue) of an RGB uint8 ``(h, w, 3)`` image.

    ``modality`` is ``"brightfield"`` or ``"fluorescence"``. ``mpp`` is the image's own
    resolution in µm per pixel; areas are in µm². Without ``mpp``, sizes scale with the
    image (see the module docstring). ``min_tissue_area_px`` (image px²) overrides the
    minimum region area.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ParameterError(f"image must be RGB uint8 (h, w, 3), got {image.dtype} {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ParameterError(f"image is empty: {image.shape}")
    sizes = _sizes(image.shape, mpp, min_tissue_area_um2, max_hole_area_um2, min_tissue_area_px)
    seeds: Mask8 | None = None
    if modality == "brightfield":
        raw, seeds = brightfield_foreground(np.ascontiguousarray(image), sizes.pen_halo)
    elif modality == "fluorescence":
        raw = fluorescence_foreground(image, sizes.smooth)
    else:
        raise ParameterError(f"modality must be 'brightfield' or 'fluorescence', got {modality!r}")
    return clean_mask(raw, sizes, seeds) > 0


# -- thresholds ------------------------------------------------------------------------------
def otsu_threshold(hist: NDArray[Any]) -> float:
    """Otsu's threshold (bin index; foreground is ``> threshold``) of a histogram."""
    counts = np.asarray(hist, dtype=np.float64).ravel()
    total = counts.sum()
    if total <= 0:
        return 0.0
    bins = np.arange(counts.size, dtype=np.float64)
    w0 = np.cumsum(counts)
    m0 = np.cumsum(counts * bins)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - total * m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    best = np.flatnonzero(between == between.max())
    return float(best.mean())


def _disk(radius: float) -> Mask8:
    r = max(1, round(radius))
    return cast(Mask8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))


def _above(channel: Mask8, threshold: float) -> Mask8:
    """0/255 mask of ``channel > threshold``."""
    return cast(Mask8, cv2.threshold(channel, threshold, 255, cv2.THRESH_BINARY)[1])


def brightfield_foreground(image: NDArray[np.uint8], pen_halo_px: float) -> tuple[Mask8, Mask8]:
    """(candidates, seeds) of a brightfield RGB image, 0/255 masks, before clean-up.

    Candidates are coloured (above the weak saturation threshold), lit and not ink; seeds are
    above the strong threshold. Only candidate regions that hold a seed are kept as tissue.
    """
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hue, sat, val = cv2.split(hsv)
    ink = cv2.bitwise_or(
        cv2.inRange(hsv, (GREEN_HUE[0], GREEN_SAT, 0), (GREEN_HUE[1] - 1, 255, 255)),
        cv2.inRange(hsv, (BLUE_HUE[0], BLUE_SAT, 0), (BLUE_HUE[1] - 1, 255, 255)),
    )
    lit = cv2.bitwise_and(_above(val, DARK_VALUE - 1), cv2.bitwise_not(ink))
    smooth = cv2.GaussianBlur(sat, (0, 0), 1.0)
    hist = cv2.calcHist([smooth], [0], lit, [256], [0, 256]).ravel()
    strong_t, weak_t = saturation_thresholds(hist)
    chroma = cv2.subtract(val, cv2.min(cv2.min(image[..., 0], image[..., 1]), image[..., 2]))
    weak = cv2.bitwise_and(_above(smooth, weak_t), lit)
    weak = cv2.bitwise_and(weak, _above(chroma, MIN_CHROMA - 1))
    if cv2.countNonZero(ink):
        # The paler rim of a pen stroke: ink hues within a few pixels of a stroke.
        near_ink = cv2.dilate(ink, _disk(pen_halo_px))
        inky = cv2.inRange(hue, GREEN_HUE[0], HALO_HUE_MAX)
        weak = cv2.bitwise_and(weak, cv2.bitwise_not(cv2.bitwise_and(near_ink, inky)))
    return weak, cv2.bitwise_and(_above(smooth, strong_t), weak)


def saturation_thresholds(hist: NDArray[Any]) -> tuple[float, float]:
    """(strong, weak) saturation thresholds from the non-dark, non-ink pixels' histogram.

    Strong is Otsu clamped into ``[SAT_STRONG_MIN, SAT_STRONG_MAX]``; weak sits ``WEAK_MARGIN``
    above the glass peak (the histogram's mode below strong), at least ``SAT_WEAK_MIN``.
    """
    hist = np.asarray(hist, dtype=np.float64).ravel()
    if hist.sum() < 64:
        return float(SAT_STRONG_MAX), float(SAT_STRONG_MAX)
    strong = min(max(otsu_threshold(hist), SAT_STRONG_MIN), SAT_STRONG_MAX)
    glass = float(np.argmax(hist[: int(strong)]))
    weak = min(max(glass + WEAK_MARGIN, SAT_WEAK_MIN), strong)
    return float(strong), float(weak)


def fluorescence_foreground(image: NDArray[np.uint8], smooth_px: float) -> Mask8:
    """0/255 mask of pixels brighter than the dark background, before clean-up."""
    brightest: NDArray[Any] = cv2.max(cv2.max(image[..., 0], image[..., 1]), image[..., 2])
    brightest = brightest.astype(np.float32)
    if smooth_px > 0.3:
        brightest = cv2.GaussianBlur(brightest, (0, 0), smooth_px)
    # Log scale: 256 bins over log1p(0..255).
    scaled = np.log1p(brightest) * np.float32(255.0 / math.log1p(255.0))
    levels = np.clip(scaled, 0, 255).astype(np.uint8)
    threshold = otsu_threshold(cv2.calcHist([levels], [0], None, [256], [0, 256]))
    floor = math.log1p(FLUO_MIN_LEVEL) * (255.0 / math.log1p(255.0))
    return np.where(scaled > max(threshold, floor), np.uint8(255), np.uint8(0))


# -- clean-up --------------------------------------------------------------------------------
def clean_mask(mask: Mask8, sizes: _Sizes, seeds: Mask8 | None = None) -> Mask8:
    """Close, open, fill small holes, then keep regions of at least ``sizes.min_area`` px
    (8-connected) that hold a ``seeds`` pixel if ``seeds`` is given; 0/1 uint8 out."""
    m = cv2.threshold(np.ascontiguousarray(mask, dtype=np.uint8), 0, 1, cv2.THRESH_BINARY)[1]
    if sizes.close >= 0.5:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disk(sizes.close))
    if sizes.open >= 0.5:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(sizes.open))
    m = fill_holes(m, sizes.max_hole)
    n, labels = cv2.connectedComponents(m, connectivity=8)
    keep = np.bincount(labels.ravel(), minlength=n) >= sizes.min_area
    if seeds is not None:
        seeded = np.zeros(n, dtype=bool)
        seeded[labels[seeds > 0]] = True
        keep &= seeded
    keep[0] = False
    if keep[1:].all():
        return m
    return keep.astype(np.uint8)[labels]


def fill_holes(mask: Mask8, max_area: float) -> Mask8:
    """0/1 ``mask`` with enclosed background regions of at most ``max_area`` px filled."""
    if max_area <= 0:
        return mask
    background = cv2.threshold(mask, 0, 1, cv2.THRESH_BINARY_INV)[1]
    n, labels = cv2.connectedComponents(background, connectivity=4)
    # (Label areas by bincount: OpenCV's WithStats variant is several times slower.)
    fill = np.bincount(labels.ravel(), minlength=n) <= max_area
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        fill[edge] = False  # background touching the image edge is not a hole
    fill[0] = False  # label 0 is the mask itself
    if not fill.any():
        return mask
    return mask | fill.astype(np.uint8)[labels]


# -- slides ----------------------------------------------------------------------------------
def plan_read(slide: Slide, target_mpp: float, level: int | None = None) -> tuple[int, int | None]:
    """(level, max_size) to read for a mask at about ``target_mpp`` µm/px.

    The coarsest level at least as fine as ``target_mpp`` (keeping the mask's longer side in
    ``[MIN_MASK_SIDE, MAX_MASK_SIDE]`` px); without an MPP the level whose longer side is
    closest above ``FALLBACK_SIDE`` px. ``max_size`` (for :meth:`Slide.read_level`) is set when
    that level is more than ``OVERSIZE`` times bigger than needed (a single-level slide).
    """
    longest = max(slide.dimensions)
    if level is None:
        if slide.mpp is not None:
            if not target_mpp > 0:
                raise ParameterError(
                    f"target_mpp must be a positive number of µm per pixel, got {target_mpp}"
                )
            target_ds = target_mpp / slide.mpp.mean
            target_ds = min(target_ds, longest / MIN_MASK_SIDE)
            target_ds = max(target_ds, longest / MAX_MASK_SIDE)
        else:
            target_ds = longest / FALLBACK_SIDE
        target_ds = max(1.0, target_ds)
        level = slide.best_level_for_downsample(target_ds)
    else:
        if not 0 <= level < slide.level_count:
            raise ParameterError(
                f"level {level} out of range: the slide has levels 0..{slide.level_count - 1}",
                slide.path,
            )
        target_ds = max(slide.level_downsamples[level], longest / MAX_MASK_SIDE)
    want = max(1, math.ceil(longest / target_ds))
    have = max(slide.levels[level].dimensions)
    return level, (want if have > want * OVERSIZE else None)


def detect_tissue(
    slide: Slide,
    *,
    target_mpp: float = 8.0,
    level: int | None = None,
    min_tissue_area_um2: float = MIN_TISSUE_AREA_UM2,
    max_hole_area_um2: float = MAX_HOLE_AREA_UM2,
    min_tissue_area_px: float | None = None,
    method: str = "auto",
) -> TissueMask:
    """Detect tissue on one low-resolution level of ``slide``; polygons in level-0 px.

    ``target_mpp`` (µm/px) is the mask resolution aimed at; ``level`` forces a level.
    ``method`` is ``"auto"`` (the rule of :attr:`Slide.modality`, applied to the level read),
    ``"brightfield"`` or ``"fluorescence"``.
    Areas are in µm²; when the slide has no MPP, sizes scale with the mask (see the module
    docstring) and ``min_tissue_area_px`` (level-0 px²), if given, sets the smallest region.
    """
    if method not in METHODS:
        raise ParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    level, max_size = plan_read(slide, target_mpp, level)
    image = slide.read_level(level, max_size)
    if method == "auto":
        # Slide.modality's rule, on the pixels already read (its thumbnail would be a second
        # full read of a single-level slide); every k-th pixel is plenty for two fractions.
        k = max(1, math.ceil(max(image.shape[:2]) / 512))
        modality = detect_modality(image[::k, ::k])
    else:
        modality = cast("Modality", method)
    width, height = slide.dimensions
    ds = (width / image.shape[1], height / image.shape[0])
    mask_mpp = None if slide.mpp is None else slide.mpp.mean * (ds[0] + ds[1]) / 2
    min_px = None if min_tissue_area_px is None else min_tissue_area_px / (ds[0] * ds[1])
    log.debug("%s: tissue on level %d read at %s px", slide.path.name, level, image.shape[:2])
    mask = detect_tissue_rgb(
        image,
        modality,
        mpp=mask_mpp,
        min_tissue_area_um2=min_tissue_area_um2,
        max_hole_area_um2=max_hole_area_um2,
        min_tissue_area_px=min_px,
    )
    return TissueMask(
        mask=mask,
        downsample=ds,
        polygons=mask_to_polygons(mask, ds),
        modality=modality,
        level=level,
        mpp=None if slide.mpp is None else (slide.mpp.x, slide.mpp.y),
    )
