"""The QuPath GeoJSON writer, checked against QuPath's import rules (tests/qupath_rules.py)."""

from __future__ import annotations

import copy
import gzip
import json
import math
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon, box, shape

import wsi_ai
from tests.qupath_rules import validate_qupath_geojson
from wsi_ai.annotations.model import Annotation
from wsi_ai.errors import InvalidInputError, OutputExistsError
from wsi_ai.export.geojson import (
    annotation_to_feature,
    class_color,
    dumps,
    features_to_collection,
    qupath_safe_geometry,
    write_geojson,
)

BOWTIE = Polygon([(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)])
SPIKE = Polygon([(0, 0), (10, 0), (10, 10), (5, 10), (5, 20), (5, 10), (0, 10)])
QUPATH_FILES = [
    "coscia_03012023_JN.geojson",
    "coscia_Single_cells.geojson",
    "coscia_TD_01_verysmall_mIF.geojson",
    "dlup_qupath05.geojson",
    "histoqc_geojson_example_qupath02.json",
    "histoqc_holed.geojson",
    "qupath_test_polygon.geojson",
]


def _write(tmp_path: Path, annotations: list[Annotation], name: str = "out.geojson") -> Any:
    report = write_geojson(tmp_path / name, annotations)
    assert validate_qupath_geojson(tmp_path / name) == []
    return report, json.loads((tmp_path / name).read_text(encoding="utf-8"))


def _geometry(doc: dict[str, Any], i: int = 0) -> Any:
    return shape(doc["features"][i]["geometry"])


# ---------------------------------------------------------------- geometry safety


def test_bowtie_is_repaired_and_written_valid(tmp_path: Path) -> None:
    report, doc = _write(tmp_path, [Annotation(BOWTIE, classification="Tumor")])
    assert (report.written, report.repaired, report.dropped) == (1, 1, 0)
    geom = _geometry(doc)
    assert geom.is_valid and geom.geom_type == "MultiPolygon"
    assert geom.area == pytest.approx(50.0)  # both triangles kept


def test_polygon_with_hole_keeps_the_hole(tmp_path: Path) -> None:
    holed = Polygon(box(0, 0, 100, 100).exterior.coords, [box(20, 20, 40, 40).exterior.coords])
    report, doc = _write(tmp_path, [Annotation(holed)])
    rings = doc["features"][0]["geometry"]["coordinates"]
    assert len(rings) == 2 and report.repaired == 0
    assert _geometry(doc).area == pytest.approx(100 * 100 - 20 * 20)


def test_geometry_collection_from_make_valid_becomes_polygons_only(tmp_path: Path) -> None:
    assert shapely.make_valid(SPIKE).geom_type == "GeometryCollection"  # the case under test
    report, doc = _write(tmp_path, [Annotation(SPIKE)])
    assert doc["features"][0]["geometry"]["type"] in ("Polygon", "MultiPolygon")
    assert report.repaired == 1
    assert _geometry(doc).area == pytest.approx(100.0)


def test_overlapping_multipolygon_parts_are_merged() -> None:
    geom, repaired = qupath_safe_geometry(MultiPolygon([box(0, 0, 10, 10), box(5, 5, 15, 15)]))
    assert repaired and geom is not None and geom.is_valid
    assert geom.area == pytest.approx(175.0)


def test_tiny_polygon_is_dropped_and_counted(tmp_path: Path) -> None:
    tiny = box(5.0, 5.0, 5.001, 5.001)
    report, doc = _write(tmp_path, [Annotation(tiny), Annotation(box(0, 0, 1, 1))])
    assert (report.written, report.dropped, report.warnings) == (1, 1, 1)
    assert len(doc["features"]) == 1
    with pytest.raises(InvalidInputError, match=r"0\.01 px"):
        annotation_to_feature(Annotation(tiny))


