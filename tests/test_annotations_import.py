"""Import of QuPath GeoJSON and ASAP XML into the one Annotation model, and the ASAP writer.

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
import shapely
from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon

from wsi_ai.annotations import (
    Annotation,
    ImportReport,
    read_asap_xml,
    read_qupath_geojson,
    write_asap_xml,
)
from wsi_ai.annotations.asap import catmull_rom_closed
from wsi_ai.errors import InvalidInputError, OutputExistsError, SlideNotFoundError

QP = "annotations/qupath_geojson/"
ASAP = "annotations/asap_xml/"


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
        {"type": "feature", "geometry": SQUARE},  # case variant: QuPath skips it
        {"type": "Feature", "geometry": SQUARE, "properties": {"objectType": "tmaCore"}},
    ]
    path = tmp_path / "x.geojson.gz"
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    report = ImportReport()
    got = read_qupath_geojson(path, report=report)
    assert [a.geometry.geom_type for a in got] == ["Point", "GeometryCollection"]
    assert got[0].geometry.coords[0] == (1.5, 2.5)
    assert report.skipped == 2


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


def test_missing_file_is_a_not_found_error(tmp_path):
    with pytest.raises(SlideNotFoundError):
        read_qupath_geojson(tmp_path / "nope.geojson")
    with pytest.raises(SlideNotFoundError):
        read_asap_xml(tmp_path / "nope.xml")


# --------------------------------------------------------------------- ASAP: real files
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("camelyon16_tumor_009.xml", {"metastasis": 6}),
        ("camelyon16_tumor_076.xml", {"metastasis": 39}),
        ("camelyon16_tumor_085.xml", {"metastasis": 50}),
        ("tissue_008_059_HE.xml", {"tissue": 4, "background": 1}),
        ("tissue_11_HE.xml", {"tissue": 2, "artifact": 2, "background": 1}),
        ("tissue_592340.xml", {"tissue": 2, "background": 2}),
        ("tissue_BEST2_CAM_0414_NE_Biopsy.xml", {"tissue": 3, "background": 1}),
        ("tissue_L1.xml", {"tissue": 1, "background": 2}),
        ("tissue_OC-AH-013_RES.xml", {"tissue": 3, "artifact": 4, "background": 2}),
        ("tissue_OC-AH-280_OGD.xml", {"tissue": 4, "artifact": 8}),
        ("tissue_OC-PL-111_RES_3G.xml", {"tissue": 2, "artifact": 3, "background": 1}),
    ],
)
def test_every_asap_file_imports(shared, name, expected):
    annotations = _quiet_read(read_asap_xml, shared(ASAP + name))
    assert Counter(a.classification for a in annotations) == expected
    assert all(isinstance(a.geometry, Polygon | MultiPolygon) for a in annotations)
    assert all(a.geometry.is_valid and a.geometry.area > 0 for a in annotations)


def test_camelyon_colours_splines_and_repairs(shared):
    report = ImportReport()
    with pytest.warns(UserWarning, match="repaired 3"):
        tumor9 = read_asap_xml(shared(ASAP + "camelyon16_tumor_009.xml"), report=report)
    assert report.repaired == 3  # annotations _2, _3 and _5 self-intersect
    assert [a.name for a in tumor9] == ["_0", "_1", "_2", "_3", "_4", "_5"]
    first = tumor9[0]
    assert first.color == (0, 0, 255)  # group "metastasis" Color="#0000ff"
    assert first.properties["asap_color"] == (0xF4, 0xFA, 0x58)  # its own Color="#F4FA58"
    assert first.properties["asap_type"] == "Spline"
    # splines: the control points are the vertices (as ASAP's AnnotationToMask fills them)
    assert first.geometry.exterior.coords[0] == (79581.2031, 75651.6016)
    tumor76 = _quiet_read(read_asap_xml, shared(ASAP + "camelyon16_tumor_076.xml"))
    assert tumor76[0].name == "Tumor1" and tumor76[0].color == (100, 254, 46)
    assert tumor76[0].properties["asap_color"] == (0, 170, 0)
    assert tumor76[0].geometry.exterior.coords[0] == (11347.0, 29510.8008)


# ------------------------------------------------------------------ ASAP: hand-made
def _asap(annotations: str, groups: str = "") -> str:
    return (
        '<?xml version="1.0"?>\n<ASAP_Annotations><Annotations>'
        f"{annotations}</Annotations><AnnotationGroups>{groups}</AnnotationGroups>"
        "</ASAP_Annotations>"
    )


def _ann(name: str, kind: str, group: str, points: list[tuple[str, str]], order=None) -> str:
    order = order or list(range(len(points)))
    coords = "".join(
        f'<Coordinate Order="{o}" X="{x}" Y="{y}" />'
        for o, (x, y) in zip(order, points, strict=True)
    )
    return (
        f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">'
        f"<Coordinates>{coords}</Coordinates></Annotation>"
    )


def _square(x0: float, y0: float, size: float) -> list[tuple[str, str]]:
    corners = [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size)]
    return [(str(x), str(y)) for x, y in corners]


def test_asap_types_order_and_decimal_comma(tmp_path):
    sq = _square(0, 0, 4)
    text = _asap(
        _ann("p", "Polygon", "tumor", [("0", "0"), ("10,5", "0"), ("10,5", "10"), ("0", "10")])
        + _ann("shuffled", "Rectangle", "None", [sq[2], sq[0], sq[3], sq[1]], order=[2, 0, 3, 1])
        + _ann("d", "Dot", "None", [("3.5", "4.5")])
        + _ann("ps", "PointSet", "None", [("1", "1"), ("2", "2")])
        + _ann("m", "Measurement", "None", [("0", "0"), ("3", "4")]),
        '<Group Name="tumor" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>',
    )
    path = tmp_path / "a.xml"
    path.write_text(text)
    poly, rect, dot, pointset, measure = read_asap_xml(path)
    assert (poly.classification, poly.color) == ("tumor", (255, 0, 0))
    assert poly.geometry.area == pytest.approx(105.0)  # "10,5" read as 10.5
    # placed by Order, not by document order: a valid 4x4 square
    assert rect.classification is None and rect.geometry.is_valid and rect.geometry.area == 16
    assert dot.geometry == Point(3.5, 4.5)
    assert isinstance(pointset.geometry, MultiPoint) and len(pointset.geometry.geoms) == 2
    assert isinstance(measure.geometry, LineString) and measure.geometry.length == 5


def test_spline_densification_is_optional_and_passes_through_control_points(tmp_path):
    path = tmp_path / "s.xml"
    path.write_text(_asap(_ann("s", "Spline", "None", _square(0, 0, 10))))
    plain = read_asap_xml(path)[0].geometry
    assert plain.area == 100 and len(plain.exterior.coords) == 5
    smooth = read_asap_xml(path, spline_points_per_segment=8)[0].geometry
    assert len(smooth.exterior.coords) == 4 * 8 + 1
    for corner in [(0, 0), (10, 0), (10, 10), (0, 10)]:
        assert corner in smooth.exterior.coords
    assert smooth.area > 100  # a Catmull-Rom curve bulges out between the corners
    curve = catmull_rom_closed(shapely.get_coordinates(plain)[:-1], 4)
    assert curve.shape == (16, 2)


def test_negative_groups_become_holes(tmp_path):
    text = _asap(
        _ann("lesion", "Polygon", "_0", _square(0, 0, 100))
        + _ann("hole", "Polygon", "_2", _square(40, 40, 20))
        + _ann("island", "Polygon", "_1", _square(45, 45, 10))
    )
    path = tmp_path / "c16.xml"
    path.write_text(text)
    lesion, island = read_asap_xml(path)
    assert lesion.geometry.area == 100 * 100 - 20 * 20
    assert len(lesion.geometry.interiors) == 1
    assert island.geometry.area == 100  # drawn inside the hole: kept whole
    kept = read_asap_xml(path, subtract_groups=())
    assert [a.classification for a in kept] == ["_0", "_2", "_1"]
    assert kept[0].geometry.area == 100 * 100


def test_asap_invalid_polygon_repaired_and_short_one_dropped(tmp_path):
    bowtie = [("0", "0"), ("2", "2"), ("2", "0"), ("0", "2")]
    path = tmp_path / "b.xml"
    text = _ann("bow", "Polygon", "None", bowtie) + _ann("two", "Polygon", "None", bowtie[:2])
    path.write_text(_asap(text))
    report = ImportReport()
    with pytest.warns(UserWarning):
        (got,) = read_asap_xml(path, report=report)
    assert (report.repaired, report.dropped) == (1, 1)
    assert got.geometry.is_valid and got.geometry.area == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("<ASAP_Annotations><Annotations><Annotation", "malformed XML at line 1"),
        (
            _asap(
                _ann("a", "Polygon", "None", _square(0, 0, 1))
                + _ann("b", "Polygon", "None", [("x", "1")] * 3)
            ),
            "annotation 1 ('b'): coordinate 0 X='x' is not a number",
        ),
        (
            _asap(
                _ann("a", "Polygon", "None", _square(0, 0, 1)) * 2 + _ann("c", "Circle", "None", [])
            ),
            "annotation 2 ('c'): unknown Type 'Circle'",
        ),
        (
            _asap('<Annotation Name="n" Type="Dot" PartOfGroup="None" />'),
            "annotation 0 ('n'): no <Coordinates>",
        ),
        ("<Annotations/>", "not <ASAP_Annotations>"),
    ],
)
def test_malformed_xml_names_file_and_element(tmp_path, text, needle):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as info:
        read_asap_xml(path)
    assert str(path) in str(info.value) and needle in str(info.value)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<ASAP_Annotations><Annotations>
<Annotation Name="&lol9;" Type="Dot" PartOfGroup="None" Color="#F4FA58">
<Coordinates><Coordinate Order="0" X="1" Y="1" /></Coordinates></Annotation>
</Annotations></ASAP_Annotations>
"""


