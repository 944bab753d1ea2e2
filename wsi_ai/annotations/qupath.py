"""Read QuPath GeoJSON (QuPath 0.2 to 0.7 exports, or any GeoJSON) into :class:`Annotation`.

What is accepted follows QuPath's own importer (``PathIO.readObjects``; the project's notes in
``qupath-geojson-import-rules.md``):

* Top level: a JSON array (each element handled by the same rules, recursively), a ``Feature``,
  a ``FeatureCollection`` (its ``features`` are read as Features without a type check) or a bare
  geometry, which becomes one unclassified annotation. Anything else is skipped, as QuPath skips
  it, and noted in the :class:`ImportReport`. Files may be gzip-compressed (``.geojson.gz``).
* ``childObjects`` / ``children`` are flattened into the returned list, after their parent.
  Each child carries ``properties["parent_index"]`` (the parent's position in the list, or None
  when the parent was not kept) and, where the parent has an id, ``properties["parent_id"]``.
* Properties: ``objectType`` (or ``object_type``, or ``type``), ``classification`` (a string, kept
  whole for derived classes such as ``"Tumor: Positive"``; ``{name|names, color}``; legacy
  ``{name, colorRGB}`` with a signed 32-bit packed ARGB int), ``name``, ``color`` (packed int or
  ``[r, g, b]``), ``isLocked``, ``measurements`` (object form, or the pre-0.4 list of
  ``{name, value}``; numeric strings and "NaN"/"Infinity" read as floats) and ``metadata``
  (merged into ``properties``, values as strings, which the GeoJSON writer writes back).
  The feature ``id`` is kept (the 0.2 type names such as ``PathAnnotationObject`` set the
  type instead). ``nucleusGeometry`` becomes :attr:`Annotation.nucleus_geometry` of a cell.
  Other properties are kept verbatim in ``properties``; ``isEllipse`` and ``plane`` of the
  geometry become ``properties["is_ellipse"]`` and ``properties["plane"]``.
* Colour: :attr:`Annotation.color` is the object's own colour when it has one (QuPath draws an
  object in that colour), else its class colour; :attr:`Annotation.class_color` is the class
  colour (when both exist it is also kept as ``properties["classification_color"]``).

Deliberate differences from QuPath: an invalid polygon (bow tie, spike, overlapping parts) is
repaired with :func:`shapely.make_valid`, keeping the polygonal parts, and counted, where QuPath
refuses the whole file; a geometry that collapses to nothing is dropped and counted. Where QuPath
throws but the meaning is clear the reader is lenient: ``"properties": null``, ``"name": null``,
a class object without a colour, a standard GeometryCollection, unclosed rings, ``"#rrggbb"``.
TMA cores and the root object are skipped, as QuPath's file import does.

Coordinates are level-0 pixels (origin top-left, x right, y down), copied as they are: no
0.01 px snapping, z values dropped. One malformed feature fails the whole file, like QuPath, with
an :class:`~wsi_ai.errors.InvalidInputError` naming the file and the feature index.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsi_ai.annotations import qupath_fields as fields
from wsi_ai.annotations.model import Annotation, ObjectType
from wsi_ai.annotations.qupath_fields import GEOMETRY_TYPES, FeatureError
from wsi_ai.annotations.repair import ImportReport, repair_polygonal, warn_summary
from wsi_ai.errors import InvalidInputError, SlideNotFoundError

_OBJECT_TYPES: dict[str, ObjectType | None] = {
    "annotation": "annotation",
    "detection": "detection",
    "cell": "cell",
    "tile": "tile",
    "unknown": "annotation",
    "tmaCore": None,
    "tma_core": None,
    "root": None,
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": None,
    "PathRootObject": None,
}
_KNOWN_PROPERTIES = {
    "objectType", "object_type", "type", "classification", "name", "color", "isLocked",
    "measurements", "metadata", "childObjects", "children",
}  # fmt: skip


def read_qupath_geojson(
    path: str | Path, *, report: ImportReport | None = None
) -> list[Annotation]:
    """Read a QuPath GeoJSON file (``.geojson``, ``.json``, optionally gzip-compressed).

    Coordinates are level-0 pixels. Pass an :class:`ImportReport` to learn what was repaired,
    dropped or skipped; a Python warning summarises repairs either way.
    """
    path = Path(path)
    report = report if report is not None else ImportReport()
    report.path = path
    data = _load_json(path)
    out: list[Annotation] = []
    _walk_top(data, "", path, out, report)
    if not out:
        report.warn("file", "no objects found")
    warn_summary(report)
    return out


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise SlideNotFoundError("annotation file not found; check the path", path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise InvalidInputError(f"corrupt gzip data ({err}); re-export the file", path) from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InvalidInputError(
            f"not UTF-8 text at byte {err.start}; GeoJSON must be UTF-8", path
        ) from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInputError(
            f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}; "
            "fix or re-export the file",
            path,
        ) from err
    except RecursionError as err:
        raise InvalidInputError("JSON nested too deeply to read; fix the file", path) from err


def _walk_top(node: Any, label: str, path: Path, out: list[Annotation], rep: ImportReport) -> None:
    """Apply QuPath's top-level rules: arrays recurse, Features/collections/geometries read."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk_top(item, f"{label}.{i}" if label else str(i), path, out, rep)
        return
    where = f"feature {label or 0}"
    kind = node.get("type") if isinstance(node, dict) else None
    if kind == "Feature":
        _read_feature(node, where, path, out, rep, parent=None)
    elif kind == "FeatureCollection":
        features = node.get("features")
        if not isinstance(features, list):
            rep.skipped += 1
            rep.warn(where, "FeatureCollection without a 'features' array; nothing imported")
            return
        for i, feature in enumerate(features):
            sub = f"feature {label}.{i}" if label else f"feature {i}"
            _read_feature(feature, sub, path, out, rep, parent=None)
    elif kind in GEOMETRY_TYPES:
        geometry = _guarded(path, where, lambda: fields.parse_geometry(node))
        geometry = repair_polygonal(geometry, rep, where)
        if geometry is not None:
            out.append(Annotation(geometry=geometry))
    else:
        rep.skipped += 1
        rep.warn(where, f"type {kind!r} is not Feature, FeatureCollection or a geometry; skipped")


