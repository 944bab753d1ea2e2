"""ASAP XML into the one Annotation model, and the ASAP writer.

Real CAMELYON16 and tissue exports from ../shared/data/annotations are checked against facts
read from the files; hand-made files cover splines, holes, bad input and hostile XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter

import pytest
import shapely
from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon, box

from tests.test_annotations_import import QP, _quiet_read
from wsi_ai.annotations import (
    Annotation,
    ImportReport,
    read_asap_xml,
    read_qupath_geojson,
    write_asap_xml,
)
from wsi_ai.annotations.asap import catmull_rom_closed
from wsi_ai.errors import InvalidInputError, OutputExistsError

ASAP = "annotations/asap_xml/"


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
    assert first.color == (0xF4, 0xFA, 0x58)  # its own Color="#F4FA58"
    assert first.class_color == (0, 0, 255)  # group "metastasis" Color="#0000ff"
    assert first.properties == {"asap_type": "Spline"}
    # splines: the control points are the vertices (as ASAP's AnnotationToMask fills them)
    assert first.geometry.exterior.coords[0] == (79581.2031, 75651.6016)
    tumor76 = _quiet_read(read_asap_xml, shared(ASAP + "camelyon16_tumor_076.xml"))
    assert tumor76[0].name == "Tumor1" and tumor76[0].color == (0, 170, 0)
    assert tumor76[0].class_color == (100, 254, 46)
    assert tumor76[0].geometry.exterior.coords[0] == (11347.0, 29510.8008)


# ------------------------------------------------------------------ ASAP: hand-made
def _asap(annotations: str, groups: str = "") -> str:
    return (
        '<?xml version="1.0"?>\n<ASAP_Annotations><Annotations>'
        f"{annotations}</Annotations><AnnotationGroups>{groups}</AnnotationGroups>"
        "</ASAP_Annotations>"
    )


def _ann(
    name: str,
    kind: str,
    group: str,
    points: list[tuple[str, str]],
    order=None,
    color: str | None = "#F4FA58",
) -> str:
    order = order or list(range(len(points)))
    coords = "".join(
        f'<Coordinate Order="{o}" X="{x}" Y="{y}" />'
        for o, (x, y) in zip(order, points, strict=True)
    )
    color_attribute = "" if color is None else f' Color="{color}"'
    return (
        f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}"{color_attribute}>'
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
    assert (poly.classification, poly.class_color) == ("tumor", (255, 0, 0))
    assert poly.color == (0xF4, 0xFA, 0x58)  # its own Color
    assert poly.geometry.area == pytest.approx(105.0)  # "10,5" read as 10.5
    # placed by Order, not by document order: a valid 4x4 square
    assert rect.classification is None and rect.geometry.is_valid and rect.geometry.area == 16
    assert dot.geometry == Point(3.5, 4.5)
    assert isinstance(pointset.geometry, MultiPoint) and len(pointset.geometry.geoms) == 2
    assert isinstance(measure.geometry, LineString) and measure.geometry.length == 5


@pytest.mark.parametrize(
    ("group", "own", "expected_color", "expected_class_color"),
    [
        ("tumor", "#00AA00", (0, 170, 0), (255, 0, 0)),  # own colour kept, group's as class
        ("tumor", None, (255, 0, 0), (255, 0, 0)),  # no own colour: the group's (fallback)
        ("None", "#00AA00", (0, 170, 0), None),  # ungrouped
        ("undeclared", "#00aa00", (0, 170, 0), None),  # a group without a colour
        ("tumor", "#xyz", (255, 0, 0), (255, 0, 0)),  # a bad own colour is warned and ignored
    ],
    ids=["own-and-group", "group-only", "ungrouped", "undeclared-group", "bad-own"],
)
def test_per_annotation_colour_is_kept(tmp_path, group, own, expected_color, expected_class_color):
    text = _asap(
        _ann("a", "Polygon", group, _square(0, 0, 4), color=own),
        '<Group Name="tumor" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>',
    )
    path = tmp_path / "c.xml"
    path.write_text(text)
    report = ImportReport()
    (a,) = read_asap_xml(path, report=report)
    assert (a.color, a.class_color) == (expected_color, expected_class_color)
    assert a.classification == (None if group == "None" else group)
    assert any("'#xyz'" in w for w in report.warnings) == (own == "#xyz")


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


_DOT = _ann("d", "Dot", "None", [("1", "2")])


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('<?xml version="1.0" encoding="bogus"?>' + _asap(_DOT), "unknown encoding 'bogus'"),
        ('<?xml version="1.0" encoding="shift_jis"?>' + _asap(_DOT), "encoding 'shift_jis'"),
        ('<?xml version="1.0" encoding="utf-16"?>' + _asap(_DOT), "encoding"),
        # an element we do not know where annotations are: refused, not skipped
        (_asap(_DOT + '<Annotatio Name="x" Type="Dot" />'), "element 1: <Annotatio> is not"),
        (_asap(_DOT + "<Group />"), "element 1: <Group> is not an <Annotation>"),
        ("<ASAP_Annotations><AnnotationGroups /></ASAP_Annotations>", "no <Annotations>"),
        ("<ASAP_Annotations />", "no <Annotations> element"),
    ],
)
def test_xml_that_is_not_wholly_understood_is_refused(tmp_path, text, needle):
    path = tmp_path / "odd.xml"
    path.write_bytes(text.encode("utf-8"))
    with pytest.raises(InvalidInputError) as info:
        read_asap_xml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message
    assert "ASAP XML" in message or "XML" in message


@pytest.mark.parametrize(
    "text",
    [
        "<ASAP_Annotations><Annotations /><AnnotationGroups /></ASAP_Annotations>",
        '<?xml version="1.0"?>\n<ASAP_Annotations><Annotations>\n</Annotations></ASAP_Annotations>',
    ],
)
def test_an_empty_asap_file_is_legal_with_a_warning(tmp_path, text):
    path = tmp_path / "empty.xml"
    path.write_text(text)
    report = ImportReport()
    with pytest.warns(UserWarning, match="no annotations"):
        assert read_asap_xml(path, report=report) == []
    assert report.warnings == ["file: no annotations found"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # shapely overflows on +-1e308
def test_a_polygon_geos_cannot_repair_is_refused(tmp_path):
    big = [("-1e308", "-1e308"), ("1e308", "1e308"), ("1e308", "-1e308"), ("-1e308", "1e308")]
    path = tmp_path / "huge.xml"
    path.write_text(_asap(_ann("x", "Polygon", "None", big)))
    with pytest.raises(InvalidInputError, match=r"annotation 0 .*GEOS cannot repair"):
        read_asap_xml(path)


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


def _xml_colours(path):
    root = ET.parse(path).getroot()
    own = {e.get("Name"): e.get("Color") for e in root.iter("Annotation")}
    return own, {g.get("Name"): g.get("Color") for g in root.iter("Group")}


def test_asap_writer_writes_own_and_group_colours(tmp_path):
    annotations = [
        Annotation(box(0, 0, 9, 9), "tumor", (0, 255, 0), name="own", class_color=(0, 0, 255)),
        Annotation(box(20, 0, 29, 9), "tumor", (0, 0, 255), name="class", class_color=(0, 0, 255)),
        Annotation(box(40, 0, 49, 9), "stroma", (1, 2, 3), name="legacy"),  # no class colour
        Annotation(box(60, 0, 69, 9), None, (9, 9, 9), name="free"),
    ]
    out = tmp_path / "colours.xml"
    write_asap_xml(annotations, out)
    own, groups = _xml_colours(out)
    assert own == {"own": "#00FF00", "class": "#0000FF", "legacy": "#010203", "free": "#090909"}
    assert groups == {"tumor": "#0000FF", "stroma": "#010203"}
    back = read_asap_xml(out)
    assert [(a.color, a.class_color) for a in back] == [
        (a.color, a.class_color) for a in annotations[:2]
    ] + [((1, 2, 3), (1, 2, 3)), ((9, 9, 9), None)]


@pytest.mark.parametrize(
    "name", ["camelyon16_tumor_076.xml", "camelyon16_tumor_009.xml", "tissue_11_HE.xml"]
)
def test_asap_round_trip_keeps_every_colour(shared, tmp_path, name):
    original = _quiet_read(read_asap_xml, shared(ASAP + name))
    out = tmp_path / "again.xml"
    write_asap_xml(original, out)
    back = _quiet_read(read_asap_xml, out)
    colours = {a.name: (a.color, a.class_color) for a in original}
    assert {a.name: (a.color, a.class_color) for a in back} == colours
    source_own, source_groups = _xml_colours(shared(ASAP + name))
    own, groups = _xml_colours(out)
    assert {k: v.upper() for k, v in own.items()} == {
        k: v.upper() for k, v in source_own.items() if k in own
    }
    used = {a.classification for a in original}
    assert groups == {k: v.upper() for k, v in source_groups.items() if k in used}


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