def test_grid_sized_triangle_that_qupath_would_empty_is_dropped() -> None:
    # valid on the grid, but snap rounding (GEOS here, JTS in QuPath) collapses it
    triangle = Polygon([(106981.38, 4972.45), (106981.37, 4972.46), (106981.38, 4972.46)])
    assert triangle.is_valid and shapely.set_precision(triangle, 0.01).is_empty
    assert qupath_safe_geometry(triangle) == (None, False)


def test_random_rings_always_give_an_importable_file(tmp_path: Path) -> None:
    """Self-intersecting, overlapping and sub-pixel shapes anywhere on a 200k px slide."""
    rng = np.random.default_rng(3)
    annotations = []
    for i in range(200):
        centre = rng.uniform(0, 200_000, 2)
        scale = (0.003, 0.02, 1.0, 50.0)[i % 4]
        ring = centre + rng.normal(0, scale, (int(rng.integers(3, 12)), 2))
        annotations.append(Annotation(Polygon(ring), object_type="detection"))
        parts = [box(*centre, *(centre + 10)), box(*(centre + 5), *(centre + 20))]
        annotations.append(Annotation(MultiPolygon(parts), classification="Tumor"))
    report, doc = _write(tmp_path, annotations)  # _write asserts the strict rules
    assert report.written + report.dropped == len(annotations)
    assert report.repaired > 50 and report.dropped > 10
    for feature in doc["features"]:
        snapped = shapely.set_precision(shape(feature["geometry"]), 0.01)
        assert snapped.is_valid and not snapped.is_empty


def test_geometry_snapping_edge_cases() -> None:
    assert qupath_safe_geometry(None) == (None, False)
    assert qupath_safe_geometry(Polygon()) == (None, False)
    assert qupath_safe_geometry(Point(math.nan, 1.0)) == (None, False)
    point, repaired = qupath_safe_geometry(Point(10.123456, 7.0049))
    assert point is not None and (point.x, point.y, repaired) == (10.12, 7.0, False)
    # two lines from a collection stay lines; the point is dropped with the lower dimension
    mixed = shapely.GeometryCollection(
        [shapely.LineString([(0, 0), (5, 5)]), shapely.LineString([(9, 0), (9, 9)]), Point(1, 1)]
    )
    lines, _ = qupath_safe_geometry(mixed)
    assert lines is not None and lines.geom_type == "MultiLineString"


def test_round_trip_coordinates_within_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    centre = (150_000.123456, 80_000.987654)  # big slides: 6 integer digits
    angles = np.sort(rng.uniform(0, 2 * np.pi, 60))
    radii = rng.uniform(200, 300, 60)
    ring = np.c_[centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)]
    _, doc = _write(tmp_path, [Annotation(Polygon(ring), classification="Stroma")])
    written = np.asarray(doc["features"][0]["geometry"]["coordinates"][0])
    assert written.shape == (61, 2)
    assert np.abs(written[:-1] - ring).max() <= 0.005 + 1e-9
    text = (tmp_path / "out.geojson").read_text()
    coordinates = re.search(r'"coordinates":(\[.*?\]\]\])', text)
    assert coordinates is not None
    assert not re.search(r"\.\d{3}", coordinates.group(1))  # at most 2 decimals


def test_area_objects_must_be_areas(tmp_path: Path) -> None:
    cell = Annotation(box(0, 0, 20, 20), object_type="cell", nucleus_geometry=box(5, 5, 10, 10))
    point_detection = Annotation(Point(3, 4), object_type="detection")
    point_annotation = Annotation(Point(3, 4), name="calibration")
    report, doc = _write(tmp_path, [cell, point_detection, point_annotation])
    assert (report.written, report.dropped) == (2, 1)
    assert doc["features"][0]["nucleusGeometry"]["type"] == "Polygon"
    assert doc["features"][1]["geometry"] == {"type": "Point", "coordinates": [3, 4]}


CCW = [(0, 0), (100, 0), (100, 100), (0, 100)]
HOLE = [(20, 20), (40, 20), (40, 40), (20, 40)]  # counter-clockwise too


