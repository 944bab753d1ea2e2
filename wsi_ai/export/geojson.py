"""QuPath GeoJSON: the one writer every wsi-ai export goes through.

Input is :class:`~wsi_ai.annotations.model.Annotation` objects whose geometry is in level-0
pixels (origin top-left, x right, y down), which is exactly QuPath's convention, so no
coordinate is scaled or shifted. Output is a ``FeatureCollection`` (``.geojson`` or
``.geojson.gz``) that QuPath >= 0.4 imports whole, by construction:

* every geometry is snapped to QuPath's 0.01 px grid *before* it is checked, repaired when
  invalid (QuPath rejects the whole file on one self-intersecting polygon) and dropped when it
  collapses; coordinates are written with at most 2 decimals;
* polygon rings follow RFC 7946 (exterior counter-clockwise, holes clockwise: :func:`orient_rings`);
* every feature has a UUID ``id``, the annotation's own UUID or one derived from its content
  (:class:`_Ids`), so a rerun does not duplicate objects in a QuPath project; a classification
  always carries its ``color``, an object's own colour is QuPath's ``color``; ``name`` is
  never ``null``; measurements are flat numbers, NaN and infinities written as the strings
  QuPath writes; nothing QuPath throws on is ever written as ``null``;
* provenance (wsi-ai version, the caller's parameters, never a date) sits in a
  FeatureCollection member, ``"wsi_ai"``, which QuPath ignores.

The same annotations give the same bytes, ``.geojson.gz`` included (no name or time in the gzip
header): data files are deterministic (DESIGN.md). Files are streamed feature by feature into
a temporary sibling and renamed into place, so a crash never leaves a half-written export; an
existing file is replaced only with ``overwrite``.
"""

from __future__ import annotations

import colorsys
import gzip
import hashlib
import io
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import LineString
from shapely.geometry.base import BaseGeometry

import wsi_ai
from wsi_ai.annotations.model import RGB, Annotation
from wsi_ai.errors import InvalidInputError
from wsi_ai.outputs import atomic_output

GRID_PX = 0.01
"""QuPath snaps every imported coordinate to this grid (level-0 px); we snap first."""

_THIN_PX = 5 * GRID_PX  # mean width below which a polygon may collapse on the grid
SUFFIXES = (".geojson", ".geojson.gz", ".json", ".json.gz")
_AREA_TYPES = frozenset({"detection", "tile", "cell"})
_POLYGONAL = frozenset({"Polygon", "MultiPolygon"})
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_TRAILING_ZERO = re.compile(r"(?<=\d)\.0(?=[,\]])")
_WRITE_CHUNK = 1 << 20
_ID_NAMESPACE = uuid.UUID("5d3f1c7e-2a4b-5c8d-9e0f-6a7b8c9d0e1f")  # never change: ids would

# QuPath's built-in class colours, so our classes look the same as ones drawn in QuPath.
_PALETTE: dict[str, RGB] = {
    "tumor": (200, 0, 0), "stroma": (150, 200, 150), "immune cells": (160, 90, 160),
    "necrosis": (50, 50, 50), "other": (255, 200, 0), "region*": (0, 0, 180),
    "ignore*": (180, 180, 180), "positive": (200, 50, 50), "negative": (112, 112, 225),
    "tissue": (0, 140, 70), "background": (220, 220, 220),
}  # fmt: skip


@dataclass
class GeoJsonReport:
    """What :func:`write_geojson` did: features written, repaired and dropped."""

    path: Path | None
    written: int = 0
    repaired: int = 0
    dropped: int = 0

    @property
    def warnings(self) -> int:
        """Features that were changed or lost on the way (the CLI prints this count)."""
        return self.repaired + self.dropped

    @property
    def empty(self) -> bool:  # a valid file, but QuPath says "No objects found": tell the user
        return self.written == 0


def class_color(name: str) -> RGB:
    """Stable RGB colour for a class name: QuPath's colour for its standard classes, else
    a bright colour derived from a hash of the name (the same on every run and machine)."""
    known = _PALETTE.get(name.strip().lower())
    if known is not None:
        return known
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    saturation = 0.55 + 0.35 * digest[2] / 255.0
    value = 0.70 + 0.25 * digest[3] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


