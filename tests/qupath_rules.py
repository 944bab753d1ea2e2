"""What QuPath's GeoJSON importer accepts, as a checker for tests.

Encodes ``shared/reference/qupath-geojson-import-rules.md`` (QuPath 0.6-0.8 read path):
``validate_qupath_geojson`` returns one human-readable line per violation, an empty list
when QuPath would import the document without throwing and without silently losing it.

``strict=True`` adds wsi-ai's own rules for files we write: a FeatureCollection, every feature
a ``"Feature"`` with a UUID ``id``, classifications in the object form with a colour, areas
(detection, tile, cell) only as Polygon/MultiPolygon, never a GeometryCollection, geometries
fully valid after 0.01 px snapping and not collapsing, polygon rings in RFC 7946 order
(exterior counter-clockwise, holes clockwise, in the numbers as written: a positive shoelace
area for an exterior), flat numeric measurements and flat string metadata. Third-party files
are checked with ``strict=False`` (QuPath ignores ring orientation).
"""

from __future__ import annotations

import gzip
import json
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import shape

GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
OBJECT_TYPES = frozenset(
    {"annotation", "detection", "cell", "tile", "tmaCore", "tma_core", "root", "unknown"}
    | {"PathAnnotationObject", "PathDetectionObject", "PathCellObject", "PathTileObject"}
    | {"TMACoreObject", "PathRootObject"}
)
_AREA_TYPES = frozenset({"detection", "tile", "cell"})
# Java's Double.parseDouble grammar (decimal forms), plus QuPath's own "inf"/"-inf".
_JAVA_DOUBLE = re.compile(
    r"[+-]?(NaN|Infinity|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[fFdD]?)|-?inf", re.ASCII
)
_JAVA_INT = re.compile(r"[+-]?\d+", re.ASCII)


def load(obj_or_path: Any) -> Any:
    """A parsed document, or the parsed contents of a .json/.geojson(.gz) file."""
    if not isinstance(obj_or_path, str | Path):
        return obj_or_path
    path = Path(obj_or_path)
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        raw = gzip.decompress(raw)
    return json.loads(raw.decode("utf-8-sig"))  # NaN/Infinity tokens pass, as in lenient Gson


def validate_qupath_geojson(obj_or_path: Any, *, strict: bool = True) -> list[str]:
    """Violations of QuPath's import rules (and wsi-ai's, with ``strict``); [] when clean."""
    try:
        doc = load(obj_or_path)
    except (OSError, ValueError, EOFError) as err:
        return [f"not readable as (gzipped) UTF-8 JSON: {err}"]
    problems: list[str] = []
    if strict and not (isinstance(doc, dict) and doc.get("type") == "FeatureCollection"):
        problems.append("top level: wsi-ai writes a FeatureCollection")
    _top(doc, "$", problems, strict)
    return problems


def _top(doc: Any, where: str, problems: list[str], strict: bool) -> None:
    if isinstance(doc, list):
        for i, element in enumerate(doc):
            _top(element, f"{where}[{i}]", problems, strict)
        return
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "Feature":
        _feature(doc, where, problems, strict)
    elif kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            problems.append(f"{where}: 'features' missing or not an array, nothing is imported")
            return
        for i, feature in enumerate(features):
            _feature(feature, f"{where}.features[{i}]", problems, strict)
    elif kind in GEOMETRY_TYPES:
        _geometry(doc, where, problems, strict, "annotation")
    else:
        problems.append(f"{where}: type {kind!r} is skipped silently by QuPath")


