"""Parse the values inside one QuPath GeoJSON Feature: geometry, classification, colours,
measurements, metadata, name and lock state, the way QuPath's importer reads them.

:mod:`wsi_ai.annotations.qupath` walks the file; this module turns one JSON value at a time
into Python values and raises :class:`FeatureError` (the caller adds the file and the feature
index). Positions are level-0 pixels; z values are dropped. Colours come back as ``(r, g, b)``.

Geometry structure: positions are checked here (finite JSON numbers, never a string or a
boolean); the ring and line rules of RFC 7946 come from the ``geojson`` package's validators
(``check_polygon``, ``check_line_string``: what its objects' ``errors()`` call), after the
QuPath forms it does not know (z and further values, empty coordinates, unclosed rings) are
taken care of. ``geojson.loads`` and its objects are not used to parse: they turn ``true`` into
1 and ``"properties": []`` into ``{}``, pass NaN, round coordinates to 6 decimals, refuse the
NaN tokens QuPath accepts, raise TypeError on some documents, and took ~2.5x as long as the
standard decoder on a 50 MB export.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
from geojson.geometry import check_line_string, check_polygon
from shapely.geometry import (
    GeometryCollection,
    LineString,
    MultiLineString,
    MultiPoint,
    MultiPolygon,
    Point,
    Polygon,
)
from shapely.geometry.base import BaseGeometry

from wsi_ai.annotations.model import RGB
from wsi_ai.annotations.repair import ImportReport


class FeatureError(Exception):
    """A problem inside one feature; the caller adds the file and the feature index."""


# JSON numbers as decoded (checked with `type`, not isinstance: bool is a subclass of int)
_NUMBERS = frozenset({int, float})
GEOMETRY_TYPES = {
    "Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
    "GeometryCollection",
}  # fmt: skip


def _json(value: Any) -> str:
    """A short JSON rendering of a bad value, for a message."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _positions(value: Any, what: str) -> np.ndarray:
    """An (N, 2) float array of level-0 pixel positions ([x, y], or [x, y, z, ...] whose further
    values QuPath ignores). Every value must be a finite JSON number: never a string or a
    boolean, which would be coerced silently (``"10"`` to 10, ``true`` to 1)."""
    if type(value) is not list:
        raise FeatureError(f"{what} must be an array of [x, y] positions, got {_json(value)}")
    for p in value:
        if type(p) is not list or len(p) < 2:
            raise FeatureError(f"{what}: a position must be [x, y], got {_json(p)}")
    flat = list(itertools.chain.from_iterable(value))
    if not set(map(type, flat)) <= _NUMBERS:
        bad = next(v for v in flat if type(v) not in _NUMBERS)
        raise FeatureError(f"{what}: coordinates must be numbers, got {_json(bad)}; fix the file")
    try:
        if len(flat) == 2 * len(value):
            arr = np.array(flat, dtype=np.float64).reshape(-1, 2)
        else:  # z (and more): kept out, as QuPath does
            arr = np.array([p[:2] for p in value], dtype=np.float64).reshape(-1, 2)
    except OverflowError:
        raise FeatureError(f"{what}: a coordinate is too large for a 64-bit float") from None
    if not np.isfinite(arr).all():
        raise FeatureError(f"{what}: coordinates must be finite numbers (found NaN or Infinity)")
    return arr


def _closed(ring: Any) -> Any:
    """A ring closed when it is not (wsi-ai reads unclosed rings; QuPath refuses them)."""
    if type(ring) is list and ring and ring[0] != ring[-1]:
        return [*ring, ring[0]]
    return ring


def _polygon(value: Any, what: str) -> Polygon:
    """A Polygon from its rings (an all-empty one is an empty Polygon). After the positions,
    the ``geojson`` package checks the rings (RFC 7946: >= 4 positions, closed), an unclosed
    ring closed first: wsi-ai reads those, QuPath refuses them."""
    if type(value) is not list:
        raise FeatureError(f"{what} must be an array of rings, got {_json(value)}")
    if all(r == [] for r in value):
        return Polygon()
    rings = [_positions(r, f"{what} ring {i}") for i, r in enumerate(value)]
    problem = check_polygon([_closed(r) for r in value])
    if problem:
        raise FeatureError(f"{what}: {problem} (RFC 7946)")
    return Polygon(rings[0], rings[1:])


