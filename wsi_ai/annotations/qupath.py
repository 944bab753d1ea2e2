"""Read QuPath GeoJSON (QuPath 0.2 to 0.7 exports, or any GeoJSON) into :class:`Annotation`.

What is accepted follows QuPath's own importer (``PathIO.readObjects``; the project's notes in
``qupath-geojson-import-rules.md``):

* Top level: a JSON array (each element handled by the same rules, recursively), a ``Feature``,
  a ``FeatureCollection`` (its ``features`` are read as Features without a type check) or a bare
  geometry, which becomes one unclassified annotation. Members may come in any order; other
  members are ignored. Files may be gzip-compressed (``.geojson.gz``). A top-level array and a
  FeatureCollection's features are decoded one element at a time (:mod:`.json_stream`), so a
  50 MB export never becomes one tree of Python objects.
* Anything else is refused with an :class:`~wsi_ai.errors.InvalidInputError` naming the file
  and the format expected (QuPath skips it silently, which turns a file it did not understand
  into an empty import): ``{}``, ``null``, a string, an unknown ``type`` (case matters),
  ``features`` that is not an array, another format (V7 Darwin JSON, COCO JSON). A well-formed
  file with no objects (``{"type": "FeatureCollection", "features": []}``, ``[]``) is legal,
  with a warning.
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
0.01 px snapping, z values dropped. They must be finite JSON numbers: a string (``"10"``), a
boolean or NaN/Infinity is refused, never coerced (QuPath coerces numeric strings). Rings and
lines are checked with the ``geojson`` package's RFC 7946 rules (:mod:`.qupath_fields`). One
malformed feature fails the whole file, like QuPath, with an
:class:`~wsi_ai.errors.InvalidInputError` naming the file and the feature index.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsi_ai.annotations import json_stream
from wsi_ai.annotations import qupath_fields as fields
from wsi_ai.annotations.model import Annotation, ObjectType
from wsi_ai.annotations.qupath_fields import GEOMETRY_TYPES, FeatureError
from wsi_ai.annotations.repair import ImportReport, RepairError, repair_polygonal, warn_summary
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
_CONTAINERS = ("Feature", "FeatureCollection")
_KNOWN_PROPERTIES = {
    "objectType", "object_type", "type", "classification", "name", "color", "isLocked",
    "measurements", "metadata", "childObjects", "children",
}  # fmt: skip


def read_qupath_geojson(
    path: str | Path, *, report: ImportReport | None = None
) -> list[Annotation]:
    """Read a QuPath GeoJSON file (``.geojson``, ``.json``, optionally gzip-compressed).

    Coordinates are level-0 pixels. Pass an :class:`ImportReport` to learn what was repaired,
    dropped or skipped; a Python warning summarises repairs either way, and says so when a
    well-formed file holds no objects. A file that is not GeoJSON, or not wholly understood,
    raises :class:`~wsi_ai.errors.InvalidInputError` naming the file and what was expected.
    """
    path = Path(path)
    report = report if report is not None else ImportReport()
    report.path = path
    text = _load_text(path)
    out: list[Annotation] = []
    try:
        _read_document(text, path, out, report)
    except json.JSONDecodeError as err:
        raise InvalidInputError(
            f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}; "
            "fix or re-export the file",
            path,
        ) from None
    except RecursionError:
        raise InvalidInputError("JSON nested too deeply to read; fix the file", path) from None
    except RepairError as err:
        raise InvalidInputError(str(err), path) from None
    if not out:
        report.warn("file", "no objects found")
        warnings.warn(f"{path}: no objects found (the file is empty)", stacklevel=2)
    warn_summary(report)
    return out


def _load_text(path: Path) -> str:
    if not path.is_file():
        raise SlideNotFoundError("annotation file not found; check the path", path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise InvalidInputError(f"corrupt gzip data ({err}); re-export the file", path) from err
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InvalidInputError(
            f"not UTF-8 text at byte {err.start}; GeoJSON must be UTF-8", path
        ) from err


def _read_document(text: str, path: Path, out: list[Annotation], rep: ImportReport) -> None:
    """Top-level arrays and a FeatureCollection's features are read one element at a time."""
    before = dataclasses.replace(rep, warnings=list(rep.warnings))
    tentative = False
    failed: InvalidInputError | None = None

    def on_element(i: int, item: Any) -> None:
        _walk_top(item, str(i), path, out, rep)

    def on_feature(i: int, feature: Any, members: dict[str, Any]) -> None:
        # "type" may come after "features" (json.dumps(sort_keys=True) writes them so): read
        # them as Features until it is known (an error waits for it), and check it at the end
        nonlocal tentative, failed
        if members.get("type", "FeatureCollection") != "FeatureCollection" or failed:
            return
        tentative = tentative or "type" not in members
        try:
            _read_feature(feature, f"feature {i}", path, out, rep, parent=None)
        except InvalidInputError as err:
            if "type" in members:
                raise
            failed = err

    top = json_stream.read_top(text, on_element, on_feature)
    if top.kind == "scalar":
        raise _not_geojson(top.value, "", path)
    if top.kind == "array":
        return
    kind = _type_of(top.members)
    if failed is not None and kind == "FeatureCollection":
        raise failed
    if top.streamed and kind != "FeatureCollection" and tentative:
        if kind != "Feature" and kind not in GEOMETRY_TYPES:
            raise _not_geojson(top.members, "", path)
        # a Feature or a geometry with a foreign "features" member, after it: read it again
        out.clear()
        for f in dataclasses.fields(rep):
            setattr(rep, f.name, getattr(before, f.name))
        _walk_top(json.loads(text), "", path, out, rep)
        return
    _walk_top(top.members, "", path, out, rep, streamed=top.streamed)


