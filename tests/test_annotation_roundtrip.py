"""Import, export, import: every real annotation file keeps its geometry (within 0.01 px),
classes, measurements and the rest of what QuPath GeoJSON can hold.

Sources are the real QuPath GeoJSON and ASAP XML files in the shared test data; the export
is wsi-ai's QuPath-safe GeoJSON writer (``.geojson`` and ``.geojson.gz``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest
import shapely

from tests.conftest import data_root
from wsi_ai.annotations import Annotation, read_asap_xml, read_qupath_geojson
from wsi_ai.export.geojson import write_geojson

TOLERANCE_PX = 0.01  # QuPath's own grid: the writer rounds to 2 decimals


def _listed(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    root = data_root() / "annotations" / folder
    if not root.is_dir():
        return [f"{folder}/missing"]  # the test skips (or fails in CI) through `shared`
    return sorted(f"{folder}/{p.name}" for p in root.iterdir() if p.name.endswith(suffixes))


SOURCES = _listed("qupath_geojson", (".geojson", ".json")) + _listed("asap_xml", (".xml",))


def _read(path: Path) -> list[Annotation]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # repairs of the source are counted by the readers
        return read_asap_xml(path) if path.suffix == ".xml" else read_qupath_geojson(path)


def _same_measurements(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    if set(a) != set(b):
        return False
    return all((math.isnan(a[k]) and math.isnan(b[k])) or float(a[k]) == float(b[k]) for k in a)


def assert_same(before: Annotation, after: Annotation) -> None:
    assert after.geometry.geom_type == before.geometry.geom_type
    assert shapely.hausdorff_distance(before.geometry, after.geometry) <= TOLERANCE_PX
    if before.geometry.area > 0:
        diff = before.geometry.symmetric_difference(after.geometry).area
        assert diff <= TOLERANCE_PX * before.geometry.length
    assert after.classification == before.classification
    assert after.object_type == before.object_type
    assert after.name == before.name
    assert after.color == before.color
    if before.class_color is not None and before.classification is not None:
        assert after.class_color == before.class_color
    assert after.locked == before.locked
    assert _same_measurements(before.measurements, after.measurements)
    if before.nucleus_geometry is not None:
        assert after.nucleus_geometry is not None
        d = shapely.hausdorff_distance(before.nucleus_geometry, after.nucleus_geometry)
        assert d <= TOLERANCE_PX


@pytest.mark.parametrize("relpath", SOURCES)
@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz"])
def test_import_export_import_keeps_everything(
    shared, relpath: str, suffix: str, tmp_path: Path
) -> None:
    source = shared(f"annotations/{relpath}")
    first = _read(source)
    assert first, f"{relpath} imported nothing"
    out = tmp_path / f"roundtrip{suffix}"
    report = write_geojson(out, first, provenance={"source": source.name})
    assert (report.written, report.repaired, report.dropped) == (len(first), 0, 0)
    # deterministic: the same annotations give the same bytes (ids, gzip header, no dates)
    rerun = tmp_path / f"rerun{suffix}"
    write_geojson(rerun, _read(source), provenance={"source": source.name})
    assert rerun.read_bytes() == out.read_bytes()
    second = read_qupath_geojson(out)
    assert len(second) == len(first)
    for before, after in zip(first, second, strict=True):
        assert_same(before, after)
    # a second trip is a fixed point: what we write, we read back exactly
    again = tmp_path / f"again{suffix}"
    write_geojson(again, second)
    third = read_qupath_geojson(again)
    for a, b in zip(second, third, strict=True):
        assert shapely.equals_exact(a.geometry, b.geometry, tolerance=1e-9)
        assert _same_measurements(a.measurements, b.measurements)


def test_ids_survive_when_they_are_uuids(shared, tmp_path: Path) -> None:
    source = shared("annotations/qupath_geojson/dlup_qupath05.geojson")
    first = _read(source)
    assert all(a.id for a in first)
    out = tmp_path / "ids.geojson"
    write_geojson(out, first)
    assert [a.id for a in read_qupath_geojson(out)] == [a.id for a in first]


def test_asap_colours_become_qupath_object_and_class_colours(shared, tmp_path: Path) -> None:
    """Each <Annotation Color> is the object's ``color``; its group's is the class colour."""
    source = shared("annotations/asap_xml/camelyon16_tumor_076.xml")
    out = tmp_path / "t76.geojson"
    write_geojson(out, _read(source))
    features = json.loads(out.read_text(encoding="utf-8"))["features"]
    assert features[0]["properties"]["name"] == "Tumor1"
    assert features[0]["properties"]["color"] == [0, 170, 0]  # Color="#00aa00"
    assert features[0]["properties"]["classification"] == {
        "name": "metastasis",
        "color": [100, 254, 46],  # the group's Color="#64FE2E"
    }
    own = Counter(tuple(f["properties"]["color"]) for f in features)
    assert own == {(0, 170, 0): 38, (0xF4, 0xFA, 0x58): 1}