def _line(value: Any, what: str) -> np.ndarray:
    """A LineString's positions: none (an empty line, which QuPath reads) or >= 2 (RFC 7946,
    checked by the ``geojson`` package once the positions are known to be numbers)."""
    line = _positions(value, what)
    if len(line):
        problem = check_line_string([p[:2] for p in value])
        if problem:
            raise FeatureError(f"{what}: {problem} (RFC 7946)")
    return line


def parse_geometry(node: Any) -> BaseGeometry:
    """Build a shapely geometry from a GeoJSON geometry object (standard or QuPath form)."""
    if not isinstance(node, dict):
        raise FeatureError(f"geometry must be a GeoJSON geometry object, got {_json(node)}")
    kind = node.get("type")
    if not isinstance(kind, str) or kind not in GEOMETRY_TYPES:
        shown = repr(kind[:40]) if isinstance(kind, str) else _json(kind)
        raise FeatureError(
            f"unknown geometry type {shown}; expected one of {sorted(GEOMETRY_TYPES)}"
        )
    if kind == "GeometryCollection":
        members = node.get("geometries", node.get("coordinates"))
        if not isinstance(members, list):
            raise FeatureError("GeometryCollection needs a 'geometries' array")
        return GeometryCollection([parse_geometry(m) for m in members])
    if "coordinates" not in node:
        raise FeatureError(f"{kind} geometry has no 'coordinates'")
    coords = node["coordinates"]
    what = f"{kind} coordinates"
    if kind == "Point":
        if coords == []:
            return Point()
        if type(coords) is not list:
            raise FeatureError(f"{what} must be an [x, y] position, got {_json(coords)}")
        return Point(_positions([coords], what)[0])
    if kind == "MultiPoint":
        return MultiPoint(_positions(coords, what))
    if kind == "LineString":
        return LineString(_line(coords, what))
    if type(coords) is not list:
        raise FeatureError(f"{what} must be an array, got {_json(coords)}")
    if kind == "MultiLineString":
        lines = [_line(c, f"{what} part {i}") for i, c in enumerate(coords)]
        return MultiLineString([line for line in lines if len(line)])  # empty parts: none
    if kind == "Polygon":
        return _polygon(coords, what)
    parts = [_polygon(c, f"{what} part {i}") for i, c in enumerate(coords)]
    return MultiPolygon([p for p in parts if not p.is_empty])


