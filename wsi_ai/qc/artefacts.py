"""Pen ink and air bubbles on a low-resolution slide image, and how much tissue they cover.

Thresholds (OpenCV scales: H 0-180, S and V 0-255) and how they were chosen:

* **Pen.** Ink is a colour H&E never has, as in the tissue stage: green to cyan (hue 35-87,
  S >= 50), strongly saturated blue (hue 88-114, S >= 110; hematoxylin is blue-purple at hue
  118-140 and far less saturated), and black (V <= 80 with S < 80; the darkest hematoxylin on
  CMU-1 is V 35-50 but S >= 130, and a thin black stroke on the synthetic benchmark slide
  reads V 63 at 8 µm/px). Black regions thicker than about 50 µm that touch the image edge
  are a dark slide frame, not ink, and are left out (with ``FRAME_UM`` around them).
  Components under ``PEN_MIN_AREA_UM2`` = 0.02 mm² are dropped: dust specks (CAMELYON's
  reach 0.0002 mm²) are far smaller than any marker stroke (0.3-1 mm wide). Red, pink and
  purple ink look like H&E and are not caught; strokes thinner than about two pixels of the
  low-resolution image blend into the glass and may be missed.
* **Bubbles.** Conservative. An air bubble under the coverslip shows as a thin *grey* closed
  outline: achromatic (S < 50) and darker than glass or pale tissue (V < 190), with brighter
  contents. Stained tissue is never achromatic, so clean tissue has no such outline. A bubble
  is a region enclosed by outline pixels (after closing gaps of about 2 µm) whose convex hull
  is 0.005-25 mm² (and under a quarter of the image) and which fills at least
  ``BUBBLE_SOLIDITY`` = 75 % of that hull; the outline must run round at least
  ``RIM_COVERAGE`` = 75 % of the hull (within a pixel), be grey rather than black (median
  V > 80, the black-ink level: a closed black line is the pen circle pathologists draw round
  tumour), and be at least ``BUBBLE_CONTRAST`` = 25 levels of V darker than the contents. The
  bubble is the hull plus its outline. Not detected: bubbles with a broken or coloured
  outline, outlines thinner than a pixel of the low-resolution image, and coverslip edges (an
  open line: which side lacks a coverslip cannot be told from the line alone). On the four
  brightfield slides of the shared test data (CMU-1, TCGA, CAMELYON, a skin TIFF) it finds
  nothing.
* **Fractions.** ``pen_fraction`` and ``bubble_fraction`` are the share of the *tissue region*
  that the artefact covers: artefact pixels on or within ``ADJACENT_UM`` = 50 µm of the tissue
  mask, over (tissue mask ∪ those pixels). The union matters because the tissue stage cuts
  ink out of the mask; ink or bubbles out on the glass do not count (they are still exported
  as annotations).
"""

from __future__ import annotations

import cv2
import numpy as np

from wsi_ai.qc.pixels import BoolMask, RGBImage, disk, hsv_planes

# Pen ink, OpenCV HSV.
GREEN_HUE, GREEN_SAT = (35, 88), 50
BLUE_HUE, BLUE_SAT = (88, 115), 110
BLACK_VALUE, BLACK_SAT = 80, 80
PEN_MIN_AREA_UM2 = 20_000.0
FRAME_UM = 24.0
# Bubbles, OpenCV HSV and µm.
RIM_SAT, RIM_VALUE = 50, 190
RIM_MIN_VALUE = BLACK_VALUE
RIM_CLOSE_UM = 2.0
RIM_BAND_UM = 4.0
RIM_COVERAGE = 0.75
BUBBLE_CONTRAST = 25.0
BUBBLE_SOLIDITY = 0.75
BUBBLE_AREA_UM2 = (5_000.0, 25_000_000.0)
BUBBLE_MAX_IMAGE_FRACTION = 0.25
# Artefacts this close to the tissue mask count against the tissue (µm).
ADJACENT_UM = 50.0


def ink_pixels(rgb: RGBImage) -> BoolMask:
    """Pixels of green, cyan, blue or black ink (the HSV rules of the module docstring)."""
    hue, sat, val = hsv_planes(rgb)
    green = (hue >= GREEN_HUE[0]) & (hue < GREEN_HUE[1]) & (sat >= GREEN_SAT)
    blue = (hue >= BLUE_HUE[0]) & (hue < BLUE_HUE[1]) & (sat >= BLUE_SAT)
    black = (val <= BLACK_VALUE) & (sat < BLACK_SAT)
    return np.asarray(green | blue | black)


def _drop_small(mask: BoolMask, min_px: float, connectivity: int = 8) -> BoolMask:
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=connectivity)
    keep = np.bincount(labels.ravel(), minlength=n) >= min_px
    keep[0] = False
    return np.asarray(keep[labels])


