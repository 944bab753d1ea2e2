"""Regions from a heatmap canvas, and patch tiles, as QuPath objects (level-0 px).

Regions: a threshold on one channel (``value >= threshold``) or the per-class argmax of a
multi-channel canvas gives a mask per class; every 8-connected region of it becomes one
:class:`~wsi_ai.annotations.model.Annotation` (or, with ``merge=True``, one MultiPolygon per
class) with measurements ``"Area µm^2"``, ``"Mean score"`` and ``"Max score"`` (of the class's
channel over the region's own canvas pixels).

Geometry. Canvas pixel ``(r, c)`` covers level-0 ``[c * ds, (c + 1) * ds) x [r * ds, (r + 1) *
ds)``. :func:`wsi_ai.stitch.contours.trace_regions` (OpenCV ``findContours`` with
``RETR_CCOMP``) gives each region as the exact union of its pixel squares, holes kept and
corner-touching pixels as MultiPolygons; here holes below the minimum area are filled, the
outline is simplified lightly (Douglas-Peucker, ``simplify_px`` canvas px, falling back to the
topology-preserving variant where plain DP would break a polygon), scaled by ``ds`` to level-0
px and clipped to the slide. Regions below the minimum area (µm², counted on canvas pixels)
are dropped.

Tiles: :func:`tile_annotations` writes each patch as a QuPath ``tile`` (or ``detection``) with
one measurement per score column, which QuPath's measurement maps colour.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from math import ceil
from typing import Any

import numpy as np
import pandas as pd
import shapely
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from wsi_ai.annotations.model import Annotation, ObjectType
from wsi_ai.errors import InvalidInputError
from wsi_ai.stitch import Heatmap
from wsi_ai.stitch.contours import polygonal, trace_regions

AREA = "Area µm^2"
MEAN = "Mean score"
MAX = "Max score"
SIMPLIFY_PX = 0.5  # canvas px: straightens 45-degree staircases, keeps one-pixel features
BAND_ROWS = 2048  # canvas rows turned into a mask at once (bounds memory on zarr canvases)
_NO_CLASS = 255


def _as_mpp(mpp: float | tuple[float, float]) -> tuple[float, float]:
    pair = (mpp, mpp) if isinstance(mpp, int | float) else (mpp[0], mpp[1])
    if not all(np.isfinite(v) and v > 0 for v in pair):
        raise InvalidInputError(f"mpp={mpp!r} must be the slide's positive µm per level-0 px")
    return float(pair[0]), float(pair[1])


def _fill_small_holes(geom: BaseGeometry, min_hole_px: float) -> BaseGeometry:
    """Drop holes smaller than ``min_hole_px`` (canvas px²)."""

    def fill(p: Polygon) -> Polygon:
        keep = [r for r in p.interiors if Polygon(r).area >= min_hole_px]
        return p if len(keep) == len(p.interiors) else Polygon(p.exterior, keep)

    if isinstance(geom, Polygon):
        return fill(geom)
    return MultiPolygon([fill(p) for p in geom.geoms])  # type: ignore[attr-defined]


def _simplify(geoms: NDArray[np.object_], tolerance: float) -> NDArray[np.object_]:
    """Douglas-Peucker on every geometry; topology-preserving where plain DP breaks one."""
    out = shapely.simplify(geoms, tolerance, preserve_topology=False)
    broken = np.flatnonzero(~shapely.is_valid(out) | shapely.is_empty(out))
    if broken.size:
        out[broken] = shapely.simplify(geoms[broken], tolerance, preserve_topology=True)
    return out


def regions_from_mask(
    mask: NDArray[Any],
    scores: Any,
    *,
    downsample: float,
    mpp: float | tuple[float, float],
    classification: str | None,
    min_area_um2: float = 0.0,
    min_hole_um2: float | None = None,
    simplify_px: float = SIMPLIFY_PX,
    slide_size: tuple[int, int] | None = None,
    merge: bool = False,
) -> list[Annotation]:
    """Annotations (level-0 px) of the True regions of a canvas ``mask`` ``[H, W]``.

    ``scores`` (``[H, W]``, ndarray or zarr-like) gives each region's ``"Mean score"`` and
    ``"Max score"`` over its own canvas pixels; ``downsample`` is level-0 px per canvas px and
    ``mpp`` the slide's level-0 µm/px (one value or ``(x, y)``). Regions whose canvas pixels
    cover less than ``min_area_um2`` are dropped; holes under ``min_hole_um2`` (default:
    ``min_area_um2``) are filled. ``simplify_px`` is the simplification tolerance in canvas px
    (0 keeps the exact pixel edges). ``slide_size`` (level-0 ``(width, height)``) clips regions
    to the slide. ``merge`` makes one MultiPolygon annotation of all regions, with pooled
    statistics. ``"Area µm^2"`` is the area of the written polygon.
    """
    if not (np.isfinite(downsample) and downsample > 0):
        raise InvalidInputError(f"downsample={downsample} must be positive")
    mpp_x, mpp_y = _as_mpp(mpp)
    if np.ndim(mask) != 2 or tuple(np.shape(scores))[:2] != tuple(np.shape(mask)):
        raise InvalidInputError(
            f"mask {np.shape(mask)} and scores {np.shape(scores)} must be the same 2-D shape"
        )
    px_um2 = downsample * downsample * mpp_x * mpp_y
    min_hole_px = (min_area_um2 if min_hole_um2 is None else min_hole_um2) / px_um2
    traced = trace_regions(mask, scores, min_pixels=max(1, ceil(min_area_um2 / px_um2 - 1e-9)))
    geoms = traced.geometries
    if min_hole_px > 0:
        holed = np.flatnonzero(shapely.get_num_interior_rings(geoms) > 0)
        holed = np.union1d(holed, np.flatnonzero(shapely.get_type_id(geoms) == 6))
        geoms[holed] = [_fill_small_holes(g, min_hole_px) for g in geoms[holed]]
    if simplify_px > 0 and len(geoms):
        geoms = _simplify(geoms, simplify_px)
    geoms = shapely.transform(geoms, lambda xy: xy * downsample)
    keep = ~shapely.is_empty(geoms)
    if slide_size is not None:
        frame = box(0, 0, float(slide_size[0]), float(slide_size[1]))
        for i in np.flatnonzero(keep & ~shapely.contains(frame, geoms)):
            clipped = polygonal(geoms[i].intersection(frame))
            keep[i] = clipped is not None
            geoms[i] = clipped
    index = np.flatnonzero(keep)
    if merge and index.size:
        union = polygonal(shapely.union_all(geoms[index]))
        if union is None:
            return []
        stats = [
            (
                union,
                traced.pixels[index].sum(),
                traced.sums[index].sum(),
                traced.maxima[index].max(),
            )
        ]
    else:
        stats = [(geoms[i], traced.pixels[i], traced.sums[i], traced.maxima[i]) for i in index]
    return [
        Annotation(
            geometry=geom,
            classification=classification,
            measurements={
                AREA: float(geom.area) * mpp_x * mpp_y,
                MEAN: float(total) / float(count),
                MAX: float(peak),
            },
        )
        for geom, count, total, peak in stats
    ]


def _bands(height: int) -> Iterator[tuple[int, int]]:
    for r0 in range(0, height, BAND_ROWS):
        yield r0, min(height, r0 + BAND_ROWS)


def threshold_mask(heatmap: Heatmap, threshold: float, channel: int = 0) -> NDArray[np.bool_]:
    """Canvas pixels covered by a patch whose ``channel`` value is ``>= threshold``."""
    if not 0 <= channel < heatmap.channels:
        raise InvalidInputError(f"channel {channel} out of range 0..{heatmap.channels - 1}")
    height, width = heatmap.shape
    mask = np.empty((height, width), dtype=bool)
    for r0, r1 in _bands(height):
        band = mask[r0:r1]
        with np.errstate(invalid="ignore"):  # NaN (no coverage) compares False
            np.greater_equal(np.asarray(heatmap.canvas[r0:r1, :, channel]), threshold, out=band)
        np.logical_and(band, np.asarray(heatmap.coverage[r0:r1], dtype=bool), out=band)
    return mask


def argmax_labels(heatmap: Heatmap, min_score: float | None = None) -> NDArray[np.uint8]:
    """Per canvas pixel, the index of the highest channel; 255 where uncovered, NaN, or where
    the highest value is below ``min_score``."""
    if heatmap.channels >= _NO_CLASS:
        raise InvalidInputError(f"argmax regions support up to 254 classes, not {heatmap.channels}")
    height, width = heatmap.shape
    labels = np.full((height, width), _NO_CLASS, dtype=np.uint8)
    for r0, r1 in _bands(height):
        block = np.asarray(heatmap.canvas[r0:r1], dtype=np.float32)
        ok = np.asarray(heatmap.coverage[r0:r1], dtype=bool) & np.isfinite(block).all(axis=2)
        best = np.argmax(np.where(np.isfinite(block), block, -np.inf), axis=2)
        if min_score is not None:
            ok &= np.take_along_axis(block, best[..., None], axis=2)[..., 0] >= min_score
        labels[r0:r1] = np.where(ok, best, _NO_CLASS).astype(np.uint8)
    return labels


def _channel_view(heatmap: Heatmap, channel: int) -> Any:
    canvas = heatmap.canvas
    return canvas[:, :, channel] if isinstance(canvas, np.ndarray) else _Channel(canvas, channel)


class _Channel:
    """``canvas[..., channel]`` of a zarr-like canvas, read crop by crop."""

    def __init__(self, canvas: Any, channel: int) -> None:
        self.canvas, self.channel = canvas, channel
        self.shape = tuple(canvas.shape[:2])

    def __getitem__(self, key: tuple[slice, slice]) -> NDArray[Any]:
        return np.asarray(self.canvas[key[0], key[1], self.channel])


def threshold_regions(
    heatmap: Heatmap,
    *,
    threshold: float,
    mpp: float | tuple[float, float],
    classification: str | None,
    channel: int = 0,
    **kwargs: Any,
) -> list[Annotation]:
    """Regions where channel ``channel`` is ``>= threshold``; see :func:`regions_from_mask`
    for ``min_area_um2``, ``min_hole_um2``, ``simplify_px`` and ``merge``."""
    mask = threshold_mask(heatmap, threshold, channel)
    return regions_from_mask(
        mask,
        _channel_view(heatmap, channel),
        downsample=heatmap.downsample,
        mpp=mpp,
        classification=classification,
        slide_size=heatmap.slide_size,
        **kwargs,
    )


def argmax_regions(
    heatmap: Heatmap,
    classes: Sequence[str],
    *,
    mpp: float | tuple[float, float],
    ignore: Sequence[str] = (),
    min_score: float | None = None,
    **kwargs: Any,
) -> list[Annotation]:
    """One class per canvas pixel (the highest channel, at least ``min_score``), regions per
    class (``classes[c]`` names channel ``c``; classes in ``ignore`` give no regions). The
    statistics are those of the region's own class channel."""
    if len(classes) != heatmap.channels:
        raise InvalidInputError(f"{len(classes)} class names for {heatmap.channels} channels")
    labels = argmax_labels(heatmap, min_score)
    out: list[Annotation] = []
    for c, name in enumerate(classes):
        if name in ignore:
            continue
        out += regions_from_mask(
            labels == c,
            _channel_view(heatmap, c),
            downsample=heatmap.downsample,
            mpp=mpp,
            classification=name,
            slide_size=heatmap.slide_size,
            **kwargs,
        )
    return out


