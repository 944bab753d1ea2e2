"""Fuzzing the annotation readers: whatever the bytes, the QuPath GeoJSON reader and the ASAP
XML reader either return annotations or raise a :class:`~wsi_ai.errors.WsiAiError` (one line
naming the file), never another exception, and never hang.

Inputs are mutations of real files from ../shared/data/annotations (members dropped,
duplicated, renamed or replaced by random JSON; XML attributes altered, elements removed,
duplicated or invented; DTDs, entities and odd encodings), then truncated, corrupted or
gzipped, plus random bytes. Hypothesis runs a fixed number of examples, derandomised (the same
examples on every run, no example database), each under a deadline.
"""

from __future__ import annotations

import copy
import gzip
import json
import warnings
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry.base import BaseGeometry

from wsi_ai.annotations import Annotation, ImportReport, read_asap_xml, read_qupath_geojson
from wsi_ai.errors import WsiAiError

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),  # one example; a hang fails it (pytest-timeout backs it up)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
pytestmark = pytest.mark.timeout(120)

QUPATH_SEEDS = (
    "annotations/qupath_geojson/dlup_qupath05.geojson",
    "annotations/qupath_geojson/histoqc_holed.geojson",
    "annotations/qupath_geojson/coscia_03012023_JN.geojson",
    "annotations/qupath_geojson/coscia_TD_01_verysmall_mIF.geojson",
    "annotations/qupath_geojson/qupath_test_polygon.geojson",
)
ASAP_SEEDS = (
    "annotations/asap_xml/tissue_L1.xml",
    "annotations/asap_xml/tissue_11_HE.xml",
    "annotations/asap_xml/tissue_OC-AH-013_RES.xml",
)
HANDMADE_ASAP = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
<Annotation Name="p" Type="Polygon" PartOfGroup="tumor" Color="#FF0000"><Coordinates>
<Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="100" Y="0" />
<Coordinate Order="2" X="100" Y="100" /><Coordinate Order="3" X="0" Y="100" /></Coordinates>
</Annotation>
<Annotation Name="hole" Type="Rectangle" PartOfGroup="_2" Color="#000000"><Coordinates>
<Coordinate Order="0" X="10" Y="10" /><Coordinate Order="1" X="20" Y="10" />
<Coordinate Order="2" X="20" Y="20" /><Coordinate Order="3" X="10" Y="20" /></Coordinates>
</Annotation>
<Annotation Name="d" Type="Dot" PartOfGroup="None"><Coordinates>
<Coordinate Order="0" X="1,5" Y="2" /></Coordinates></Annotation>
<Annotation Name="ps" Type="PointSet" PartOfGroup="None"><Coordinates>
<Coordinate Order="0" X="1" Y="2" /><Coordinate Order="1" X="3" Y="4" /></Coordinates></Annotation>
<Annotation Name="m" Type="Measurement" PartOfGroup="None"><Coordinates>
<Coordinate Order="1" X="5" Y="5" /><Coordinate Order="0" X="0" Y="0" /></Coordinates></Annotation>
</Annotations><AnnotationGroups>
<Group Name="tumor" PartOfGroup="None" Color="#00FF00"><Attributes /></Group>
<Group Name="_2" PartOfGroup="None" Color="#000000"><Attributes /></Group>
</AnnotationGroups></ASAP_Annotations>
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def qupath_seeds(shared) -> list[bytes]:
    return [shared(name).read_bytes() for name in QUPATH_SEEDS]


@pytest.fixture(scope="module")
def asap_seeds(shared) -> list[bytes]:
    return [*(shared(name).read_bytes() for name in ASAP_SEEDS), HANDMADE_ASAP.encode()]


def _check(result: list[Annotation]) -> None:
    """What a reader returns: annotations with a shapely geometry that is not empty."""
    assert isinstance(result, list)
    for a in result:
        assert isinstance(a, Annotation) and isinstance(a.geometry, BaseGeometry)
        assert not a.geometry.is_empty