def _guarded(path: Path, where: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except FeatureError as err:
        raise InvalidInputError(f"{where}: {err}", path) from None


def _read_feature(
    feature: Any,
    where: str,
    path: Path,
    out: list[Annotation],
    rep: ImportReport,
    parent: tuple[int | None, str | None] | None,
) -> None:
    """Read one Feature (and its children, flattened) into ``out``."""
    parsed = _guarded(path, where, lambda: _parse_feature(feature, where, rep, parent))
    index: int | None = None
    if parsed is not None:
        index = len(out)
        out.append(parsed)
    children = _children(feature)
    if children is None:
        return
    if not isinstance(children, list):
        raise InvalidInputError(f"{where}: childObjects must be an array of Features", path)
    own_id = parsed.id if parsed is not None else None
    for j, child in enumerate(children):
        _read_feature(child, f"{where} child {j}", path, out, rep, parent=(index, own_id))


def _children(feature: dict[str, Any]) -> Any:
    """Nested Features: ``childObjects``/``children`` in properties (QuPath) or the Feature."""
    props = feature.get("properties")
    for holder in (props if isinstance(props, dict) else {}, feature):
        for key in ("childObjects", "children"):
            if holder.get(key) is not None:
                return holder[key]
    return None


def _parse_feature(
    feature: Any, where: str, rep: ImportReport, parent: tuple[int | None, str | None] | None
) -> Annotation | None:
    if not isinstance(feature, dict):
        raise FeatureError(f"expected a Feature object, got {type(feature).__name__}")
    props = feature.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise FeatureError("'properties' must be an object; fix the file")
    feature_id, object_type = _feature_id(feature.get("id"))
    type_value = next((props[k] for k in ("objectType", "object_type", "type") if k in props), None)
    if type_value is not None:
        if not isinstance(type_value, str):
            raise FeatureError(f"objectType must be a string, got {type_value!r}")
        if type_value not in _OBJECT_TYPES:
            rep.warn(where, f"unknown objectType {type_value!r}; read as an annotation")
        object_type = _OBJECT_TYPES.get(type_value, "annotation")
    if object_type is None:
        rep.skipped += 1
        rep.warn(where, "TMA core or root object; skipped as QuPath's file import does")
        return None

    if "geometry" not in feature or feature["geometry"] is None:
        raise FeatureError("missing geometry; every QuPath object needs a GeoJSON geometry")
    raw_geometry = feature["geometry"]
    geometry = repair_polygonal(fields.parse_geometry(raw_geometry), rep, where)
    if geometry is None:
        return None
    nucleus = None
    if feature.get("nucleusGeometry") is not None:
        nucleus = repair_polygonal(
            fields.parse_geometry(feature["nucleusGeometry"]), rep, f"{where} nucleus"
        )
        if object_type != "cell":
            rep.warn(where, "nucleusGeometry on a non-cell object; ignored")
            nucleus = None

    class_name, class_color = fields.parse_classification(props.get("classification"), rep, where)
    own_color = fields.parse_object_color(props.get("color"), rep, where)
    properties: dict[str, Any] = {k: v for k, v in props.items() if k not in _KNOWN_PROPERTIES}
    if own_color is not None and class_color is not None:
        properties["classification_color"] = class_color
    if isinstance(props.get("metadata"), dict):  # flat, as the GeoJSON writer writes them back
        properties.update(fields.parse_metadata(props["metadata"], rep, where))
    if isinstance(raw_geometry, dict):
        if raw_geometry.get("isEllipse") is True:
            properties["is_ellipse"] = True
        if isinstance(raw_geometry.get("plane"), dict):
            properties["plane"] = raw_geometry["plane"]
    if parent is not None:
        properties["parent_index"] = parent[0]
        if parent[1] is not None:
            properties["parent_id"] = parent[1]
    return Annotation(
        geometry=geometry,
        classification=class_name,
        color=own_color if own_color is not None else class_color,
        name=fields.parse_name(props.get("name")),
        object_type=object_type,
        measurements=fields.parse_measurements(props.get("measurements"), rep, where),
        properties=properties,
        id=feature_id,
        nucleus_geometry=nucleus,
        locked=fields.parse_locked(props.get("isLocked")),
        class_color=class_color,
    )


def _feature_id(value: Any) -> tuple[str | None, ObjectType | None]:
    """The id to keep and the object type it implies (QuPath 0.2 wrote the type as the id)."""
    if value is None:
        return None, "annotation"
    if isinstance(value, str):
        if value in _OBJECT_TYPES and value.startswith(("Path", "TMA")):
            return None, _OBJECT_TYPES[value]
        return value, "annotation"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value), "annotation"
    raise FeatureError(f"'id' must be a string, got {type(value).__name__}")