def _feature(feature: Any, where: str, problems: list[str], strict: bool) -> None:
    if not isinstance(feature, dict):
        problems.append(f"{where}: a feature must be a JSON object, got {_kind(feature)}")
        return
    if strict and feature.get("type") != "Feature":
        problems.append(f"{where}: type must be 'Feature'")
    if "id" in feature:
        _id(feature["id"], f"{where}.id", problems, strict)
    elif strict:
        problems.append(f"{where}: no 'id' (wsi-ai writes a UUID for every feature)")
    props = feature.get("properties")
    object_type = "annotation"
    if "properties" in feature:
        if isinstance(props, dict):
            object_type = _properties(props, f"{where}.properties", problems, strict)
        else:
            problems.append(f"{where}.properties: must be an object, got {_kind(props)} (throws)")
    if "geometry" not in feature:
        problems.append(f"{where}: 'geometry' is required (NullPointerException)")
    else:
        _geometry(feature["geometry"], f"{where}.geometry", problems, strict, object_type)
    if "nucleusGeometry" in feature:
        _geometry(feature["nucleusGeometry"], f"{where}.nucleusGeometry", problems, strict, "cell")
        if strict and object_type != "cell":
            problems.append(f"{where}: nucleusGeometry on a {object_type}, only cells use it")
    for key in ("childObjects", "children"):
        if isinstance(props, dict) and key in props:
            children = props[key]
            if not isinstance(children, list):
                problems.append(f"{where}.properties.{key}: must be an array")
                continue
            for i, child in enumerate(children):
                _feature(child, f"{where}.properties.{key}[{i}]", problems, strict)


def _id(value: Any, where: str, problems: list[str], strict: bool) -> None:
    if value is None or isinstance(value, dict | list):
        problems.append(f"{where}: {_kind(value)} throws; use a UUID string")
    elif strict and not _is_uuid(value):
        problems.append(f"{where}: {value!r} is not a UUID string")


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _properties(props: dict[str, Any], where: str, problems: list[str], strict: bool) -> str:
    """Check the properties; returns the object type QuPath will create."""
    key = next((k for k in ("objectType", "object_type", "type") if k in props), None)
    object_type = "annotation"
    if key is not None:
        value = props[key]
        if value is None or not isinstance(value, str | int | float):
            problems.append(f"{where}.{key}: {_kind(value)} is not an object type")
        elif str(value) not in OBJECT_TYPES:
            problems.append(f"{where}.{key}: {value!r} is not one of QuPath's object types")
        else:
            object_type = str(value)
    if "classification" in props:
        _classification(props["classification"], f"{where}.classification", problems, strict)
    if "name" in props and (props["name"] is None or isinstance(props["name"], dict | list)):
        problems.append(f"{where}.name: {_kind(props['name'])} throws; omit it or use a string")
    if "color" in props:
        _object_color(props["color"], f"{where}.color", problems)
    if "measurements" in props:
        _measurements(props["measurements"], f"{where}.measurements", problems, strict)
    if "metadata" in props:
        metadata = props["metadata"]
        if not isinstance(metadata, dict):
            problems.append(f"{where}.metadata: must be an object, got {_kind(metadata)}")
        elif strict and not all(isinstance(v, str) for v in metadata.values()):
            problems.append(f"{where}.metadata: wsi-ai writes flat string values only")
    if strict and "isLocked" in props and props["isLocked"] is not True:
        problems.append(f"{where}.isLocked: wsi-ai writes it only as true")
    return object_type


def _classification(value: Any, where: str, problems: list[str], strict: bool) -> None:
    if value is None or value == {}:
        if strict:
            problems.append(f"{where}: omit it rather than writing {json.dumps(value)}")
        return
    if isinstance(value, str):
        if not value.strip():
            problems.append(f"{where}: a blank class name throws")
        elif strict:
            problems.append(f"{where}: wsi-ai writes the object form with a color")
        return
    if not isinstance(value, dict):
        problems.append(f"{where}: {_kind(value)} throws; use {{'name': ..., 'color': [r,g,b]}}")
        return
    if "colorRGB" in value:  # the pre-0.4 form, read by reflection
        if not isinstance(value["colorRGB"], int) or isinstance(value["colorRGB"], bool):
            problems.append(f"{where}.colorRGB: must be a packed int")
        if strict:
            problems.append(f"{where}: legacy colorRGB form; wsi-ai writes name + color")
        return
    names = value.get("names") if "names" in value else [value.get("name")]
    if not isinstance(names, list) or not names:
        problems.append(f"{where}.names: must be a non-empty array of class names")
    elif not all(isinstance(n, str) and n.strip() for n in names):
        problems.append(f"{where}: class name missing or blank (throws)")
    if "color" not in value:
        problems.append(f"{where}: 'color' is mandatory in the object form (Unable to parse)")
        return
    color = value["color"]
    if not isinstance(color, list) or len(color) not in (0, 1, 3, 4):
        problems.append(f"{where}.color: must be an array of 0, 1, 3 or 4 numbers, got {color!r}")
    elif not all(_is_number(c) for c in color):
        problems.append(f"{where}.color: non-numeric or null element in {color!r}")
    elif strict and len(color) != 3:
        problems.append(f"{where}.color: wsi-ai writes [r, g, b]")