# ---------------------------------------------------------------- geometry safety


def _dimension(geom: BaseGeometry) -> int:
    """Highest topological dimension present (0 points, 1 lines, 2 areas)."""
    parts = [p for p in _flatten(geom) if not p.is_empty]
    return max((int(shapely.get_dimensions(p)) for p in parts), default=-1)


def _flatten(geom: BaseGeometry) -> Iterator[BaseGeometry]:
    if geom.geom_type in ("GeometryCollection", "MultiPolygon", "MultiLineString", "MultiPoint"):
        for part in geom.geoms:  # type: ignore[attr-defined]
            yield from _flatten(part)
    else:
        yield geom


def _round(geom: BaseGeometry) -> BaseGeometry:
    """Coordinates exactly as written: 2 decimals, no negative zero."""
    return shapely.transform(geom, lambda xy: np.round(xy, 2) + 0.0)


def _snap(geom: BaseGeometry) -> tuple[BaseGeometry, bool]:
    """Snap to the 0.01 px grid keeping a valid topology (GEOS's version of what QuPath does
    on import); ``make_valid`` first when GEOS finds the input invalid. True if it had to."""
    try:
        return _round(shapely.set_precision(geom, GRID_PX)), False
    except GEOSException:  # "side location conflict": what QuPath reports as invalid input
        return _round(shapely.set_precision(shapely.make_valid(geom), GRID_PX)), True


def _make_valid(geom: BaseGeometry) -> BaseGeometry:
    """``make_valid`` part by part: overlapping parts of a MultiPolygon are later merged
    (union) instead of having their overlap cut out, as a whole-geometry repair would."""
    if geom.geom_type not in ("MultiPolygon", "GeometryCollection"):
        return shapely.make_valid(geom)
    return shapely.GeometryCollection([shapely.make_valid(p) for p in _flatten(geom)])


def _collapses(geom: BaseGeometry) -> bool:
    """True when QuPath's snap rounding would turn a valid polygon into an empty ROI.

    Only areas thinner than a few grid cells (2 * area / perimeter) can; they get the exact
    (slower) GEOS check, everything else skips it.
    """
    if geom.geom_type not in _POLYGONAL or 2.0 * geom.area >= _THIN_PX * geom.length:
        return False
    return bool(shapely.set_precision(geom, GRID_PX).is_empty)


def _keep_dimension(geom: BaseGeometry, dim: int) -> BaseGeometry | None:
    """Only the parts of dimension ``dim``, as one GeoJSON-writable geometry."""
    parts = [p for p in _flatten(geom) if not p.is_empty and shapely.get_dimensions(p) == dim]
    if not parts:
        return None
    if dim == 2:
        if geom.geom_type in _POLYGONAL:
            return geom
        return _round(shapely.unary_union(parts, grid_size=GRID_PX))
    if len(parts) == 1:
        return parts[0]
    make = shapely.multilinestrings if dim == 1 else shapely.multipoints
    return cast(BaseGeometry, make(parts))


def qupath_safe_geometry(geom: BaseGeometry | None) -> tuple[BaseGeometry | None, bool]:
    """Make a level-0 px geometry import cleanly into QuPath.

    Snaps to the 0.01 px grid and checks validity on the rounded coordinates that will be
    written. When rounding alone does not give a valid geometry, it is repaired: invalid
    input goes through ``make_valid``, then GEOS's topology-preserving snap to the grid (which
    removes collapsed parts), then ``make_valid`` again if needed; only the parts of the
    input's own dimension are kept (a repaired polygon that became a GeometryCollection keeps
    its polygons; points stay points, lines stay lines) and polygon parts are merged so that
    none overlap. Returns ``(geometry, repaired)``; ``repaired`` is true when the shape had to
    change by more than rounding. The geometry is ``None`` when nothing is left (empty input,
    non-finite coordinates, or a shape smaller than the grid).
    """
    if geom is None or geom.is_empty:
        return None, False
    if not np.isfinite(shapely.get_coordinates(geom)).all():
        return None, False
    if geom.geom_type == "LinearRing":
        geom = LineString(geom.coords)
    if geom.geom_type != "GeometryCollection" and geom.is_valid:
        rounded = _round(geom)
        if not rounded.is_empty and rounded.is_valid:
            if _collapses(rounded):
                return None, False
            return rounded, False
    dim = _dimension(geom)
    if not geom.is_valid:
        geom = _make_valid(geom)
    snapped, _ = _snap(geom)
    if not snapped.is_valid:
        snapped, _ = _snap(shapely.make_valid(snapped))
    result = _keep_dimension(snapped, dim)
    if result is None or result.is_empty or not result.is_valid or _collapses(result):
        return None, True
    return result, True


