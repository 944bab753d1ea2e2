"""Trace a canvas mask into exact pixel-edge polygons, with each region's pixel statistics.

Units are canvas pixels: pixel ``(r, c)`` is the square ``[c, c + 1] x [r, r + 1]``. Each
8-connected region of the mask becomes the exact union of its pixel squares, holes kept.

How. ``cv2.findContours`` (``RETR_CCOMP``) on the whole mask finds every region's outer
contour, including islands inside other regions' holes. Per region, a flood fill of its
bounding-box crop gives its own pixels (islands excluded), whose count, sum and maximum of
``values`` are the statistics. Those pixels are then sampled on a half-pixel lattice (pixel
corners, edge midpoints and centres; a lattice cell is set when its point lies on one of the
region's closed pixel squares) and traced again: those contours run exactly along pixel edges.
8-connected tracing cuts each concave corner by one diagonal lattice step; the corner cell that
belongs to the region is put back. Pixels touching only at a corner make a ring that touches
itself, which :func:`shapely.make_valid` turns into a valid (Multi)Polygon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_ai.errors import ParameterError

_FLOOD_FLAGS = 8 | cv2.FLOODFILL_MASK_ONLY | (1 << 8)  # 8-connected, mark the mask with 1


@dataclass(frozen=True)
class TracedRegions:
    """Regions of a mask: valid (Multi)Polygons in canvas px and per-region statistics."""

    geometries: NDArray[np.object_]  # shapely geometries, one per region
    pixels: NDArray[np.int64]  # canvas pixels in the region
    sums: NDArray[np.float64]  # sum of ``values`` over them (NaN-free values assumed)
    maxima: NDArray[np.float64]  # max of ``values`` over them

    def __len__(self) -> int:
        return len(self.geometries)


def lattice(own: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Half-pixel lattice ``(2h + 1, 2w + 1)`` of a region given with a one-pixel zero border.

    ``own`` is ``(h + 2, w + 2)``; lattice cell ``(i, j)`` is the point ``(j / 2, i / 2)`` in
    the region's pixel units and is set when that point lies on a pixel of the region.
    """
    p = own.astype(bool)
    h, w = p.shape[0] - 2, p.shape[1] - 2
    out = np.zeros((2 * h + 1, 2 * w + 1), np.uint8)
    out[1::2, 1::2] = p[1:-1, 1:-1]
    out[1::2, 0::2] = p[1:-1, :-1] | p[1:-1, 1:]
    out[0::2, 1::2] = p[:-1, 1:-1] | p[1:, 1:-1]
    out[0::2, 0::2] = p[:-1, :-1] | p[:-1, 1:] | p[1:, :-1] | p[1:, 1:]
    return out


def _ring(
    contour: NDArray[Any], cells: NDArray[np.uint8], offset: tuple[int, int]
) -> NDArray[np.float64]:
    """A lattice contour as pixel-edge vertices in canvas px (corners restored, runs merged)."""
    pts = contour.reshape(-1, 2).astype(np.int64)
    step = np.roll(pts, -1, axis=0) - pts
    diagonal = np.flatnonzero((np.abs(step[:, 0]) == 1) & (np.abs(step[:, 1]) == 1))
    if diagonal.size:
        p, d = pts[diagonal], step[diagonal]
        across = np.stack([p[:, 0] + d[:, 0], p[:, 1]], axis=1)
        down = np.stack([p[:, 0], p[:, 1] + d[:, 1]], axis=1)
        across_in = cells[across[:, 1], across[:, 0]] != 0
        down_in = cells[down[:, 1], down[:, 0]] != 0
        fix = across_in ^ down_in
        corner = np.where(across_in[:, None], across, down)
        pts = np.insert(pts, diagonal[fix] + 1, corner[fix], axis=0)
    before = pts - np.roll(pts, 1, axis=0)
    after = np.roll(pts, -1, axis=0) - pts
    turns = (before[:, 0] * after[:, 1] != before[:, 1] * after[:, 0]) | (
        (before * after).sum(axis=1) <= 0
    )
    return pts[turns] / 2.0 + offset


def _region_polygon(own: NDArray[np.uint8], offset: tuple[int, int]) -> BaseGeometry:
    """The union of one region's pixel squares (possibly an invalid, self-touching Polygon)."""
    cells = lattice(own)
    contours, hierarchy = cv2.findContours(cells, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    links = hierarchy[0]
    parts = []
    for index in np.flatnonzero(links[:, 3] < 0):
        holes = [
            _ring(contours[int(j)], cells, offset) for j in np.flatnonzero(links[:, 3] == index)
        ]
        parts.append(Polygon(_ring(contours[int(index)], cells, offset), holes))
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    """The polygonal parts of ``geom`` (made valid) as one Polygon/MultiPolygon, or None."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [p for p in shapely.get_parts(shapely.get_parts(geom)) if isinstance(p, Polygon)]
    parts = [p for p in parts if p.area > 0]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    merged = MultiPolygon(parts)
    return merged if merged.is_valid else shapely.union_all(parts)


def trace_regions(mask: NDArray[Any], values: Any = None, *, min_pixels: int = 1) -> TracedRegions:
    """Every 8-connected region of ``mask`` ``[H, W]`` with at least ``min_pixels`` pixels.

    ``values`` (``[H, W]``, an ndarray or anything sliceable such as a zarr array; default the
    mask itself) gives each region's sum and maximum over its own pixels.
    """
    binary = np.asarray(mask)
    if binary.dtype == np.bool_ and binary.flags.c_contiguous:
        binary = binary.view(np.uint8)  # no copy of a large mask
    else:
        binary = np.ascontiguousarray(binary != 0, dtype=np.uint8)
    if binary.ndim != 2:
        raise ParameterError(f"mask must be 2-D [H, W], got shape {binary.shape}")
    source = binary if values is None else values
    geometries: list[BaseGeometry] = []
    pixels: list[int] = []
    sums: list[float] = []
    maxima: list[float] = []
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer = [] if hierarchy is None else np.flatnonzero(hierarchy[0][:, 3] < 0)
    for index in outer:
        contour = contours[int(index)]
        x, y, w, h = cv2.boundingRect(contour)
        crop = np.ascontiguousarray(binary[y : y + h, x : x + w])
        own = np.zeros((h + 2, w + 2), np.uint8)
        seed = (int(contour[0, 0, 0]) - x, int(contour[0, 0, 1]) - y)
        cv2.floodFill(crop, own, seed, 1, 0, 0, _FLOOD_FLAGS)
        own[[0, -1], :] = 0  # floodFill marks the mask's border as a barrier: clear it
        own[:, [0, -1]] = 0
        inside = own[1:-1, 1:-1].view(bool)
        count = int(np.count_nonzero(inside))
        if count < min_pixels:
            continue
        region_values = np.asarray(source[y : y + h, x : x + w], dtype=np.float64)[inside]
        geometries.append(_region_polygon(own, (x, y)))
        pixels.append(count)
        sums.append(float(region_values.sum()))
        maxima.append(float(region_values.max()))
    geoms = np.empty(len(geometries), dtype=object)
    geoms[:] = geometries
    for i in np.flatnonzero(~shapely.is_valid(geoms)) if len(geoms) else ():
        geoms[i] = polygonal(geoms[i]) or Polygon()
    return TracedRegions(
        geometries=geoms,
        pixels=np.asarray(pixels, dtype=np.int64),
        sums=np.asarray(sums, dtype=np.float64),
        maxima=np.asarray(maxima, dtype=np.float64),
    )