def pen_mask(rgb: RGBImage, mpp: float) -> BoolMask:
    """Pen ink on a low-resolution RGB image at ``mpp`` µm/px.

    Ink pixels (:func:`ink_pixels`) less the dark frame some scans have (black regions thicker
    than ``2 * FRAME_UM`` that touch the image border, and ``FRAME_UM`` around them), gaps of
    a pixel closed, components under ``PEN_MIN_AREA_UM2`` dropped. A black stroke that runs
    into such a frame keeps all but its last ``FRAME_UM``.
    """
    hue, sat, val = hsv_planes(rgb)
    green = (hue >= GREEN_HUE[0]) & (hue < GREEN_HUE[1]) & (sat >= GREEN_SAT)
    blue = (hue >= BLUE_HUE[0]) & (hue < BLUE_HUE[1]) & (sat >= BLUE_SAT)
    black = (val <= BLACK_VALUE) & (sat < BLACK_SAT)
    if black.any():
        frame_px = FRAME_UM / mpp
        thick = cv2.morphologyEx(black.astype(np.uint8), cv2.MORPH_OPEN, disk(frame_px))
        n, labels = cv2.connectedComponents(thick, connectivity=8)
        at_border = np.zeros(n, dtype=bool)
        for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            at_border[edge] = True
        at_border[0] = False
        if at_border.any():
            frame = at_border[labels].astype(np.uint8)
            black &= ~(cv2.dilate(frame, disk(frame_px + 1)) > 0)
    ink = cv2.morphologyEx((green | blue | black).astype(np.uint8), cv2.MORPH_CLOSE, disk(1))
    return _drop_small(ink > 0, PEN_MIN_AREA_UM2 / (mpp * mpp))


def bubble_mask(rgb: RGBImage, mpp: float, exclude: BoolMask | None = None) -> BoolMask:
    """Air bubbles on a low-resolution RGB image at ``mpp`` µm/px (the heuristic of the module
    docstring): convex regions ringed by a grey outline, with that outline. ``exclude`` (pen
    ink, say) is never outline."""
    _, sat, val = hsv_planes(rgb)
    rim = (sat < RIM_SAT) & (val < RIM_VALUE)
    if exclude is not None:
        rim &= ~exclude
    out = np.zeros(rim.shape, dtype=bool)
    if not rim.any():
        return out
    rim8 = cv2.morphologyEx(rim.astype(np.uint8), cv2.MORPH_CLOSE, disk(RIM_CLOSE_UM / mpp))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - rim8, connectivity=4)
    height, width = rim.shape
    px_um2 = mpp * mpp
    lo, hi = BUBBLE_AREA_UM2[0] / px_um2, BUBBLE_AREA_UM2[1] / px_um2
    hi = min(hi, BUBBLE_MAX_IMAGE_FRACTION * rim.size)
    band_px = max(1, round(RIM_BAND_UM / mpp))
    band_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_px + 1,) * 2)
    valf = val.astype(np.float32)
    for index in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[index])
        if x == 0 or y == 0 or x + w == width or y + h == height or area > hi:
            continue
        pad = band_px + 1
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(width, x + w + pad), min(height, y + h + pad)
        hole = (labels[y0:y1, x0:x1] == index).astype(np.uint8)
        contours, _ = cv2.findContours(hole, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull_pts = cv2.convexHull(np.concatenate(contours))
        hull = cv2.fillConvexPoly(np.zeros_like(hole), hull_pts, 1)
        # Specks of outline colour inside a bubble only notch its region: judge the filled one.
        filled = cv2.drawContours(np.zeros_like(hole), contours, -1, 1, thickness=cv2.FILLED)
        hull_area = float(hull.sum())
        if not lo <= hull_area <= hi or float(filled.sum()) < BUBBLE_SOLIDITY * hull_area:
            continue
        # The outline must run all round, just outside the convex hull.
        band = (cv2.dilate(hull, band_kernel) > 0) & (hull == 0)
        local_rim = rim8[y0:y1, x0:x1] > 0
        # (a pixel's slack: a one-pixel outline steps diagonally round the hull)
        near_rim = cv2.dilate(local_rim.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        if not band.any() or float(near_rim[band].mean()) < RIM_COVERAGE:
            continue
        local_val = valf[y0:y1, x0:x1]
        rim_v = float(np.median(local_val[band & local_rim]))
        inside_v = float(np.median(local_val[hull > 0]))
        if rim_v <= RIM_MIN_VALUE or inside_v - rim_v < BUBBLE_CONTRAST:
            continue
        out[y0:y1, x0:x1] |= (hull > 0) | (band & local_rim)
    return out


def artefact_fraction(artefact: BoolMask, tissue: BoolMask, mpp: float) -> float | None:
    """Share of the tissue region covered by ``artefact`` (both masks on one grid at ``mpp``
    µm/px): artefact pixels on or within ``ADJACENT_UM`` of tissue over (tissue ∪ those).
    ``None`` when there is no tissue."""
    if not tissue.any():
        return None
    near = cv2.dilate(tissue.astype(np.uint8), disk(ADJACENT_UM / mpp)) > 0
    counted = artefact & near
    return float(counted.sum() / (tissue | counted).sum())
