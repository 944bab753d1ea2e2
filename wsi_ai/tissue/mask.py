"""The tissue stage's result: a raster mask, its polygons in level-0 pixels, and queries on them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import Polygon

from wsi_ai.annotations.model import Annotation
from wsi_ai.errors import ParameterError


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Tissue found on one slide level.

    ``mask`` is True on tissue, at mask resolution; ``downsample`` is level-0 px per mask px in
    (x, y), i.e. slide dimensions / mask dimensions, so mask pixel ``(i, j)`` covers level-0
    ``[i * ds_x, (i + 1) * ds_x) x [j * ds_y, (j + 1) * ds_y)``. ``polygons`` are shapely
    polygons in level-0 px with holes, largest first. ``level`` is the slide level read;
    ``mpp`` the slide's level-0 (x, y) µm per pixel, or None when unknown.
    """

    mask: NDArray[np.bool_]
    downsample: tuple[float, float]
    polygons: tuple[Polygon, ...]
    modality: str
    level: int
    mpp: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """Mask (height, width) in mask pixels."""
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    @property
    def slide_dimensions(self) -> tuple[float, float]:
        """Level-0 (width, height) the mask spans."""
        return (self.shape[1] * self.downsample[0], self.shape[0] * self.downsample[1])

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the whole slide that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @cached_property
    def _integral(self) -> NDArray[np.int32]:
        """Summed-area table, shape ``(h + 1, w + 1)``: tissue pixels above-left of each corner."""
        return np.asarray(
            cv2.integral(np.ascontiguousarray(self.mask, dtype=np.uint8), sdepth=cv2.CV_32S)
        )

    def fraction(
        self, x: ArrayLike, y: ArrayLike, width: ArrayLike, height: ArrayLike
    ) -> NDArray[np.float32]:
        """Tissue fraction of level-0 rectangles ``(x, y, width, height)`` (arrays broadcast).

        Rectangle edges snap to the nearest mask-pixel edge, so the result is exact for
        rectangles aligned to mask pixels; a rectangle narrower than half a mask pixel samples
        the pixel under its centre. The part of a rectangle outside the slide counts as
        non-tissue.
        """
        xs, ys, ws, hs = np.broadcast_arrays(
            *(np.asarray(v, dtype=np.float64) for v in (x, y, width, height))
        )
        if np.any(ws <= 0) or np.any(hs <= 0):
            raise ParameterError("rectangle width and height must be positive (level-0 px)")
        dx, dy = self.downsample
        rows, cols = self.shape
        c0, c1 = _snap(xs / dx, (xs + ws) / dx)
        r0, r1 = _snap(ys / dy, (ys + hs) / dy)
        area = (c1 - c0) * (r1 - r0)
        c0, c1 = np.clip(c0, 0, cols), np.clip(c1, 0, cols)
        r0, r1 = np.clip(r0, 0, rows), np.clip(r1, 0, rows)
        table = self._integral
        inside = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
        return (inside / area).astype(np.float32)

    def to_annotations(
        self,
        classification: str = "Tissue",
        *,
        mpp: float | tuple[float, float] | None = None,
    ) -> list[Annotation]:
        """One annotation per polygon (level-0 px) with its area as a measurement.

        The area is ``"Area µm^2"`` when an MPP is known (``mpp`` here, else the slide's),
        otherwise ``"Area px^2"`` in level-0 pixels.
        """
        if mpp is None:
            mpp = self.mpp
        if isinstance(mpp, int | float):
            mpp = (float(mpp), float(mpp))
        out = []
        for polygon in self.polygons:
            if mpp is None:
                measurements = {"Area px^2": float(polygon.area)}
            else:
                measurements = {"Area µm^2": float(polygon.area * mpp[0] * mpp[1])}
            out.append(
                Annotation(
                    geometry=polygon,
                    classification=classification,
                    measurements=measurements,
                    properties={"modality": self.modality, "tissue_level": self.level},
                )
            )
        return out


def _snap(
    start: NDArray[np.float64], stop: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Nearest mask-pixel edges of ``[start, stop)`` (mask px); at least one pixel wide."""
    lo, hi = np.rint(start), np.rint(stop)
    collapsed = hi <= lo
    if np.any(collapsed):
        centre = np.floor((start + stop) / 2)
        lo = np.where(collapsed, centre, lo)
        hi = np.where(collapsed, centre + 1, hi)
    return lo.astype(np.int64), hi.astype(np.int64)
