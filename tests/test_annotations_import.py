"""Import of QuPath GeoJSON into the one Annotation model (ASAP XML: test_asap_import.py).

Real exports from ../shared/data/annotations are checked against facts read from the files;
hand-made files cover the QuPath edge cases, bad input and hostile XML.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
from shapely.geometry import MultiPolygon, Point, Polygon

from wsi_ai.annotations import (
    ImportReport,
    read_asap_xml,
    read_qupath_geojson,
)
from wsi_ai.errors import InvalidInputError, SlideNotFoundError

QP = "annotations/qupath_geojson/"
ASAP = "annotations/asap_xml/"
H = 1e308  # coordinates GEOS fails on


def _quiet_read(reader, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reader(path, **kwargs)


# ----------------------------------------------------------------- QuPath: real exports
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("coscia_03012023_JN.geojson", {None: 3, "Tumor": 3}),
        (
            "coscia_Single_cells.geojson",
            {"single_cells_demo": 121, "circles": 4, None: 3, "two_circles": 2, "class_1": 1},
        ),
        ("coscia_TD_01_verysmall_mIF.geojson", {"class_1": 3, "class_2": 3, None: 3}),
        ("dlup_qupath05.geojson", {None: 3}),
        ("histoqc_geojson_example_qupath02.json", {"Tumor": 1, "Invborder": 1}),
        ("histoqc_holed.geojson", {None: 1}),
        ("qupath_test_polygon.geojson", {None: 1}),
    ],
)
def test_every_qupath_file_imports(shared, name, expected):
    report = ImportReport()
    annotations = read_qupath_geojson(shared(QP + name), report=report)
    assert Counter(a.classification for a in annotations) == expected
    assert all(a.geometry.is_valid and not a.geometry.is_empty for a in annotations)
    assert report.repaired == report.dropped == report.skipped == 0


def test_legacy_qupath02_array_colorrgb_and_list_measurements(shared):
    tumor, border = read_qupath_geojson(shared(QP + "histoqc_geojson_example_qupath02.json"))
    # colorRGB is a signed 32-bit ARGB int: -3670016 = 0xFFC80000, -16711936 = 0xFF00FF00
    assert (tumor.classification, tumor.color) == ("Tumor", (200, 0, 0))
    assert (border.classification, border.color) == ("Invborder", (0, 255, 0))
    # the 0.2 "id" is the Java class name: it sets the type and is not kept as an id
    assert tumor.id is None and tumor.object_type == "annotation"
    assert tumor.measurements == {} and tumor.locked is False
    assert isinstance(tumor.geometry, MultiPolygon) and len(tumor.geometry.geoms) == 3
    assert len(border.geometry.geoms) == 5
    assert tumor.geometry.area == pytest.approx(2265677914.23, abs=0.01)


def test_single_cells_are_cells_with_126_measurements(shared):
    annotations = read_qupath_geojson(shared(QP + "coscia_Single_cells.geojson"))
    cells = [a for a in annotations if a.object_type == "cell"]
    assert len(cells) == 121
    assert {len(c.measurements) for c in cells} == {126}
    assert cells[0].id == "26b95b92-4e88-468c-bf38-6179e49e86b9"
    assert cells[0].measurements["Cell: Area"] == 113.0
    assert cells[0].color == (255, 0, 255)
    # This export carries no nucleusGeometry (checked with grep); the field stays empty.
    assert all(c.nucleus_geometry is None for c in cells)
    assert annotations[0].locked is True and annotations[0].classification == "class_1"


def test_holed_single_feature_keeps_its_hole(shared):
    (holed,) = read_qupath_geojson(shared(QP + "histoqc_holed.geojson"))
    assert holed.id == "2aa7e31c-8437-499d-ba61-88aacd9a2c3f"
    assert isinstance(holed.geometry, Polygon) and len(holed.geometry.interiors) == 1
    shell = Polygon(holed.geometry.exterior)
    assert shell.area == pytest.approx((13369 - 10098) * (19491 - 16763))
    assert holed.geometry.area == pytest.approx(7827735.31, abs=0.01)


def test_bare_multipolygon_is_one_unclassified_annotation(shared):
    (bare,) = read_qupath_geojson(shared(QP + "qupath_test_polygon.geojson"))
    assert isinstance(bare.geometry, MultiPolygon) and len(bare.geometry.geoms) == 3
    assert bare.classification is None and bare.object_type == "annotation"
    assert bare.geometry.area == pytest.approx(54694789.60, abs=0.01)


def test_names_ids_lock_and_ellipse_flags(shared):
    dlup = read_qupath_geojson(shared(QP + "dlup_qupath05.geojson"))
    assert [a.name for a in dlup] == ["UT", "I", "I"]
    assert dlup[0].id == "6423a977-ffff-48db-affc-cd11632010f0"
    assert all(a.color == (255, 0, 0) for a in dlup)  # object colour, no class
    jn = read_qupath_geojson(shared(QP + "coscia_03012023_JN.geojson"))
    points = [a for a in jn if isinstance(a.geometry, Point)]
    assert [p.name for p in points] == ["calib1", "calib2", "calib3"]
    assert all(p.locked for p in points)
    assert points[0].geometry.coords[0] == (11585.84, 14257.66)
    assert [a.properties.get("is_ellipse", False) for a in jn[3:]] == [False, False, True]


# ------------------------------------------------------------ QuPath: hand-made edge cases
def _write(tmp_path: Path, data: object, name: str = "x.geojson") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}


def _feature(properties: object = None, geometry: object = SQUARE, **extra: object) -> dict:
    out = {"type": "Feature", "geometry": geometry, "properties": properties or {}}
    out.update(extra)
    return out


def test_classification_forms(tmp_path):
    features = [
        _feature({"classification": "Tumor: Positive"}),
        _feature({"classification": {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}}),
        _feature({"classification": {"name": "Stroma", "colorRGB": 0x00FF8000}}),
        _feature({"classification": {"name": "Necrosis", "color": [-16776961]}}),  # packed
        _feature({"classification": {"name": "Immune", "color": [9, 8, 7, 255]}}),  # RGBA
        _feature({"classification": {}, "color": -65536}),  # packed object colour: red
        _feature({"classification": {"name": "A", "color": [0, 0, 255]}, "color": [0, 255, 0]}),
    ]
    report = ImportReport()
    got = read_qupath_geojson(_write(tmp_path, features), report=report)
    assert [(a.classification, a.color) for a in got] == [
        ("Tumor: Positive", None),
        ("Tumor: Positive", (1, 2, 3)),
        ("Stroma", (255, 128, 0)),
        ("Necrosis", (0, 0, 255)),
        ("Immune", (9, 8, 7)),
        (None, (255, 0, 0)),
        ("A", (0, 255, 0)),  # the object's own colour wins; the class colour is kept
    ]
    assert got[-1].properties["classification_color"] == (0, 0, 255)
    no_color = read_qupath_geojson(
        _write(tmp_path, _feature({"classification": {"name": "T"}}), "c.json"), report=report
    )
    assert no_color[0].classification == "T"
    assert any("no color" in w for w in report.warnings)


def test_measurements_types_children_and_nucleus(tmp_path):
    nucleus = {"type": "Polygon", "coordinates": [[[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]}
    data = {
        "type": "FeatureCollection",
        "features": [
            _feature(
                {
                    "objectType": "annotation",
                    "metadata": {"origin": "ai", "n": 3, "skip": [1]},
                    "childObjects": [
                        _feature(
                            {
                                "type": "cell",
                                "measurements": [{"name": "a", "value": "2.5"}],
                            },
                            nucleusGeometry=nucleus,
                        ),
                        _feature({"object_type": "detection", "measurements": {"b": "NaN"}}),
                    ],
                    "extra": {"kept": True},
                },
                id="11111111-2222-3333-4444-555555555555",
            ),
            _feature({"measurements": {"inf": "Infinity", "n": 7, "bad": None}}),
        ],
    }
    got = read_qupath_geojson(_write(tmp_path, data))
    parent, cell, detection, last = got
    assert parent.properties["origin"] == "ai" and parent.properties["n"] == "3"
    assert "skip" not in parent.properties  # a non-primitive metadata value is dropped
    assert parent.properties["extra"] == {"kept": True}
    assert cell.object_type == "cell" and cell.measurements == {"a": 2.5}
    assert cell.nucleus_geometry is not None and cell.nucleus_geometry.area == 4
    assert cell.properties["parent_index"] == 0
    assert cell.properties["parent_id"] == "11111111-2222-3333-4444-555555555555"
    assert detection.object_type == "detection"
    assert detection.measurements["b"] != detection.measurements["b"]  # NaN
    assert last.measurements == {"inf": float("inf"), "n": 7.0}


@pytest.mark.qupath_unchecked  # QuPath refuses this input; wsi-ai reads it
def test_top_level_shapes_gzip_and_skips(tmp_path):
    data = [
        [{"type": "Point", "coordinates": [1.5, 2.5, 9]}],  # nested array, bare geometry with z
        {"type": "GeometryCollection", "geometries": [SQUARE]},  # standard form: accepted
        {"type": "Feature", "geometry": SQUARE, "properties": {"objectType": "tmaCore"}},
    ]
    path = tmp_path / "x.geojson.gz"
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    report = ImportReport()
    got = read_qupath_geojson(path, report=report)
    assert [a.geometry.geom_type for a in got] == ["Point", "GeometryCollection"]
    assert got[0].geometry.coords[0] == (1.5, 2.5)
    assert report.skipped == 1  # the TMA core, as QuPath's file import skips it


@pytest.mark.qupath_unchecked  # QuPath refuses this input; wsi-ai reads it
def test_bowtie_is_repaired_and_counted(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}
    path = _write(tmp_path, {"type": "FeatureCollection", "features": [_feature(geometry=bowtie)]})
    report = ImportReport()
    with pytest.warns(UserWarning, match="repaired 1 invalid polygon"):
        (got,) = read_qupath_geojson(path, report=report)
    assert report.repaired == 1 and "feature 0" in report.warnings[0]
    assert got.geometry.is_valid and got.geometry.area == pytest.approx(2.0)
    assert isinstance(got.geometry, MultiPolygon) and len(got.geometry.geoms) == 2


def test_collapsed_polygon_is_dropped_and_counted(tmp_path):
    flat = {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [9, 0], [0, 0]]]}
    report = ImportReport()
    with pytest.warns(UserWarning):
        got = read_qupath_geojson(_write(tmp_path, [_feature(geometry=flat)]), report=report)
    assert got == [] and report.dropped == 1


@pytest.mark.qupath_unchecked  # malformed on purpose
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"type": "FeatureCollection", "features": [', "malformed JSON at line 1, column"),
        (
            {"type": "FeatureCollection", "features": [_feature(), {"type": "Feature"}]},
            "feature 1: missing geometry",
        ),
        (
            {"type": "FeatureCollection", "features": [_feature(), _feature(), 7]},
            "feature 2: expected a Feature object",
        ),
        ([_feature({"measurements": {"area": "big"}})], "feature 0: measurement 'area'"),
        ([_feature({"classification": 5})], "feature 0: classification must be"),
        (
            [_feature(geometry={"type": "polygon", "coordinates": []})],
            "feature 0: unknown geometry type 'polygon'",
        ),
        (
            [_feature({"childObjects": [_feature(geometry={"type": "Point"})]})],
            "feature 0 child 0: Point geometry has no 'coordinates'",
        ),
        (
            [_feature(geometry={"type": "LineString", "coordinates": [[0, "x"], [1, 1]]})],
            "coordinates must be numbers",
        ),
    ],
)
def test_malformed_geojson_names_file_and_feature(tmp_path, content, needle):
    path = _write(tmp_path, content, "bad.geojson")
    with pytest.raises(InvalidInputError) as info:
        read_qupath_geojson(path)
    assert str(path) in str(info.value) and needle in str(info.value)


# ------------------------------- not GeoJSON, or not a format we read: refused, never "empty"
def _refusal(path: Path) -> str:
    with pytest.raises(InvalidInputError) as info:
        read_qupath_geojson(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.qupath_unchecked  # not GeoJSON on purpose
@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ({}, 'a JSON object without a "type" member'),
        (None, "null"),
        ("hi", "a string"),
        (5, "a number"),
        (True, "a boolean"),
        ({"type": "Topology", "objects": {}}, "type 'Topology'"),
        ({"type": "feature", "geometry": SQUARE}, "type 'feature'"),  # case matters, as in QuPath
        ({"type": "FeatureCollection"}, "FeatureCollection without a 'features' array"),
        ({"type": "FeatureCollection", "features": None}, "'features' is null, not an array"),
        ({"type": "FeatureCollection", "features": {"0": _feature()}}, "'features' is an object"),
        ({"type": "FeatureCollection", "features": "x"}, "'features' is a string"),
        ({"features": [_feature()]}, 'a JSON object without a "type" member'),
        ({"features": [_feature()], "type": "Topology"}, "type 'Topology'"),
        ([_feature(), {"type": "Thing"}], "feature 1: type 'Thing'"),
        ([_feature(), "hi"], "feature 1: a string"),
        ([[_feature()], [None]], "feature 1.0: null"),
        ({"dataset": "d", "image": {"width": 9}, "annotations": []}, "V7 Darwin JSON"),  # 1.0
        ({"version": "2.0", "item": {"name": "a"}, "annotations": []}, "V7 Darwin JSON"),  # 2.0
        ({"images": [], "annotations": [], "categories": []}, "COCO JSON"),
    ],
)
def test_what_is_not_geojson_is_refused_with_the_expected_format(tmp_path, document, needle):
    message = _refusal(_write(tmp_path, json.dumps(document), "bad.geojson"))
    assert needle in message
    assert "expected QuPath GeoJSON" in message or "'features'" in message
    assert "export" in message or "fix" in message  # says what to do


def test_a_real_v7_darwin_file_is_refused(shared):
    message = _refusal(shared("annotations/other/v7darwin_103S.json"))
    assert "V7 Darwin JSON" in message and "expected QuPath GeoJSON" in message


@pytest.mark.parametrize("document", [{"type": "FeatureCollection", "features": []}, []])
def test_an_empty_but_well_formed_file_is_legal_with_a_warning(tmp_path, document):
    report = ImportReport()
    with pytest.warns(UserWarning, match="no objects"):
        got = read_qupath_geojson(_write(tmp_path, document, "empty.json"), report=report)
    assert got == [] and report.warnings == ["file: no objects found"]


@pytest.mark.parametrize(
    ("document", "names"),
    [  # json.dumps(sort_keys=True) puts "features" before "type"; other members are foreign
        ({"type": "FeatureCollection", "bbox": [0, 9], "features": [_feature()] * 2}, [None] * 2),
        (_feature({"name": "x"}, features=[{"ignored": True}]), ["x"]),  # a Feature's member
        ({"type": "FeatureCollection", "features": [_feature()], "features ": 1, "id": 2}, [None]),
    ],
)
def test_members_in_any_order_and_foreign_members(tmp_path, document, names):
    path = _write(tmp_path, json.dumps(document, sort_keys=True), "f.json")
    assert [a.name for a in read_qupath_geojson(path)] == names


@pytest.mark.qupath_unchecked  # not JSON on purpose
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"type": "FeatureCollection", "features": [], "features": []}', "appears twice"),
        ('{"type": "FeatureCollection", "features": []} x', "malformed JSON at line 1, column 47"),
        ('[{"type": "Point", "coordinates": [1, 2]}, ]', "malformed JSON at line 1, column 44"),
        ('{"type": "FeatureCollection" "features": []}', "malformed JSON at line 1, column 30"),
        (
            '{"type": "FeatureCollection", "features": [\n' + json.dumps(_feature()) + "}",
            "malformed JSON at line 2, column",
        ),
        ('[\n{"type": "Point", "coordinates": [1, 2]}\n{', "malformed JSON at line 3, column 1"),
        ("", "malformed JSON at line 1, column 1"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_json_is_refused_with_its_position(tmp_path, text, needle):
    assert needle in _refusal(_write(tmp_path, text, "bad.json"))


# --------------------------------- coordinates: JSON numbers only, finite, never coerced
@pytest.mark.qupath_unchecked  # bad coordinates on purpose
@pytest.mark.parametrize(
    ("geometry", "needle"),
    [
        ('{"type": "Point", "coordinates": ["10", "20"]}', 'must be numbers, got "10"'),
        ('{"type": "Point", "coordinates": [true, 0]}', "must be numbers, got true"),
        ('{"type": "Point", "coordinates": [0, 1, false]}', "must be numbers, got false"),
        ('{"type": "MultiPoint", "coordinates": [[1, 2], [null, 3]]}', "got null"),
        ('{"type": "LineString", "coordinates": [[0, 0], [1, "1"]]}', 'got "1"'),
        ('{"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, true], [0, 0]]]}', "got true"),
        ('{"type": "Point", "coordinates": [NaN, 0]}', "finite"),
        ('{"type": "Point", "coordinates": [0, -Infinity]}', "finite"),
        ('{"type": "Point", "coordinates": [1e999, 0]}', "finite"),
        ('{"type": "Point", "coordinates": [1' + "0" * 400 + ", 0]}", "too large"),
        ('{"type": "Point", "coordinates": 5}', "must be an [x, y] position"),
        ('{"type": "Point", "coordinates": [[1, 2]]}', "a position must be [x, y], got [[1, 2]]"),
        ('{"type": "Polygon", "coordinates": [[0, 0], [9, 9], [0, 9], [0, 0]]}', "ring 0: a pos"),
        ('{"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [0, 0]]]}', "at least 4 positions"),
        ('{"type": "LineString", "coordinates": [[0, 0]]}', "two or more positions"),
    ],
)
def test_coordinates_must_be_finite_json_numbers(tmp_path, geometry, needle):
    for where, text in [
        ("feature 0", f'{{"type": "Feature", "geometry": {geometry}, "properties": {{}}}}'),
        ("feature 0", geometry),  # a bare geometry
        (
            "feature 0: nucleusGeometry: ",
            f'[{{"type": "Feature", "geometry": {json.dumps(SQUARE)}, "nucleusGeometry": '
            f'{geometry}, "properties": {{"objectType": "cell"}}}}]',
        ),
    ]:
        message = _refusal(_write(tmp_path, text, "bad.json"))
        assert needle in message and where in message


@pytest.mark.qupath_unchecked  # odd geometry on purpose
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # shapely overflows on +-1e308
@pytest.mark.parametrize(
    ("geometry", "outcome"),
    [  # found by tests/test_fuzz_annotations.py: each crashed the reader with another exception
        ({"type": "MultiLineString", "coordinates": [[]]}, []),  # shapely: EmptyPartError
        ({"type": "MultiLineString", "coordinates": [[], [[0, 0], [1, 1]]]}, ["MultiLineString"]),
        ({"type": ["Polygon"], "coordinates": []}, 'type ["Polygon"] is not a GeoJSON type'),
        (  # GEOS: TopologyException while repairing
            {"type": "Polygon", "coordinates": [[[-H, -H], [H, H], [H, -H], [-H, H], [-H, -H]]]},
            "feature 0: GEOS cannot repair this geometry",
        ),
    ],
)
def test_geometries_that_crashed_the_reader(tmp_path, geometry, outcome):
    path = _write(tmp_path, [geometry], "odd.json")
    if isinstance(outcome, str):
        assert outcome in _refusal(path)
        return
    assert [a.geometry.geom_type for a in _quiet_read(read_qupath_geojson, path)] == outcome


@pytest.mark.qupath_unchecked  # bad colours on purpose
@pytest.mark.parametrize(
    "properties",
    [
        '{"classification": {"name": "A", "color": [NaN, 0, 0]}}',
        '{"classification": {"name": "A", "color": [1e999, 0, 0]}}',
        '{"classification": {"name": "A", "color": [Infinity]}}',
        '{"color": -Infinity}',
        '{"classification": {"name": "A", "colorRGB": 1e999}}',
    ],
)
def test_non_finite_colours_are_refused_not_crashed_on(tmp_path, properties):
    text = f'[{{"type": "Feature", "geometry": {json.dumps(SQUARE)}, "properties": {properties}}}]'
    assert "feature 0: " in _refusal(_write(tmp_path, text, "bad.json"))


@pytest.mark.qupath_unchecked  # QuPath refuses the unclosed ring; wsi-ai closes it
@pytest.mark.parametrize(
    ("geometry", "area"),
    [
        ([[[0, 0], [10, 0], [10, 10], [0, 10]]], 100),  # unclosed ring: closed (QuPath refuses)
        ([[[0, 0, 5], [10, 0, 5], [10, 10, 5], [0, 10, 5], [0, 0, 5]]], 100),  # z dropped
        ([[[0, 0, 5, 7], [10, 0, 5, 7], [10, 10, 5, 7], [0, 0, 5, 7]]], 50),  # as QuPath: x, y
        ([[[0.5, 0], [10, 0], [10, 10], [0.5, 0.0]]], 47.5),  # int/float mix is fine
    ],
)
def test_coordinates_qupath_accepts_are_read(tmp_path, geometry, area):
    path = _write(tmp_path, [_feature(geometry={"type": "Polygon", "coordinates": geometry})])
    (got,) = read_qupath_geojson(path)
    assert got.geometry.area == pytest.approx(area)


@pytest.mark.qupath_unchecked  # not GeoJSON on purpose
@pytest.mark.parametrize(
    "document",
    [{"annotations": [{"polygon": {"path": [{"x": 1}]}}], "image": {"width": 9}}, {}, None],
)
def test_convert_refuses_what_it_cannot_read_and_writes_nothing(tmp_path, document):
    from click.testing import CliRunner

    from wsi_ai.cli import main

    source = _write(tmp_path, json.dumps(document), "in.json")
    for out in (tmp_path / "out.geojson", tmp_path / "out.xml"):
        result = CliRunner().invoke(main, ["annotations", "convert", str(source), "-o", str(out)])
        assert result.exit_code == 1 and not out.exists()
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "expected QuPath GeoJSON" in errors[0], result.stderr


def test_missing_file_is_a_not_found_error(tmp_path):
    with pytest.raises(SlideNotFoundError):
        read_qupath_geojson(tmp_path / "nope.geojson")
    with pytest.raises(SlideNotFoundError):
        read_asap_xml(tmp_path / "nope.xml")


# ------------------------------------------------- through wsi-ai's GeoJSON writer and back
@pytest.mark.parametrize(
    "name",
    [
        "coscia_Single_cells.geojson",
        "histoqc_geojson_example_qupath02.json",
        "histoqc_holed.geojson",
        "dlup_qupath05.geojson",
    ],
)
def test_qupath_round_trip_through_the_geojson_writer(shared, tmp_path, name):
    from wsi_ai.export.geojson import write_geojson

    original = read_qupath_geojson(shared(QP + name))
    out = tmp_path / "back.geojson"  # the autouse fixture also checks that QuPath imports it
    write_geojson(out, original, provenance={"test": name})
    back = read_qupath_geojson(out)
    assert len(back) == len(original)
    for a, b in zip(original, back, strict=True):
        kept = ("classification", "color", "name", "object_type", "locked")
        assert [getattr(b, k) for k in kept] == [getattr(a, k) for k in kept]
        assert dict(b.measurements) == pytest.approx(dict(a.measurements), nan_ok=True)
        # QuPath's 0.01 px grid: areas agree to well under a pixel per unit of perimeter
        assert b.geometry.symmetric_difference(a.geometry).area <= 0.01 * a.geometry.length + 1e-6
        if a.id is not None:
            assert b.id == a.id
