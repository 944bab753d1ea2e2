"""The H&E stain matrix (Macenko) and the glass colour it is measured against.

* **Stain.** Macenko et al. (ISBI 2009), as in their reference implementation: optical density
  ``OD = -ln(I / I0)`` per channel with ``I0`` the slide's own glass colour (median of bright,
  colourless pixels off the tissue, clipped to 200-255; 240 when too little glass is seen),
  pixels with any channel's OD below ``STAIN_BETA`` = 0.15 dropped, the plane of the two
  largest eigenvectors of the OD covariance, the 1st and 99th percentiles of the angle in that
  plane as the two stain directions. **Hematoxylin is the one with the larger red OD
  component** (Macenko's convention; Ruifrok's H is (0.65, 0.70, 0.29), E (0.07, 0.99, 0.11)).
  Maximum concentrations are the 99th percentile of each stain's least-squares concentration.
  In :func:`~wsi_ai.qc.measures.slide_qc` the pixels come from the sampled patches (ink pixels
  removed), or from the low-resolution image's tissue when the patches give fewer than
  ``MIN_STAIN_PIXELS``; ``None`` when both do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wsi_ai.qc.pixels import BoolMask, RGBImage, hsv_planes

# Macenko.
STAIN_BETA = 0.15
STAIN_ALPHA = 1.0  # percentile
DEFAULT_BACKGROUND = 240.0
BACKGROUND_RANGE = (200.0, 255.0)
MIN_GLASS_PIXELS = 1_000
MIN_STAIN_PIXELS = 2_000
# Ruifrok & Johnston's H&E optical-density vectors (scikit-image's rgb_from_hed; norm 0.998).
RUIFROK_H = (0.65, 0.70, 0.29)
RUIFROK_E = (0.07, 0.99, 0.11)


@dataclass(frozen=True)
class StainEstimate:
    """Macenko's H&E estimate: unit OD vectors (r, g, b) and 99th-percentile concentrations."""

    hematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    max_hematoxylin: float
    max_eosin: float
    pixels: int  # OD pixels the estimate used


def angle_deg(u: tuple[float, ...] | NDArray[Any], v: tuple[float, ...] | NDArray[Any]) -> float:
    """Angle between two vectors, degrees (0-180)."""
    a, b = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def optical_density(pixels: NDArray[Any], background: NDArray[Any] | tuple[float, ...]) -> Any:
    """``-ln(I / I0)`` per channel of RGB ``pixels`` (..., 3); ``I`` at least 1."""
    bg = np.asarray(background, dtype=np.float64)
    return -np.log(np.maximum(np.asarray(pixels, dtype=np.float64), 1.0) / bg)


def macenko(
    pixels: NDArray[Any],
    background: tuple[float, float, float] = (DEFAULT_BACKGROUND,) * 3,
    *,
    beta: float = STAIN_BETA,
    alpha: float = STAIN_ALPHA,
    min_pixels: int = MIN_STAIN_PIXELS,
) -> StainEstimate | None:
    """Macenko's H&E stain vectors of RGB ``pixels`` (any shape ending in 3, uint8 values).

    ``background`` is the glass RGB (I0); ``beta`` the OD below which a pixel is dropped (any
    channel); ``alpha`` the angle percentile. Hematoxylin is the vector with the larger red OD
    component. ``None`` when fewer than ``min_pixels`` pixels pass ``beta``.
    """
    od = optical_density(np.asarray(pixels).reshape(-1, 3), background)
    od = od[~np.any(od < beta, axis=1)]
    if len(od) < max(min_pixels, 3):
        return None
    _, vectors = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vectors[:, [2, 1]]  # the two largest eigenvalues, largest first
    if plane[:, 0].sum() < 0:
        plane[:, 0] *= -1
    projected = od @ plane
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([math.cos(lo), math.sin(lo)])
    v2 = plane @ np.array([math.cos(hi), math.sin(hi)])
    for v in (v1, v2):
        if v.sum() < 0:
            v *= -1
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    stains = np.stack([h, e], axis=1)
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    max_h, max_e = np.percentile(conc, 99, axis=1)
    return StainEstimate(
        hematoxylin=(float(h[0]), float(h[1]), float(h[2])),
        eosin=(float(e[0]), float(e[1]), float(e[2])),
        max_hematoxylin=float(max_h),
        max_eosin=float(max_e),
        pixels=len(od),
    )


def glass_background(rgb: RGBImage, not_glass: BoolMask) -> tuple[float, float, float]:
    """Median RGB of bright (V > 200), colourless (S < 20) pixels outside ``not_glass``,
    each channel clipped to ``BACKGROUND_RANGE``; ``DEFAULT_BACKGROUND`` when fewer than
    ``MIN_GLASS_PIXELS`` such pixels are seen."""
    _, sat, val = hsv_planes(rgb)
    glass = (val > 200) & (sat < 20) & ~not_glass
    if int(glass.sum()) < MIN_GLASS_PIXELS:
        return (DEFAULT_BACKGROUND,) * 3
    med = np.clip(np.median(rgb[glass].astype(np.float64), axis=0), *BACKGROUND_RANGE)
    return (float(med[0]), float(med[1]), float(med[2]))