@pytest.mark.parametrize(
    "annotation",
    [
        Annotation(Polygon(CCW)),
        Annotation(Polygon(CCW[::-1])),
        Annotation(Polygon(CCW[::-1], [HOLE[::-1]]), classification="Tumor"),
        Annotation(Polygon(CCW, [HOLE, [(60, 60), (60, 80), (80, 80), (80, 60)]])),
        Annotation(MultiPolygon([Polygon(CCW[::-1], [HOLE]), box(200, 0, 300, 100, ccw=False)])),
        Annotation(BOWTIE, object_type="detection"),  # repaired into a MultiPolygon
        Annotation(SPIKE, object_type="tile"),  # repaired through a GeometryCollection
        Annotation(Polygon(CCW[::-1]), object_type="cell", nucleus_geometry=Polygon(HOLE[::-1])),
    ],
    ids=["ccw", "cw", "cw-hole-cw", "ccw-holes-mixed", "multi", "bowtie", "spike", "cell"],
)
def test_rings_follow_rfc7946_orientation(tmp_path: Path, annotation: Annotation) -> None:
    """Exteriors counter-clockwise, holes clockwise, in the pixel numbers as written (the
    strict validator run by _write checks it too, by the sign of the shoelace area)."""
    _, doc = _write(tmp_path, [annotation])
    feature = doc["features"][0]
    assert feature == annotation_to_feature(annotation)
    for key in ("geometry", "nucleusGeometry"):
        geom = shape(feature.get(key, {"type": "Polygon", "coordinates": [CCW + CCW[:1]]}))
        for polygon in getattr(geom, "geoms", [geom]):
            assert polygon.exterior.is_ccw and not any(r.is_ccw for r in polygon.interiors)
    safe, _ = qupath_safe_geometry(annotation.geometry)
    assert safe is not None and shape(feature["geometry"]).area == pytest.approx(safe.area)


# ---------------------------------------------------------------- properties


def test_measurements_nan_and_infinity_are_strings(tmp_path: Path) -> None:
    measurements = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "x": np.float32(0.5)}
    measurements |= {"n": 3, "none": None}  # type: ignore[dict-item]
    _, doc = _write(tmp_path, [Annotation(box(0, 0, 5, 5), measurements=measurements)])
    written = doc["features"][0]["properties"]["measurements"]
    assert written == {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity", "x": 0.5, "n": 3}
    assert "NaN," not in (tmp_path / "out.geojson").read_text().replace('"NaN"', "")


def test_non_numeric_measurement_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    bad = Annotation(box(0, 0, 5, 5), measurements={"grade": "high"})  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError, match="grade") as err:
        write_geojson(tmp_path / "out.geojson", [bad])
    assert "out.geojson" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_properties_are_qupath_shaped(tmp_path: Path) -> None:
    annotations = [
        Annotation(box(0, 0, 5, 5), classification="Tumor", name="t1", locked=True),
        Annotation(box(0, 0, 5, 5), classification="My class", color=(1, 2, 3)),
        Annotation(box(0, 0, 5, 5), color=(9, 8, 7), object_type="tile"),
        Annotation(box(0, 0, 5, 5), properties={"a": 1, "b": True, "c": [1], "d": None}),
        Annotation(box(0, 0, 5, 5), classification="Tumor: Positive", color=(1, 1, 1)),
    ]
    _, doc = _write(tmp_path, annotations)
    props = [f["properties"] for f in doc["features"]]
    assert props[0] == {
        "objectType": "annotation",
        "name": "t1",
        "classification": {"name": "Tumor", "color": [200, 0, 0]},
        "isLocked": True,
    }
    assert props[1]["classification"] == {"name": "My class", "color": [1, 2, 3]}
    assert props[2] == {"objectType": "tile", "color": [9, 8, 7]}
    assert props[3] == {"objectType": "annotation", "metadata": {"a": "1", "b": "true"}}
    assert props[4]["classification"] == {"names": ["Tumor", "Positive"], "color": [1, 1, 1]}