# ---------------------------------------------------------------- features


def _positions(geom: BaseGeometry) -> list[Any]:
    return (np.round(shapely.get_coordinates(geom), 2) + 0.0).tolist()


def _rings(polygon: BaseGeometry) -> list[Any]:
    """Shell first, then holes (QuPath's order); shapely rings are always closed."""
    return [_positions(ring) for ring in shapely.get_rings(polygon)]


def orient_rings(geom: BaseGeometry) -> BaseGeometry:
    """Polygon rings in RFC 7946 order: exterior counter-clockwise, holes clockwise.

    Convention: orientation of the numbers as written (level-0 px, x right, y down): an exterior
    has a positive shoelace area ``sum(x[i]*y[i+1] - x[i+1]*y[i]) / 2`` (shapely's ``is_ccw``).
    That is RFC 7946's right-hand rule (3.1.6) with y down: the rule belongs to the coordinates'
    own right-handed frame (thumb along z = x cross y, which points into the screen when y
    points down), not to the picture; and the tools that check it (shapely, GDAL's RFC7946
    option, turf, geojson-rewind) compute it from the numbers, whatever way a viewer draws y.
    QuPath (y down) draws such an exterior clockwise on screen, and ignores orientation."""
    if geom.geom_type not in _POLYGONAL:
        return geom
    return shapely.orient_polygons(geom, exterior_cw=False)


def geometry_to_geojson(geom: BaseGeometry) -> dict[str, Any]:
    """GeoJSON geometry object of a (QuPath-safe) geometry, coordinates in level-0 px;
    polygon rings oriented as RFC 7946 asks (:func:`orient_rings`)."""
    geom = orient_rings(geom)
    kind = geom.geom_type
    if kind == "Point":
        coordinates: Any = _positions(geom)[0]
    elif kind in ("MultiPoint", "LineString"):
        coordinates = _positions(geom)
    elif kind == "MultiLineString":
        coordinates = [_positions(line) for line in geom.geoms]  # type: ignore[attr-defined]
    elif kind == "Polygon":
        coordinates = _rings(geom)
    elif kind == "MultiPolygon":
        coordinates = [_rings(p) for p in geom.geoms]  # type: ignore[attr-defined]
    else:
        raise InvalidInputError(f"cannot write a {kind} as QuPath GeoJSON")
    return {"type": kind, "coordinates": coordinates}


def _content_key(a: Annotation, geometry_texts: Mapping[str, str]) -> bytes:
    """Digest of what makes an object itself: type, class, name and geometry JSON as written."""
    digest = hashlib.blake2b(digest_size=16)
    fields = (a.object_type, a.classification, a.name, *geometry_texts.values())
    # each part length-prefixed (None apart), so different inputs never hash the same bytes
    for part in (None if t is None else str(t).encode() for t in fields):
        digest.update(b"\xff" * 8 if part is None else len(part).to_bytes(8, "big") + part)
    return digest.digest()