def _object_color(value: Any, where: str, problems: list[str]) -> None:
    if isinstance(value, list):
        return  # [r,g,b] is read, any other array is ignored
    if isinstance(value, str) and _JAVA_INT.fullmatch(value.strip()):
        return
    if isinstance(value, int) and not isinstance(value, bool):
        return
    problems.append(f"{where}: {value!r} throws; use [r, g, b]")


def _measurements(value: Any, where: str, problems: list[str], strict: bool) -> None:
    if isinstance(value, dict):
        for name, number in value.items():
            if isinstance(number, str) and not _JAVA_DOUBLE.fullmatch(number.strip()):
                problems.append(f"{where}.{name}: non-numeric string {number!r} throws")
            elif strict and not _is_number(number) and not isinstance(number, str):
                problems.append(f"{where}.{name}: {_kind(number)} is skipped; write a number")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            here = f"{where}[{i}]"
            if not isinstance(item, dict) or "value" not in item:
                problems.append(f"{here}: list-form measurement needs name and value")
            elif isinstance(item["value"], str):
                if not _JAVA_DOUBLE.fullmatch(item["value"].strip()):
                    problems.append(f"{here}.value: non-numeric string throws")
            elif not _is_number(item["value"]):
                problems.append(f"{here}.value: {_kind(item['value'])} throws")
        if strict:
            problems.append(f"{where}: wsi-ai writes measurements as an object")
    elif strict:
        problems.append(f"{where}: {_kind(value)} is ignored; write an object of numbers")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _geometry(geom: Any, where: str, problems: list[str], strict: bool, object_type: str) -> None:
    if not isinstance(geom, dict):
        problems.append(f"{where}: {_kind(geom)} is not a geometry (throws)")
        return
    kind = geom.get("type")
    if kind not in GEOMETRY_TYPES:
        hint = next((t for t in GEOMETRY_TYPES if t.lower() == str(kind).lower()), None)
        extra = f" (the case matters: {hint!r})" if hint else ""
        problems.append(f"{where}.type: {kind!r} is not a GeoJSON geometry type{extra}")
        return
    if "plane" in geom:
        plane = geom["plane"]
        if not isinstance(plane, dict) or set(plane) - {"c", "z", "t"}:
            problems.append(f"{where}.plane: only the keys c, z and t are accepted")
        elif not all(_is_number(v) for v in plane.values()):
            problems.append(f"{where}.plane: values must be numbers")
    if "coordinates" not in geom:
        problems.append(f"{where}: no 'coordinates' (a {kind} must have them; throws)")
        return
    if kind == "GeometryCollection":
        if strict:
            problems.append(f"{where}: wsi-ai never writes a GeometryCollection")
        return
    depth = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2}
    depth |= {"Polygon": 2, "MultiPolygon": 3}
    before = len(problems)
    _nested(geom["coordinates"], depth[kind], f"{where}.coordinates", problems, strict)
    if len(problems) > before:
        return
    if kind in ("Polygon", "MultiPolygon"):
        polygons = [geom["coordinates"]] if kind == "Polygon" else geom["coordinates"]
        for p, rings in enumerate(polygons):
            for r, ring in enumerate(rings):
                here = f"{where} polygon {p} ring {r}"
                if len(ring) < 4:
                    problems.append(f"{here}: {len(ring)} positions, a ring needs >= 4 (throws)")
                elif [float(v) for v in ring[0][:2]] != [float(v) for v in ring[-1][:2]]:
                    problems.append(f"{here}: not closed (first position != last; throws)")
        if len(problems) > before:
            return
        if strict:
            _orientation(polygons, where, problems)
    elif kind == "LineString" and len(geom["coordinates"]) == 1:
        problems.append(f"{where}: a LineString needs 0 or >= 2 positions")
        return
    if strict and object_type in _AREA_TYPES and kind not in ("Polygon", "MultiPolygon"):
        problems.append(f"{where}: a {object_type} must be a Polygon or MultiPolygon, not {kind}")
    _snapped_validity(geom, kind, where, problems, strict)