@pytest.mark.parametrize(
    "case",
    [
        ("A", (1, 2, 3), None, [1, 2, 3], None),  # no class colour: the colour is the class's
        ("A", (1, 2, 3), (4, 5, 6), [4, 5, 6], [1, 2, 3]),  # own colour and class colour
        ("A", (4, 5, 6), (4, 5, 6), [4, 5, 6], None),  # drawn in its class colour anyway
        ("A", None, (4, 5, 6), [4, 5, 6], None),
        ("Tumor", None, None, [200, 0, 0], None),  # QuPath's colour for its own classes
        (None, (1, 2, 3), (4, 5, 6), None, [1, 2, 3]),  # unclassified
    ],
)
def test_own_colour_and_class_colour_are_both_written(tmp_path: Path, case: tuple) -> None:
    """QuPath draws an object in its own ``color`` when it has one, else its class colour."""
    classification, color, class_rgb, expected_class, expected_own = case
    a = Annotation(box(0, 0, 5, 5), classification, color, class_color=class_rgb)
    props = _write(tmp_path, [a])[1]["features"][0]["properties"]
    assert props.get("classification") == (
        None if expected_class is None else {"name": classification, "color": expected_class}
    )
    assert props.get("color") == expected_own


def test_class_color_is_stable_and_valid() -> None:
    assert class_color("Tumor") == (200, 0, 0)
    assert class_color("Stroma") == (150, 200, 150)
    # pinned: a salted hash() would change this between interpreter runs
    assert class_color("Lymphocyte") == (204, 36, 36)
    colors = {class_color(f"class {i}") for i in range(50)}
    assert len(colors) > 45
    assert all(0 <= c <= 255 for rgb in colors for c in rgb)


def _ids(tmp_path: Path, annotations: list[Annotation], name: str) -> list[str]:
    return [f["id"] for f in _write(tmp_path, annotations, name)[1]["features"]]


def test_ids_are_kept_when_uuids_else_derived_from_content(tmp_path: Path) -> None:
    given = str(uuid.uuid4())
    square = box(0, 0, 5, 5)
    # kept; not a UUID: derived; a twin: another id; the same UUID again: derived, not reused
    annotations = [Annotation(square, id=i) for i in (given, "t-1", None, given.upper())]
    annotations += [Annotation(square, name="named"), Annotation(square, classification="T")]
    annotations += [Annotation(box(0, 0, 5, 6)), Annotation(square, object_type="detection")]
    first = _ids(tmp_path, annotations, "a.geojson")
    assert first == _ids(tmp_path, annotations, "b.geojson")  # a rerun gives the same ids
    assert first[0] == given and len(set(first)) == len(first)
    assert all(str(uuid.UUID(i)) == i for i in first)
    # an object's id depends on its content, not on what else is in the file or where
    reordered = _ids(tmp_path, [annotations[6], annotations[4], annotations[5]], "c.geojson")
    assert reordered == [first[6], first[4], first[5]]
    assert annotation_to_feature(annotations[4])["id"] == first[4]


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz"])
def test_the_same_annotations_give_byte_identical_files(tmp_path: Path, suffix: str) -> None:
    """Data files are deterministic: no timestamp, no random id, no file name in gzip."""
    holed = Polygon(box(0, 0, 100, 100).exterior.coords, [box(20, 20, 40, 40).exterior.coords])
    annotations = [Annotation(holed, classification="Tumor", measurements={"a": 1.5})]
    annotations += [Annotation(box(0, 0, 5, 5), name="twin")] * 2 + [Annotation(Point(3, 4))]
    annotations += [Annotation(BOWTIE, object_type="detection", properties={"k": "v"})]
    provenance = {"slide": "s.svs", "slide_bytes": 1_000, "parameters": {"threshold": 0.5}}
    first, second = tmp_path / f"first{suffix}", tmp_path / f"second{suffix}"
    write_geojson(first, annotations, provenance=provenance)
    write_geojson(second, list(annotations), provenance=provenance)
    assert first.read_bytes() == second.read_bytes()
    raw = first.read_bytes()
    if suffix.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        assert raw[3] & 0x08 == 0, "the gzip header names a file"
        assert raw[4:8] == b"\0\0\0\0", "the gzip header holds a modification time"
        raw = gzip.decompress(raw)
    assert not re.search(rb"\d{4}-\d\d-\d\dT\d\d:", raw)  # no ISO timestamp anywhere
    assert json.loads(raw)["wsi_ai"] == {"version": wsi_ai.__version__, **provenance}