class _Ids:
    """The ids of one file: an annotation's own UUID (QuPath's exports) unless already used in
    the file, else ``uuid5(namespace, content digest + index among identical objects)``: the
    same input gives the same ids, twins differ, and no id depends on the other objects."""

    def __init__(self) -> None:
        self.kept: set[str] = set()
        self.twins: dict[bytes, int] = {}

    def __call__(self, given: str | None, key: Callable[[], bytes]) -> str:
        try:
            own = str(uuid.UUID(str(given))) if given else None
        except ValueError:
            own = None
        if own is not None and own not in self.kept:
            self.kept.add(own)
            return own
        digest = key()
        twin = self.twins[digest] = self.twins.get(digest, -1) + 1
        return str(uuid.uuid5(_ID_NAMESPACE, f"{digest.hex()}/{twin}"))


def _rgb(color: Any, what: str) -> list[int]:
    try:
        rgb = [min(255, max(0, round(float(c)))) for c in color]
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{what} colour {color!r} is not [r, g, b]") from err
    if len(rgb) != 3:
        raise InvalidInputError(f"{what} colour {color!r} is not [r, g, b]")
    return rgb


def _measurement(name: str, value: Any) -> float | str | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"measurement {name!r} is {value!r}, not a number") from err
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return number


def _metadata_value(value: Any) -> str | None:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _properties(a: Annotation) -> dict[str, Any]:
    props: dict[str, Any] = {"objectType": a.object_type}
    if a.name is not None:
        props["name"] = str(a.name)
    classification = (a.classification or "").strip()
    own = None if a.color is None else _rgb(a.color, "object")
    if classification:
        cls = a.class_color if a.class_color is not None else a.color
        color = _rgb(class_color(classification) if cls is None else cls, "class")
        names = [n.strip() for n in classification.split(":")]
        if len(names) > 1 and all(names):  # a derived class, "Tumor: Positive", as QuPath writes it
            props["classification"] = {"names": names, "color": color}
        else:
            props["classification"] = {"name": classification, "color": color}
    if own is not None and own != props.get("classification", {}).get("color"):
        props["color"] = own  # QuPath draws an object in its own colour, else its class's
    if a.locked:
        props["isLocked"] = True
    measurements = {str(k): _measurement(str(k), v) for k, v in a.measurements.items()}
    measurements = {k: v for k, v in measurements.items() if v is not None}
    if measurements:
        props["measurements"] = measurements
    metadata = {str(k): _metadata_value(v) for k, v in a.properties.items()}
    metadata = {k: v for k, v in metadata.items() if v is not None}
    if metadata:
        props["metadata"] = metadata
    return props


def _feature(a: Annotation, ids: _Ids) -> tuple[dict[str, Any] | None, dict[str, str], bool]:
    """Feature dict (``None`` when the geometry is dropped), the JSON text of its geometries
    (as :func:`_dump_feature` writes them) and whether it was repaired."""
    geom, repaired = qupath_safe_geometry(a.geometry)
    if geom is None or (a.object_type in _AREA_TYPES and geom.geom_type not in _POLYGONAL):
        return None, {}, repaired
    shapes = {"geometry": geom}
    if a.object_type == "cell" and a.nucleus_geometry is not None:
        nucleus, fixed = qupath_safe_geometry(a.nucleus_geometry)
        repaired |= fixed or nucleus is None
        if nucleus is not None and nucleus.geom_type in _POLYGONAL:
            shapes["nucleusGeometry"] = nucleus
    geometries = {key: geometry_to_geojson(g) for key, g in shapes.items()}
    texts = {key: _TRAILING_ZERO.sub("", _DUMPS(g)) for key, g in geometries.items()}
    feature_id = ids(a.id, lambda: _content_key(a, texts))
    feature = {"type": "Feature", "id": feature_id, **geometries, "properties": _properties(a)}
    return feature, texts, repaired


def annotation_to_feature(a: Annotation) -> dict[str, Any]:
    """One QuPath GeoJSON Feature (id as for a file's first such object); InvalidInputError when
    nothing survives QuPath's 0.01 px grid, or an area object's geometry is not an area."""
    feature, _, _ = _feature(a, _Ids())
    if feature is None:
        raise InvalidInputError(
            f"{a.geometry.geom_type} of {a.object_type} {a.name or a.id or ''!s} is empty "
            "after QuPath's 0.01 px snapping, or not an area"
        )
    return feature


