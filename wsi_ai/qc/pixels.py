"""Array types and the small OpenCV helpers the QC measures share."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

BoolMask = NDArray[np.bool_]
RGBImage = NDArray[np.uint8]


def hsv_planes(rgb: RGBImage) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    """OpenCV's hue (0-180), saturation and value (0-255) planes of an RGB uint8 image."""
    hsv = np.asarray(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV), dtype=np.uint8)
    return hsv[..., 0], hsv[..., 1], hsv[..., 2]


def disk(radius_px: float) -> NDArray[np.uint8]:
    """An elliptical structuring element of the given radius (px, rounded, at least 1)."""
    r = max(1, round(radius_px))
    return np.asarray(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