def _read(reader: Any, path: Path, data: bytes, **kwargs: Any) -> None:
    """Read ``data`` from ``path``: annotations, or a WsiAiError naming the file (any other
    exception fails the test, and Hypothesis shows the smallest input that raises it)."""
    path.write_bytes(data)
    report = ImportReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = reader(path, report=report, **kwargs)
        except WsiAiError as err:
            assert str(path) in str(err) and "\n" not in str(err), str(err)
            return
    _check(result)
    if not result:  # a file read as empty must say so
        assert report.warnings


# ---------------------------------------------------------------------------- JSON values
KEYS = (
    "type", "features", "geometry", "geometries", "coordinates", "properties", "id",
    "objectType", "classification", "name", "names", "color", "colorRGB", "measurements",
    "metadata", "childObjects", "children", "nucleusGeometry", "isLocked", "plane", "isEllipse",
    "value", "parentClass",
)  # fmt: skip
TYPES = (
    "Feature", "FeatureCollection", "Point", "MultiPoint", "LineString", "MultiLineString",
    "Polygon", "MultiPolygon", "GeometryCollection", "feature", "polygon", "Topology",
    "annotation", "detection", "cell", "tile", "tmaCore", "root", "PathCellObject", "__class__",
    "__name__", "GeoJSON", "",
)  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.just(10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(TYPES)
    | st.sampled_from(("10", "NaN", "Infinity", "#ff0000", "true", "Tumor: Positive", " "))
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
numbers = st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6) | scalars
positions = st.lists(numbers, min_size=0, max_size=4)


@st.composite
def geometries(draw: st.DrawFn) -> dict[str, Any]:
    """Geometry-shaped objects: right and wrong types, nesting, rings and numbers."""
    kind = draw(st.sampled_from((*TYPES[2:9], "polygon", "Circle")))
    depth = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2}
    level = depth.get(kind, 3) + draw(st.sampled_from((0, 0, 0, -1, 1)))
    coords: Any = draw(positions)
    for _ in range(max(0, level)):
        coords = draw(st.lists(st.just(coords), max_size=5))  # repeated parts: closed rings too
    if draw(st.booleans()) and level >= 2 and coords and coords[0]:
        coords[0][0] = coords[0][0] + [coords[0][0][0]] if coords[0][0] else []
    out: dict[str, Any] = {"type": kind, "coordinates": coords}
    if kind == "GeometryCollection":
        out = {"type": kind, draw(st.sampled_from(("geometries", "coordinates"))): []}
    return out


@st.composite
def geojson_documents(draw: st.DrawFn) -> Any:
    """GeoJSON-shaped documents built from scratch (FeatureCollections of odd features)."""
    features = draw(
        st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(("Feature", "feature", "Point"))},
                optional={
                    "geometry": geometries() | json_values,
                    "properties": st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)
                    | json_values,
                    "nucleusGeometry": geometries(),
                    "id": json_values,
                },
            ),
            max_size=4,
        )
    )
    shape = draw(st.sampled_from(("collection", "array", "one", "geometry")))
    if shape == "collection":
        return {"type": "FeatureCollection", "features": features}
    if shape == "array":
        return features
    return features[0] if shape == "one" and features else draw(geometries())