def _orientation(polygons: list[Any], where: str, problems: list[str]) -> None:
    """wsi-ai writes RFC 7946 rings: exterior counter-clockwise, holes clockwise, judged on the
    numbers as written (x right, y down), i.e. by the sign of the shoelace area."""
    for p, rings in enumerate(polygons):
        for r, ring in enumerate(rings):
            xy = np.asarray(_to_floats(ring), dtype=np.float64)[:, :2]
            area = float(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1])) / 2.0
            if (area > 0) != (r == 0):
                turn = "clockwise" if area < 0 else "counter-clockwise" if area > 0 else "flat"
                problems.append(
                    f"{where} polygon {p}: {'exterior' if r == 0 else 'hole'} ring {r} is {turn} "
                    f"(signed area {area:g}); wsi-ai writes RFC 7946 rings: exterior "
                    "counter-clockwise, holes clockwise, in the numbers as written"
                )


def _nested(coords: Any, depth: int, where: str, problems: list[str], strict: bool) -> None:
    """Arrays nested ``depth`` times around positions of >= 2 numbers."""
    if depth == 0:
        if not isinstance(coords, list) or len(coords) < 2:
            problems.append(f"{where}: a position needs >= 2 numbers, got {coords!r}")
            return
        numeric = _is_number if strict else _position_number
        if not all(numeric(v) for v in coords[:2]):
            problems.append(f"{where}: position {coords!r} is not numeric")
        return
    if not isinstance(coords, list):
        problems.append(f"{where}: expected an array, got {_kind(coords)}")
        return
    for i, item in enumerate(coords):
        _nested(item, depth - 1, f"{where}[{i}]", problems, strict)
        if len(problems) > 20:  # enough to say what is wrong
            return


def _position_number(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_JAVA_DOUBLE.fullmatch(value.strip()))
    return _is_number(value)


def _snapped_validity(
    geom: dict[str, Any], kind: str, where: str, problems: list[str], strict: bool
) -> None:
    """QuPath snaps to 0.01 px (round half up); an invalid polygon then fails the file."""
    try:
        shapely_geom = shape({"type": kind, "coordinates": _to_floats(geom["coordinates"])})
    except (ValueError, TypeError, GEOSException) as err:
        problems.append(f"{where}: shapely cannot build it: {err}")
        return
    snapped = shapely.transform(shapely_geom, lambda xy: np.floor(xy * 100.0 + 0.5) / 100.0)
    if kind in ("Polygon", "MultiPolygon"):
        try:
            reduced = shapely.set_precision(snapped, 0.01)
        except GEOSException as err:
            problems.append(f"{where}: invalid after 0.01 px snapping, QuPath fails: {err}")
            return
        if strict and not snapped.is_valid:
            reason = shapely.is_valid_reason(snapped)
            problems.append(f"{where}: invalid after 0.01 px snapping ({reason})")
        if strict and reduced.is_empty:
            problems.append(f"{where}: collapses to an empty ROI on QuPath's 0.01 px grid")
    elif strict and shapely_geom.is_empty:
        problems.append(f"{where}: empty geometry")


def _to_floats(coords: Any) -> Any:
    if isinstance(coords, list) and coords and not isinstance(coords[0], list):
        return [float(v) for v in coords[:2]]
    return [_to_floats(c) for c in coords] if isinstance(coords, list) else coords
