"""Parse the values inside one QuPath GeoJSON Feature: geometry, classification, colours,
measurements, metadata, name and lock state, the way QuPath's importer reads them.

:mod:`wsi_ai.annotations.qupath` walks the file; this module turns one JSON value at a time
into Python values and raises :class:`FeatureError` (the caller adds the file and the feature
index). Positions are level-0 pixels; z values are dropped. Colours come back as ``(r, g, b)``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
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


GEOMETRY_TYPES = {
    "Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
    "GeometryCollection",
}  # fmt: skip


def _positions(value: Any, what: str) -> np.ndarray:
    """An (N, 2) float array of finite level-0 pixel positions ([x, y] or [x, y, z])."""
    if not isinstance(value, list):
        raise FeatureError(f"{what} must be an array of [x, y] positions")
    try:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] < 2:
            raise ValueError  # control flow only: caught just below, rows checked one by one
    except (TypeError, ValueError):
        rows = []
        for p in value:
            if not isinstance(p, list) or len(p) < 2:
                raise FeatureError(
                    f"{what}: a position must be [x, y], got {json.dumps(p)[:40]}"
                ) from None
            rows.append(p[:2])
        try:
            arr = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError):
            raise FeatureError(f"{what}: coordinates must be numbers") from None
    arr = arr[:, :2].reshape(-1, 2)
    if not np.isfinite(arr).all():
        raise FeatureError(f"{what}: coordinates must be finite numbers (found NaN or Infinity)")
    return arr


def _ring(value: Any, what: str) -> np.ndarray:
    ring = _positions(value, what)
    if 0 < len(ring) < 3:
        raise FeatureError(f"{what} has {len(ring)} position(s); a ring needs at least 3")
    return ring


def _polygon(value: Any, what: str) -> Polygon:
    if not isinstance(value, list):
        raise FeatureError(f"{what} must be an array of rings")
    rings = [_ring(r, f"{what} ring {i}") for i, r in enumerate(value)]
    if not rings or len(rings[0]) == 0:
        return Polygon()
    return Polygon(rings[0], [r for r in rings[1:] if len(r)])


def parse_geometry(node: Any) -> BaseGeometry:
    """Build a shapely geometry from a GeoJSON geometry object (standard or QuPath form)."""
    if not isinstance(node, dict):
        raise FeatureError("geometry must be a GeoJSON geometry object")
    kind = node.get("type")
    if kind not in GEOMETRY_TYPES:
        raise FeatureError(
            f"unknown geometry type {kind!r}; expected one of {sorted(GEOMETRY_TYPES)}"
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
        pos = _positions([coords], what) if isinstance(coords, list) and coords else None
        return Point() if pos is None else Point(pos[0])
    if kind == "MultiPoint":
        return MultiPoint(_positions(coords, what))
    if kind == "LineString":
        line = _positions(coords, what)
        if len(line) == 1:
            raise FeatureError("a LineString needs 0 or at least 2 positions")
        return LineString(line)
    if not isinstance(coords, list):
        raise FeatureError(f"{what} must be an array")
    if kind == "MultiLineString":
        return MultiLineString([_positions(c, f"{what} part {i}") for i, c in enumerate(coords)])
    if kind == "Polygon":
        return _polygon(coords, what)
    parts = [_polygon(c, f"{what} part {i}") for i, c in enumerate(coords)]
    return MultiPolygon([p for p in parts if not p.is_empty])


def _color_component(value: Any, what: str, rep: ImportReport, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FeatureError(f"{what} must hold numbers, got {value!r}")
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
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise FeatureError(f"{what} must be a packed RGB integer, got {value!r}")
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