def tile_annotations(
    table: pd.DataFrame,
    columns: Sequence[str],
    *,
    object_type: ObjectType = "tile",
    classify: bool = True,
) -> Iterator[Annotation]:
    """One QuPath ``tile`` (or ``detection``) per patch row: its level-0 rectangle with one
    measurement per score column, so QuPath's measurement maps colour the patches.

    With several columns and ``classify``, each tile is classified by its highest column.
    """
    if object_type not in ("tile", "detection"):
        raise InvalidInputError(f"object_type must be 'tile' or 'detection', not {object_type!r}")
    missing = [c for c in ("x", "y", "width", "height", *columns) if c not in table.columns]
    if missing:
        raise InvalidInputError(f"the table lacks the column(s) {', '.join(missing)}")
    x, y, w, h = (table[c].to_numpy(np.float64) for c in ("x", "y", "width", "height"))
    values = table[list(columns)].to_numpy(np.float64)
    names = [str(c) for c in columns]
    best = np.argmax(np.nan_to_num(values, nan=-np.inf), axis=1) if len(names) > 1 else None
    for i in range(len(table)):
        label = names[int(best[i])] if best is not None and classify else None
        yield Annotation(
            geometry=box(x[i], y[i], x[i] + w[i], y[i] + h[i]),
            classification=label,
            object_type=object_type,
            measurements=dict(zip(names, values[i].tolist(), strict=True)),
        )


def otsu_threshold(values: NDArray[Any]) -> float:
    """Otsu's threshold of the finite ``values`` (e.g. the patch scores)."""
    from skimage.filters import threshold_otsu

    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise InvalidInputError("no finite score to pick a threshold from; pass --threshold")
    if finite.min() == finite.max():
        return float(finite.min())
    return float(threshold_otsu(finite))