def test_gzip_output_is_readable(tmp_path: Path) -> None:
    report = write_geojson(tmp_path / "t.geojson.gz", [Annotation(box(0, 0, 5, 5))] * 3)
    with gzip.open(tmp_path / "t.geojson.gz", "rt", encoding="utf-8") as f:
        doc = json.load(f)
    assert report.written == 3 and len(doc["features"]) == 3
    assert validate_qupath_geojson(tmp_path / "t.geojson.gz") == []


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "o.geojson"
    write_geojson(out, [Annotation(box(0, 0, 5, 5))])
    with pytest.raises(OutputExistsError, match="--overwrite") as err:
        write_geojson(out, [Annotation(box(0, 0, 9, 9))])
    assert str(out) in str(err.value)
    assert len(json.loads(out.read_text())["features"]) == 1
    report = write_geojson(out, [Annotation(box(0, 0, 9, 9))] * 2, overwrite=True)
    assert report.written == 2 and len(json.loads(out.read_text())["features"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["o.geojson"]  # no temp file left


def test_output_name_must_be_geojson(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="geojson"):
        write_geojson(tmp_path / "out.txt", [])


def test_empty_export_is_a_valid_collection_that_says_so(tmp_path: Path) -> None:
    tiny = Annotation(box(5.0, 5.0, 5.001, 5.001))
    for name, items, dropped in (("none.geojson", [], 0), ("tiny.geojson", [tiny], 1)):
        report, doc = _write(tmp_path, items, name)
        assert (report.written, report.dropped, report.empty) == (0, dropped, True)
        assert doc["type"] == "FeatureCollection" and doc["features"] == []
    assert not write_geojson(tmp_path / "one.geojson", [Annotation(box(0, 0, 1, 1))]).empty
    doc = json.loads(dumps([], provenance={"run": "x"}))
    assert doc == {
        "type": "FeatureCollection",
        "wsi_ai": {"version": wsi_ai.__version__, "run": "x"},
        "features": [],
    }
    feature = annotation_to_feature(Annotation(box(0, 0, 5, 5)))
    collection = features_to_collection([feature])
    assert validate_qupath_geojson(collection) == []


def test_real_qupath_exports_survive_a_round_trip(
    tmp_path: Path, shared: Callable[[str], Path]
) -> None:
    """QuPath's own files, re-exported by us, pass the strict rules."""
    annotations = []
    for name in QUPATH_FILES[:4]:
        doc = json.loads(shared(f"annotations/qupath_geojson/{name}").read_text())
        for f in doc["features"]:
            props = f["properties"]
            annotations.append(
                Annotation(
                    shape(f["geometry"]),
                    classification=(props.get("classification") or {}).get("name"),
                    name=props.get("name"),
                    object_type=props.get("objectType", "annotation"),
                    measurements=props.get("measurements", {}),
                    id=f.get("id"),
                    locked=props.get("isLocked", False),
                )
            )
    report = write_geojson(tmp_path / "re.geojson.gz", annotations)
    assert validate_qupath_geojson(tmp_path / "re.geojson.gz") == []
    assert (report.written, report.dropped) == (len(annotations), 0)
    with gzip.open(tmp_path / "re.geojson.gz", "rt") as f:
        ids = [feature["id"] for feature in json.load(f)["features"]]
    assert ids == [a.id for a in annotations]


# ---------------------------------------------------------------- the validator


GOOD: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "3e2e81db-0e02-4b32-9565-ee876f1f0e73",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
                "measurements": {"area": 50.0, "odd": "NaN"},
            },
        }
    ],
}