def test_hostile_xml_is_refused_not_expanded(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    external = BILLION_LAUGHS.split("<!DOCTYPE")[0] + (
        f'<!DOCTYPE a [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
        '<ASAP_Annotations><Annotations><Annotation Name="&xxe;" Type="Dot" '
        'PartOfGroup="None"><Coordinates><Coordinate Order="0" X="1" Y="1" />'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    for name, text in [("laughs.xml", BILLION_LAUGHS), ("xxe.xml", external)]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(InvalidInputError, match="refused") as info:
            read_asap_xml(path)
        assert str(path) in str(info.value) and "TOP-SECRET" not in str(info.value)


# ------------------------------------------------------------------------ ASAP writer
def test_asap_writer_round_trip_with_holes_points_and_groups(shared, tmp_path):
    (holed,) = read_qupath_geojson(shared(QP + "histoqc_holed.geojson"))
    annotations = [
        Annotation(geometry=holed.geometry, classification="tumor", color=(255, 0, 0), name="t"),
        Annotation(geometry=Point(5, 6), name="dot"),
        Annotation(geometry=MultiPoint([(1, 2), (3, 4)]), classification="cells"),
        Annotation(geometry=LineString([(0, 0), (1, 1), (2, 0)]), name="polyline"),
    ]
    out = tmp_path / "sub" / "out.xml"
    report = write_asap_xml(annotations, out)
    assert report.written == 4 and report.repaired == 0  # polygon, its hole, dot, point set
    assert len(report.skipped) == 1 and "polyline" in report.skipped[0]
    assert [p.name for p in out.parent.iterdir()] == ["out.xml"]  # no temporary left behind
    back = read_asap_xml(out)
    tumor, dot, cells = back
    assert (tumor.classification, tumor.color, tumor.name) == ("tumor", (255, 0, 0), "t")
    assert len(tumor.geometry.interiors) == 1
    assert tumor.geometry.symmetric_difference(holed.geometry).area < 1e-6
    assert dot.geometry == Point(5, 6) and dot.classification is None
    assert cells.geometry.equals(MultiPoint([(1, 2), (3, 4)]))


def test_asap_writer_refuses_existing_output_and_repairs_invalid(tmp_path):
    out = tmp_path / "o.xml"
    out.write_text("keep me")
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    with pytest.raises(OutputExistsError):
        write_asap_xml([Annotation(geometry=bowtie)], out)
    assert out.read_text() == "keep me"
    report = write_asap_xml([Annotation(geometry=bowtie, classification="x")], out, overwrite=True)
    assert report.repaired == 1 and report.written == 2  # the bow tie's two triangles
    back = read_asap_xml(out)
    assert all(a.geometry.is_valid for a in back)
    assert sum(a.geometry.area for a in back) == pytest.approx(2.0)


def test_asap_writer_round_trips_a_real_camelyon_file(shared, tmp_path):
    original = _quiet_read(read_asap_xml, shared(ASAP + "camelyon16_tumor_085.xml"))
    out = tmp_path / "t85.xml"
    write_asap_xml(original, out)
    back = read_asap_xml(out)
    # a repaired self-intersecting lesion is a MultiPolygon: one <Annotation> per part
    assert len(back) == len(original) + 1
    assert {a.name for a in back} == {a.name for a in original}
    total = sum(a.geometry.area for a in original)
    assert sum(a.geometry.area for a in back) == pytest.approx(total, rel=1e-9)


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
        assert (b.classification, b.color, b.name, b.object_type, b.locked) == (
            a.classification,
            a.color,
            a.name,
            a.object_type,
            a.locked,
        )
        assert dict(b.measurements) == pytest.approx(dict(a.measurements), nan_ok=True)
        # QuPath's 0.01 px grid: areas agree to well under a pixel per unit of perimeter
        assert b.geometry.symmetric_difference(a.geometry).area <= 0.01 * a.geometry.length + 1e-6
        if a.id is not None:
            assert b.id == a.id