def _dump_feature(feature: Mapping[str, Any], texts: Mapping[str, str]) -> str:
    """Compact JSON of a feature, its geometries' ``texts`` as given: whole-number coordinates
    lose their ``.0``, like QuPath's."""
    parts = [f"{_DUMPS(k)}:{texts[k] if k in texts else _DUMPS(v)}" for k, v in feature.items()]
    return "{" + ",".join(parts) + "}"


# ---------------------------------------------------------------- collections


def _jsonable(value: Any) -> Any:
    """Provenance value as plain JSON (paths and other objects as strings)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(_measurement("", value))
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def provenance_member(provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``"wsi_ai"`` FeatureCollection member: the wsi-ai version and the caller's mapping
    (parameters, slide file name and size); the caller's keys win. No date: the file must be
    the same bytes on every run (when and where a run happened goes into ``run.json``)."""
    member: dict[str, Any] = {"version": wsi_ai.__version__}
    member.update(_jsonable(dict(provenance or {})))
    return member


def features_to_collection(
    features: Iterable[Mapping[str, Any]], provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A FeatureCollection dict of ready-made features, with the provenance member."""
    member = provenance_member(provenance)
    return {"type": "FeatureCollection", "wsi_ai": member, "features": list(features)}


def _stream(
    write: Callable[[str], Any],
    annotations: Iterable[Annotation],
    provenance: Mapping[str, Any] | None,
    path: Path | None = None,
) -> GeoJsonReport:
    counts = GeoJsonReport(path)
    ids = _Ids()
    head = '{"type":"FeatureCollection","wsi_ai":' + _DUMPS(provenance_member(provenance))
    buffer = [head + ',"features":[']
    size = 0
    for a in annotations:
        feature, texts, repaired = _feature(a, ids)
        if feature is None:
            counts.dropped += 1
            continue
        counts.repaired += repaired
        text = _dump_feature(feature, texts)
        buffer.append(("\n" if counts.written == 0 else ",\n") + text)
        counts.written += 1
        size += len(text)
        if size >= _WRITE_CHUNK:
            write("".join(buffer))
            buffer, size = [], 0
    buffer.append("\n]}\n")
    write("".join(buffer))
    return counts


def dumps(annotations: Iterable[Annotation], provenance: Mapping[str, Any] | None = None) -> str:
    """The FeatureCollection text :func:`write_geojson` would write (no file involved)."""
    out = io.StringIO()
    _stream(out.write, annotations, provenance)
    return out.getvalue()


def write_geojson(
    path: str | os.PathLike[str],
    annotations: Iterable[Annotation],
    *,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    compresslevel: int = 6,
) -> GeoJsonReport:
    """Write annotations (geometry in level-0 px) as a QuPath-safe GeoJSON FeatureCollection.

    ``path`` ends in ``.geojson`` (or ``.geojson.gz``, gzip, which QuPath reads). The file is
    streamed into a temporary sibling and renamed into place (:func:`atomic_output`). An
    existing file raises :class:`~wsi_ai.errors.OutputExistsError` unless ``overwrite``.
    Nothing to write gives a valid, empty FeatureCollection and a report that says so (`empty`).
    """
    out = Path(path)
    if not out.name.lower().endswith(SUFFIXES):
        raise InvalidInputError(
            "QuPath imports only .geojson/.json files (optionally .gz); "
            "name the output *.geojson or *.geojson.gz",
            out,
        )
    try:
        with atomic_output(out, overwrite=overwrite) as tmp, open(tmp, "wb") as raw:
            if not out.name.lower().endswith(".gz"):
                return _stream(lambda s: raw.write(s.encode()), annotations, provenance, out)
            # no file name and mtime 0 in the header: the same bytes on every run
            with gzip.GzipFile("", "wb", compresslevel, raw, mtime=0) as gz:
                return _stream(lambda s: gz.write(s.encode()), annotations, provenance, out)
    except InvalidInputError as err:
        if err.path is not None:
            raise
        raise InvalidInputError(err.reason, out) from err