def _color_component(value: Any, what: str, rep: ImportReport, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FeatureError(f"{what} must hold finite numbers, got {_json(value)}")
    clipped = int(min(255, max(0, round(value))))
    if clipped != value:
        rep.warn(where, f"{what} value {value!r} clipped to {clipped}")
    return clipped


def _packed_rgb(value: Any, what: str) -> RGB:
    """RGB from a packed (A)RGB int, signed (Java) or unsigned 32-bit."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise FeatureError(f"{what} {value!r} is not a packed RGB integer") from None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise FeatureError(f"{what} must be a packed RGB integer, got {_json(value)}")
    v = int(value)
    return ((v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF)


def _hex_rgb(value: str, what: str) -> RGB:
    text = value.strip().lstrip("#")
    if len(text) != 6:
        raise FeatureError(f"{what} {value!r} is not '#rrggbb', a packed int or [r, g, b]")
    try:
        return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    except ValueError:
        raise FeatureError(
            f"{what} {value!r} is not '#rrggbb', a packed int or [r, g, b]"
        ) from None


def _rgb_array(value: list[Any], what: str, rep: ImportReport, where: str) -> RGB:
    r, g, b = (_color_component(c, what, rep, where) for c in value[:3])
    return (r, g, b)


def parse_classification(
    value: Any, rep: ImportReport, where: str
) -> tuple[str | None, RGB | None]:
    """Class name (derived classes kept whole, "A: B") and class colour, or (None, None)."""
    if value is None or value == {}:
        return None, None
    if isinstance(value, str):
        if not value.strip():
            raise FeatureError("classification is a blank string; give a class name or null")
        return value, None
    if not isinstance(value, dict):
        raise FeatureError(f"classification must be a string or {{name, color}}, got {value!r}")
    name = _class_name(value)
    if "color" in value:
        color = value["color"]
        if not isinstance(color, list) or len(color) not in (0, 1, 3, 4):
            raise FeatureError(
                f"classification color must be [r, g, b], [r, g, b, a] or [packed], got {color!r}"
            )
        if not color:
            return name, None
        if len(color) == 1:
            return name, _packed_rgb(color[0], "classification color")
        return name, _rgb_array(color, "classification color", rep, where)
    if "colorRGB" in value:
        return name, _packed_rgb(value["colorRGB"], "classification colorRGB")
    rep.warn(where, f"classification {name!r} has no color (QuPath itself refuses this); kept")
    return name, None


def _class_name(value: dict[str, Any]) -> str:
    names = value.get("names")
    if names is not None:
        if not isinstance(names, list) or not names:
            raise FeatureError("classification 'names' must be a non-empty array of strings")
        if not all(isinstance(n, str) and n.strip() for n in names):
            raise FeatureError("classification 'names' holds a blank or non-string entry")
        return ": ".join(names)
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise FeatureError("classification object needs a non-blank 'name' (or 'names')")
    parent = value.get("parentClass")
    if isinstance(parent, dict) and parent:
        return f"{_class_name(parent)}: {name}"
    return name


def parse_object_color(value: Any, rep: ImportReport, where: str) -> RGB | None:
    """The object's own colour: packed int, numeric string, [r, g, b] or "#rrggbb"."""
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) != 3:
            rep.warn(where, f"object color {value!r} is not [r, g, b]; ignored as QuPath does")
            return None
        return _rgb_array(value, "object color", rep, where)
    if isinstance(value, str) and value.strip().startswith("#"):
        return _hex_rgb(value, "object color")
    return _packed_rgb(value, "object color")


def _number(value: Any, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise FeatureError(f"{what} is {value!r}, not a number; use a number, 'NaN' or 'Infinity'")


def parse_measurements(value: Any, rep: ImportReport, where: str) -> dict[str, float]:
    """Measurements as floats, from the object form or the pre-0.4 list of {name, value}."""
    out: dict[str, float] = {}
    if value is None:
        return out
    if isinstance(value, dict):
        for key, v in value.items():
            if v is None or isinstance(v, bool | dict | list):
                rep.warn(where, f"measurement {key!r} is {json.dumps(v)[:20]}; skipped")
                continue
            out[str(key)] = _number(v, f"measurement {key!r}")
    elif isinstance(value, list):  # pre-0.4 form: [{"name": ..., "value": ...}]
        for i, item in enumerate(value):
            if not isinstance(item, dict) or "name" not in item:
                raise FeatureError(f"measurement {i} must be {{'name': ..., 'value': ...}}")
            v = item.get("value")
            if v is None or isinstance(v, bool):
                raise FeatureError(f"measurement {item['name']!r} has no numeric value")
            out[str(item["name"])] = _number(v, f"measurement {item['name']!r}")
    else:
        rep.warn(where, "measurements is neither an object nor a list; ignored")
    return out


def parse_metadata(value: dict[str, Any], rep: ImportReport, where: str) -> dict[str, str]:
    """QuPath metadata: primitive values kept as strings, others dropped with a warning."""
    out: dict[str, str] = {}
    for key, v in value.items():
        if isinstance(v, bool):
            out[str(key)] = "true" if v else "false"
        elif isinstance(v, str | int | float):
            out[str(key)] = str(v)
        else:
            rep.warn(where, f"metadata {key!r} is not a string or number; dropped")
    return out


def parse_name(value: Any) -> str | None:
    """The object name; numbers and booleans become strings as in QuPath."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise FeatureError(f"'name' must be a string, got {type(value).__name__}")


def parse_locked(value: Any) -> bool:
    """QuPath's getAsBoolean: true, or the string "true" (any case); anything else is false."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"