def _walk_top(
    node: Any,
    label: str,
    path: Path,
    out: list[Annotation],
    rep: ImportReport,
    streamed: bool = False,
) -> None:
    """Apply QuPath's top-level rules: arrays recurse, Features/collections/geometries read;
    anything else is refused (QuPath skips it silently: a file it did not understand)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk_top(item, f"{label}.{i}" if label else str(i), path, out, rep)
        return
    where = f"feature {label or 0}"
    kind = _type_of(node)
    if kind == "Feature":
        _read_feature(node, where, path, out, rep, parent=None)
    elif kind == "FeatureCollection":
        if streamed:
            return  # its features were read one by one
        features = node.get("features")
        if not isinstance(features, list):
            raise InvalidInputError(
                f"{'' if not label else where + ': '}FeatureCollection without a 'features' "
                f"array ({_features_kind(node)}); fix the file or re-export it from QuPath",
                path,
            )
        for i, feature in enumerate(features):
            sub = f"feature {label}.{i}" if label else f"feature {i}"
            _read_feature(feature, sub, path, out, rep, parent=None)
    elif kind in GEOMETRY_TYPES:
        geometry = _guarded(path, where, lambda: fields.parse_geometry(node))
        geometry = repair_polygonal(geometry, rep, where)
        if geometry is not None:
            out.append(Annotation(geometry=geometry))
    else:
        raise _not_geojson(node, where if label else "", path)


def _type_of(node: Any) -> str | None:
    """The "type" member when it is a string (anything else is no GeoJSON type)."""
    kind = node.get("type") if isinstance(node, dict) else None
    return kind if isinstance(kind, str) else None


def _features_kind(node: dict[str, Any]) -> str:
    if "features" not in node:
        return "no 'features' member"
    return f"'features' is {_describe(node['features'])}, not an array"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


_OTHER_FORMATS = (  # (members that identify it, its name): formats people export by mistake
    ({"annotations", "image"}, "V7 Darwin JSON"),  # Darwin JSON 1.0
    ({"annotations", "item"}, "V7 Darwin JSON"),  # Darwin JSON 2.0
    ({"images", "annotations", "categories"}, "COCO JSON"),
)
EXPECTED = (
    "expected QuPath GeoJSON (a FeatureCollection, a Feature, a geometry or an array of them)"
)
_TODO = "export GeoJSON from QuPath (File > Export objects as GeoJSON) or convert the file first"


def _not_geojson(node: Any, where: str, path: Path) -> InvalidInputError:
    """The one-line refusal of something that is not GeoJSON, naming what was expected."""
    what = f"{_describe(node)} is not GeoJSON"
    if isinstance(node, dict):
        kind = node.get("type")
        other = next((name for keys, name in _OTHER_FORMATS if keys <= node.keys()), None)
        if other is not None and kind is None:
            what = f"this is {other}, not GeoJSON"
        elif kind is None:
            what = 'a JSON object without a "type" member is not GeoJSON'
        else:
            shown = repr(kind[:40]) if isinstance(kind, str) else json.dumps(kind)[:40]
            what = f"type {shown} is not a GeoJSON type"
            if str(kind).lower() in {t.lower() for t in (*GEOMETRY_TYPES, *_CONTAINERS)}:
                what += " (the case matters)"
    prefix = f"{where}: " if where else ""
    return InvalidInputError(f"{prefix}{what}; {EXPECTED}; {_TODO}", path)


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
        try:
            nucleus = fields.parse_geometry(feature["nucleusGeometry"])
        except FeatureError as err:
            raise FeatureError(f"nucleusGeometry: {err}") from None
        nucleus = repair_polygonal(nucleus, rep, f"{where} nucleus")
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
