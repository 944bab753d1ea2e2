"""Patch labels from annotations: how much of each patch each class covers, and one label.

:func:`patch_class_fractions` gives, for every patch of a grid (``x, y, width, height`` in
level-0 pixels, the patch table's columns), the fraction of the patch area covered by each
class's polygons. Annotations of one class are unioned first, so overlapping annotations of a
class are not counted twice; different classes may overlap, so a row can sum to more than 1.
Points, lines and unclassified annotations cover nothing.

:func:`patch_labels` turns fractions into one class index per patch (-1: unlabelled): among the
classes covering at least ``threshold`` of the patch, the first one in the user's ``priority``
order wins (for example ``["tumor", "stroma"]`` so tumour inside stroma is labelled tumour);
classes not in that list come after, largest fraction first, ties to the earlier class column.

Speed: the class unions are cut into pieces of at most ``max_vertices`` vertices (recursive
halving of the bounding box) and indexed in a :class:`shapely.STRtree`; each patch box is tested
against the pieces it touches with shapely 2's vectorised predicates, and only boxes on a piece's
boundary need an exact (rectangle clip) area.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_ai.annotations.model import Annotation
from wsi_ai.errors import InvalidInputError


def _polygonal_parts(geometry: BaseGeometry) -> list[Polygon]:
    parts = shapely.get_parts(shapely.get_parts(geometry))  # GeometryCollection > Multi > part
    return [p for p in parts if isinstance(p, Polygon) and not p.is_empty]


def _split(geometry: BaseGeometry, max_vertices: int) -> list[Polygon]:
    """Cut a polygonal geometry into pieces of at most ``max_vertices`` vertices (areas add up)."""
    out: list[Polygon] = []
    stack = _polygonal_parts(geometry)
    while stack:
        part = stack.pop()
        minx, miny, maxx, maxy = part.bounds
        if shapely.get_num_coordinates(part) <= max_vertices or max(maxx - minx, maxy - miny) < 1:
            out.append(part)
            continue
        if maxx - minx >= maxy - miny:
            mid = 0.5 * (minx + maxx)
            halves = [(minx, miny, mid, maxy), (mid, miny, maxx, maxy)]
        else:
            mid = 0.5 * (miny + maxy)
            halves = [(minx, miny, maxx, mid), (minx, mid, maxx, maxy)]
        for box in halves:
            stack.extend(_polygonal_parts(shapely.intersection(part, shapely.box(*box))))
    return out


def class_unions(
    annotations: Iterable[Annotation], classes: Sequence[str] | None = None
) -> tuple[list[BaseGeometry], list[str]]:
    """One (valid) polygonal union per class, in ``classes`` order (default: sorted names)."""
    by_class: dict[str, list[BaseGeometry]] = {}
    for a in annotations:
        if a.classification is None:
            continue
        polys = _polygonal_parts(a.geometry)
        if polys:
            by_class.setdefault(a.classification, []).extend(polys)
    names = sorted(by_class) if classes is None else list(classes)
    unions = []
    for name in names:
        geoms = np.asarray(by_class.get(name, []), dtype=object)
        invalid = ~shapely.is_valid(geoms) if len(geoms) else np.zeros(0, bool)
        geoms[invalid] = shapely.make_valid(geoms[invalid])
        unions.append(shapely.union_all(geoms) if len(geoms) else MultiPolygon())
    return unions, names


def patch_class_fractions(
    annotations: Iterable[Annotation],
    x: ArrayLike,
    y: ArrayLike,
    width: ArrayLike,
    height: ArrayLike,
    classes: Sequence[str] | None = None,
    *,
    max_vertices: int = 128,
) -> tuple[NDArray[np.float32], list[str]]:
    """Fraction of each patch covered by each class: ``(fractions [N, K] float32, names)``.

    ``x, y, width, height`` are the patches' level-0 pixel boxes (arrays of length N, or scalars
    for width and height). ``classes`` picks and orders the columns (a class without annotations
    gives a column of zeros); by default every class present, sorted by name.
    """
    arrays = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (x, y, width, height))
    xs, ys, ws, hs = (np.ravel(v) for v in np.broadcast_arrays(*arrays))
    if len(xs) and not (np.all(ws > 0) and np.all(hs > 0)):
        raise InvalidInputError("patch width and height must be positive (level-0 pixels)")
    unions, names = class_unions(annotations, classes)
    fractions = np.zeros((len(xs), len(names)), dtype=np.float64)
    pieces: list[Polygon] = []
    piece_class: list[int] = []
    for k, union in enumerate(unions):
        split = _split(union, max_vertices)
        pieces.extend(split)
        piece_class.extend([k] * len(split))
    if not pieces or not len(xs):
        return fractions.astype(np.float32), names
    boxes = shapely.box(xs, ys, xs + ws, ys + hs)
    box_area = ws * hs
    piece_arr = np.asarray(pieces, dtype=object)
    shapely.prepare(piece_arr)
    tree = shapely.STRtree(piece_arr)
    bi, pi = tree.query(boxes, predicate="intersects")
    covered = shapely.covers(piece_arr[pi], boxes[bi])
    area = box_area[bi].copy()
    for j in np.flatnonzero(~covered):  # clip_by_rect is ~3x faster than a general intersection
        b = bi[j]
        clipped = shapely.clip_by_rect(piece_arr[pi[j]], xs[b], ys[b], xs[b] + ws[b], ys[b] + hs[b])
        area[j] = clipped.area
    np.add.at(fractions, (bi, np.asarray(piece_class, dtype=np.intp)[pi]), area / box_area[bi])
    return np.clip(fractions, 0.0, 1.0).astype(np.float32), names


def patch_labels(
    fractions: ArrayLike,
    class_names: Sequence[str],
    threshold: float = 0.5,
    priority: Sequence[str] | None = None,
) -> NDArray[np.int64]:
    """One class index per patch (into ``class_names``), or -1 where no class qualifies.

    A class qualifies when it covers at least ``threshold`` (and more than 0) of the patch. Among
    qualifying classes the earliest in ``priority`` wins; classes not listed there come after,
    the largest fraction first, ties going to the earlier column.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 2 or fr.shape[1] != len(class_names):
        raise InvalidInputError(
            f"fractions must have shape [N, {len(class_names)}] to match class_names, "
            f"got {fr.shape}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"threshold must lie in [0, 1], got {threshold}")
    order = list(priority or [])
    unknown = [c for c in order if c not in class_names]
    if unknown:
        raise InvalidInputError(
            f"priority names unknown class(es) {unknown}; the classes are {list(class_names)}"
        )
    eligible = (fr >= threshold) & (fr > 0)
    # Listed classes score above any fraction (<= 1), earlier ones higher.
    rank = np.full(len(class_names), np.nan)
    for r, name in enumerate(order):
        k = list(class_names).index(name)
        if np.isnan(rank[k]):
            rank[k] = 2.0 + len(order) - r
    key = np.where(np.isnan(rank)[None, :], fr, rank[None, :])
    key = np.where(eligible, key, -np.inf)
    labels = np.argmax(key, axis=1).astype(np.int64) if fr.shape[1] else np.zeros(len(fr), np.int64)
    labels[~eligible.any(axis=1)] = -1
    return labels