# ----------------------------------------------------------------- JSON mutation of a seed
def _containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every member and element, coordinates arrays counted once (not per number)."""
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _containers(value, (*path, key))
    elif isinstance(node, list) and not (node and isinstance(node[0], int | float)):
        for i, value in enumerate(node[:6]):
            out += _containers(value, (*path, i))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> tuple[Any, Any] | None:
    parent = None
    node = doc
    for key in path:
        parent = node
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return (parent, path[-1]) if path else None


@st.composite
def mutated_json(draw: st.DrawFn, seeds: list[Any]) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    paths = _containers(doc)
    for _ in range(draw(st.integers(1, 3))):
        found = _at(doc, draw(st.sampled_from(paths)))
        if found is None:
            continue
        parent, key = found
        op = draw(st.sampled_from(("replace", "delete", "rename", "duplicate", "wrap", "type")))
        if op == "replace":
            parent[key] = draw(json_values | geometries())
        elif op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            new = draw(st.sampled_from((str(key).lower(), str(key).upper(), f"{key} ")) | st.text())
            parent[new] = parent.pop(key)
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "type" and isinstance(parent[key], dict):
            parent[key]["type"] = draw(st.sampled_from(TYPES) | json_values)
    return doc


@st.composite
def damaged(draw: st.DrawFn, text: bytes) -> bytes:
    """Bytes as they come damaged: cut, overwritten, with junk inserted, gzipped, or not."""
    op = draw(st.sampled_from(("none", "none", "truncate", "overwrite", "insert", "gzip", "bom")))
    if op == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if op in ("overwrite", "insert") and text:
        at = draw(st.integers(0, len(text) - 1))
        junk = draw(st.binary(min_size=1, max_size=8))
        return text[:at] + junk + text[at + (len(junk) if op == "overwrite" else 0) :]
    if op == "gzip":
        packed = gzip.compress(text, mtime=0)
        return packed[: draw(st.integers(2, len(packed)))] if draw(st.booleans()) else packed
    return b"\xef\xbb\xbf" + text if op == "bom" else text


def _duplicate_a_key(text: str, key: str, value: Any) -> str:
    """JSON text with a member written twice in the first object that has members."""
    at = text.find('{"')
    if at < 0:
        return text
    return f'{text[: at + 1]}"{key}": {json.dumps(value)}, {text[at + 1 :]}'


@pytest.fixture(scope="module")
def qupath_docs(qupath_seeds) -> list[Any]:
    return [json.loads(raw) for raw in qupath_seeds]


@FUZZ
@given(data=st.data())
def test_fuzz_qupath_reader_on_mutated_real_files(workdir, qupath_docs, data):
    doc = data.draw(mutated_json(qupath_docs))
    text = json.dumps(doc, allow_nan=True)
    if data.draw(st.booleans()):
        text = _duplicate_a_key(text, data.draw(st.sampled_from(KEYS)), data.draw(json_values))
    raw = data.draw(damaged(text.encode("utf-8", "surrogatepass")))
    _read(read_qupath_geojson, workdir / "mutated.geojson", raw)


@FUZZ
@given(doc=geojson_documents() | json_values, data=st.data())
def test_fuzz_qupath_reader_on_geojson_shaped_documents(workdir, doc, data):
    raw = json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    _read(read_qupath_geojson, workdir / "shaped.json", data.draw(damaged(raw)))


@FUZZ
@given(raw=st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: b"\x1f\x8b" + b))
def test_fuzz_qupath_reader_on_random_bytes(workdir, raw):
    _read(read_qupath_geojson, workdir / "random.json", raw)


# ----------------------------------------------------------------------------- ASAP XML
ATTRIBUTES = ("Name", "Type", "PartOfGroup", "Color", "Order", "X", "Y")
ODD_VALUES = (
    "Polygon", "Spline", "Dot", "PointSet", "Measurement", "Rectangle", "Circle", "None", "_2",
    "negative", "tumor", "#FF0000", "#ff00", "red", "", "1", "-1", "1,5", "1.5e3", "nan", "inf",
    "-inf", "1e999", "9" * 400, "0x10", " 7 ", "&", "<", "é", "1.2.3",
)  # fmt: skip
attribute_values = (
    st.sampled_from(ODD_VALUES)
    | st.integers(-(10**9), 10**9).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.text(max_size=10)
)
TAGS = ("Annotation", "Coordinates", "Coordinate", "Annotations", "AnnotationGroups", "Group")


def _valid_xml_text(text: str) -> str:
    """What ElementTree can put in an attribute without writing an unparseable file itself
    (the unparseable ones come from the byte-level damage instead)."""
    return "".join(c for c in text if c in "\t\n\r" or (" " <= c <= "\ud7ff"))


@st.composite
def mutated_xml(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    root = ET.fromstring(draw(st.sampled_from(seeds)))
    elements = list(root.iter())
    for _ in range(draw(st.integers(1, 4))):
        element = draw(st.sampled_from(elements))
        op = draw(st.sampled_from(("set", "set", "drop-attribute", "remove", "copy", "add", "tag")))
        if op == "set":
            value = _valid_xml_text(draw(attribute_values))
            element.set(draw(st.sampled_from(ATTRIBUTES) | st.text("abcXYZ", min_size=1)), value)
        elif op == "drop-attribute" and element.attrib:
            del element.attrib[draw(st.sampled_from(sorted(element.attrib)))]
        elif op in ("remove", "copy") and len(element):
            child = draw(st.sampled_from(list(element)))
            if op == "remove":
                element.remove(child)
            else:
                element.insert(draw(st.integers(0, len(element))), copy.deepcopy(child))
        elif op == "add":
            tag = draw(st.sampled_from(TAGS) | st.sampled_from(("Foo", "x", "Annotation_")))
            new = ET.SubElement(element, tag)
            for name in draw(st.lists(st.sampled_from(ATTRIBUTES), max_size=4)):
                new.set(name, _valid_xml_text(draw(attribute_values)))
        elif op == "tag":
            element.tag = draw(st.sampled_from(TAGS) | st.just("asap_annotations"))
    text = ET.tostring(root, encoding="unicode")
    trick = draw(st.sampled_from(XML_TRICKS)) if draw(st.booleans()) else "{}"
    return trick.replace("{}", text).encode("utf-8")


XML_TRICKS = (  # "{}" is where the document goes
    "{}",
    '<?xml version="1.0"?>\n{}',
    '<?xml version="1.0" encoding="utf-16"?>\n{}',
    '<?xml version="1.0" encoding="shift_jis"?>\n{}',
    '<?xml version="1.0" encoding="bogus"?>\n{}',
    '<?xml version="2.0"?>{}',
    '<!DOCTYPE ASAP_Annotations [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n{}',
    '<!DOCTYPE ASAP_Annotations SYSTEM "file:///etc/passwd">\n{}',
    '<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p.dtd"> %p;]>\n{}',
    '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/hostname">]>'
    '<ASAP_Annotations N="&e;">{}</ASAP_Annotations>',
    "{}<!-- trailing -->",
    "<?pi data?>\n{}",
    "<ASAP_Annotations>&undefined;{}</ASAP_Annotations>",
    "<ASAP_Annotations>&#0;{}</ASAP_Annotations>",
    "<![CDATA[x]]>{}",
    "{}<ASAP_Annotations/>",
)


@FUZZ
@given(data=st.data())
def test_fuzz_asap_reader_on_mutated_real_files(workdir, asap_seeds, data):
    raw = data.draw(damaged(data.draw(mutated_xml(asap_seeds))))
    per_segment = data.draw(st.sampled_from((0, 0, 1, 4)))
    _read(read_asap_xml, workdir / "mutated.xml", raw, spline_points_per_segment=per_segment)


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode()))
def test_fuzz_asap_reader_on_random_bytes(workdir, raw):
    _read(read_asap_xml, workdir / "random.xml", raw)


def test_the_fuzzed_readers_do_read_their_seeds(workdir, qupath_seeds, asap_seeds):
    """The seeds are read whole, so the mutations start from files that work."""
    for raw in qupath_seeds:
        path = workdir / "seed.geojson"
        path.write_bytes(raw)
        assert read_qupath_geojson(path)
    for raw in asap_seeds:
        path = workdir / "seed.xml"
        path.write_bytes(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert read_asap_xml(path)