def _bad(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    *parents, last = path.split("/")
    target: Any = doc["features"][0]
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("properties/classification", {"name": "Tumor"}, "color' is mandatory"),
        ("geometry/coordinates", [[[0, 0], [10, 0], [10, 10], [0, 1]]], "not closed"),
        ("properties", None, "properties: must be an object"),
        ("geometry", {"type": "GeometryCollection", "geometries": []}, "no 'coordinates'"),
        ("properties/color", "#ff0000", "throws"),
        ("properties/measurements/area", "large", "non-numeric"),
        ("geometry/type", "polygon", "case matters"),
        ("geometry", None, "not a geometry"),
        ("geometry", KeyError, "'geometry' is required"),
        ("geometry/coordinates", [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]], "snapping"),
        ("geometry/coordinates", [[[0, 0], [10, 0], [0, 0]]], ">= 4"),
        ("geometry/coordinates", [[[0], [10, 0], [10, 10], [0]]], "position"),
        ("geometry/plane", {"z": 0, "q": 1}, "c, z and t"),
        ("properties/name", None, "name: null throws"),
        ("properties/objectType", "Detection", "object types"),
        ("properties/classification/color", [1, 2], "0, 1, 3 or 4"),
        ("properties/classification/color", [1, None, 3], "null element"),
        ("properties/classification/name", " ", "blank"),
        ("id", None, "id: null throws"),
    ],
)
def test_validator_rejects_what_qupath_throws_on(path: str, value: Any, message: str) -> None:
    assert validate_qupath_geojson(GOOD, strict=False) == []
    problems = validate_qupath_geojson(_bad(path, value), strict=False)
    assert any(message in p for p in problems), problems


def test_validator_top_level_shapes() -> None:
    feature = GOOD["features"][0]
    assert validate_qupath_geojson([feature, [feature]], strict=False) == []
    assert validate_qupath_geojson(feature["geometry"], strict=False) == []
    assert validate_qupath_geojson({"type": "feature"}, strict=False) != []
    assert validate_qupath_geojson({"type": "FeatureCollection"}, strict=False) != []
    overlapping = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]],
            [[[5, 5], [15, 5], [15, 15], [5, 15], [5, 5]]],
        ],
    }
    assert validate_qupath_geojson(overlapping, strict=False) != []


def test_validator_strict_rules() -> None:
    assert validate_qupath_geojson(GOOD) == []
    no_id = _bad("id", KeyError)
    assert validate_qupath_geojson(no_id, strict=False) == []
    assert any("UUID" in p for p in validate_qupath_geojson(no_id))
    string_class = _bad("properties/classification", "Tumor")
    assert validate_qupath_geojson(string_class, strict=False) == []
    assert validate_qupath_geojson(string_class) != []
    point_tile = _bad("geometry", {"type": "Point", "coordinates": [1, 2]})
    point_tile["features"][0]["properties"]["objectType"] = "tile"
    assert validate_qupath_geojson(point_tile, strict=False) == []
    assert any("Polygon or MultiPolygon" in p for p in validate_qupath_geojson(point_tile))


@pytest.mark.parametrize(
    ("coordinates", "problem"),
    [
        ([[[0, 0], [10, 10], [10, 0], [0, 0]]], "exterior ring 0 is clockwise"),
        ([[[0, 0], [9, 0], [9, 9], [0, 0]], [[5, 1], [8, 1], [8, 4], [5, 1]]], "hole ring 1 is co"),
    ],
)
def test_validator_strict_rules_check_ring_orientation(coordinates: Any, problem: str) -> None:
    doc = _bad("geometry/coordinates", coordinates)
    assert validate_qupath_geojson(doc, strict=False) == []  # QuPath does not care
    multi = _bad("geometry", {"type": "MultiPolygon", "coordinates": [coordinates]})
    for strict in (doc, multi):
        assert any(problem in p for p in validate_qupath_geojson(strict)), strict


@pytest.mark.parametrize("name", QUPATH_FILES)
def test_validator_accepts_real_qupath_exports(name: str, shared: Callable[[str], Path]) -> None:
    assert validate_qupath_geojson(shared(f"annotations/qupath_geojson/{name}"), strict=False) == []
