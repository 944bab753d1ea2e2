"""A boolean mask becomes shapely polygons in level-0 pixels, holes kept.

Mask pixel ``(i, j)`` covers level-0 ``[i * ds_x, (i + 1) * ds_x) x [j * ds_y, (j + 1) * ds_y)``,
so the polygons follow pixel *edges*, not pixel centres: a mask that is all tissue becomes the
slide's full rectangle ``(0, 0, width, height)``.

OpenCV traces contours through the centres of the boundary pixels (``RETR_CCOMP``: outer
contours and, one level down, their holes). Each outer contour with its holes is built in
mask-pixel units, repaired when invalid, grown by half a pixel with mitred joins (which moves a
staircase through pixel centres onto the pixel edges, shrinks holes to their true size and gives
one-pixel-wide strands their width), simplified lightly and only then scaled to level-0 pixels.
Edges along mask rows and columns land exactly on pixel edges; where the boundary steps
diagonally (8-connected pixels) it is off by at most about a third of a mask pixel, well within
the simplification tolerance.
"""

from __future__ import annotations

import cv2
import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.affinity import scale
from shapely.geometry import (
    GeometryCollection,
    LineString,
    MultiPolygon,
    Point,
    Polygon,
    box,
)
from shapely.geometry.base import BaseGeometry

from wsi_ai.errors import ParameterError

# Douglas-Peucker tolerance, in mask pixels, applied before scaling to level 0. Below 1 so a
# one-pixel-wide strand keeps its width; a 45-degree pixel staircase becomes a straight edge.
SIMPLIFY_PX = 0.75


def mask_to_polygons(
    mask: NDArray[np.bool_],
    downsample: tuple[float, float],
    *,
    simplify_px: float = SIMPLIFY_PX,
) -> tuple[Polygon, ...]:
    """Valid polygons (level-0 px, holes kept) of the True regions of ``mask``, largest first.

    ``downsample`` is level-0 px per mask px in (x, y). ``simplify_px`` is the simplification
    tolerance in mask pixels (0 keeps every pixel corner).
    """
    if mask.ndim != 2:
        raise ParameterError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    height, width = mask.shape
    if height == 0 or width == 0 or not mask.any():
        return ()
    contours, hierarchy = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if hierarchy is None:
        return ()
    links = hierarchy[0]
    holes: dict[int, list[int]] = {}
    for index, parent in enumerate(links[:, 3]):
        if parent >= 0:
            holes.setdefault(int(parent), []).append(index)
    frame = box(0.0, 0.0, float(width), float(height))
    out: list[Polygon] = []
    for index in range(len(contours)):
        if links[index, 3] >= 0:
            continue
        rings = [_centres(contours[h]) for h in holes.get(index, [])]
        geom = _pixel_region(_centres(contours[index]), [r for r in rings if len(r) >= 3])
        if simplify_px > 0:
            # Tolerance 0 first drops the collinear vertices buffering leaves on straight edges.
            geom = geom.simplify(0).simplify(simplify_px, preserve_topology=True)
        x0, y0, x1, y1 = geom.bounds
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            geom = geom.intersection(frame)
        geom = scale(geom, xfact=downsample[0], yfact=downsample[1], origin=(0.0, 0.0))
        out.extend(_polygons(geom))
    out.sort(key=lambda p: p.area, reverse=True)
    return tuple(out)


def _centres(contour: ArrayLike) -> NDArray[np.float64]:
    """Contour points (pixel indices) as pixel-centre coordinates in mask-pixel units."""
    return np.asarray(contour, dtype=np.float64).reshape(-1, 2) + 0.5


def _pixel_region(shell: NDArray[np.float64], holes: list[NDArray[np.float64]]) -> BaseGeometry:
    """The union of the mask pixels one outer contour (and its holes) encloses, in mask px."""
    geom: BaseGeometry
    if len(shell) == 1:
        geom = Point(shell[0])
    elif len(shell) == 2:
        geom = LineString(shell)
    else:
        geom = Polygon(shell, holes)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
    # Half a pixel outwards with square caps and mitred corners lands on the pixel edges.
    return geom.buffer(0.5, cap_style="square", join_style="mitre")


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons in ``geom``, repaired if an operation left them invalid."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = shapely.get_parts(geom)
    found: list[Polygon] = []
    for part in parts:
        if isinstance(part, MultiPolygon | GeometryCollection):
            found.extend(_polygons(part))
        elif isinstance(part, Polygon) and part.area > 0:
            found.append(part)
    return found
