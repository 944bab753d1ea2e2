"""Regions from a heatmap canvas: exact pixel-edge geometry, holes, parts, areas in µm², stats,
and the QuPath GeoJSON they are written to (checked by the autouse validator in conftest)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from wsi_ai.annotations import read_qupath_geojson
from wsi_ai.errors import InvalidInputError
from wsi_ai.export.geojson import write_geojson
from wsi_ai.export.regions import (
    AREA,
    MAX,
    MEAN,
    argmax_regions,
    otsu_threshold,
    regions_from_mask,
    threshold_mask,
    threshold_regions,
    tile_annotations,
)
from wsi_ai.stitch import Heatmap
from wsi_ai.stitch.contours import trace_regions

DS = 8.0  # level-0 px per canvas px
MPP = 0.25  # slide µm per level-0 px
PX_UM2 = (DS * MPP) ** 2  # µm² of one canvas pixel


def pixel_union(mask: np.ndarray) -> shapely.Geometry:
    """The reference: the union of the True pixels' squares, in canvas px."""
    rows, cols = np.nonzero(mask)
    return shapely.union_all([box(c, r, c + 1, r + 1) for r, c in zip(rows, cols, strict=True)])


def make_heatmap(canvas: np.ndarray, coverage: np.ndarray | None = None) -> Heatmap:
    canvas = canvas.astype(np.float32)
    if canvas.ndim == 2:
        canvas = canvas[..., None]
    h, w = canvas.shape[:2]
    cov = np.ones((h, w), bool) if coverage is None else coverage
    canvas = np.where(cov[..., None], canvas, np.nan).astype(np.float32)
    return Heatmap(
        canvas=canvas,
        coverage=cov,
        downsample=DS,
        mpp=DS * MPP,
        slide_size=(int(w * DS), int(h * DS)),
        blend="mean",
        sigma=None,
        fill_value=float("nan"),
        n_patches=0,
        n_placed=0,
    )


@pytest.mark.parametrize("seed", range(6))
def test_traced_regions_are_exactly_the_pixel_squares(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(5, 60, 2))
    mask = rng.random((h, w)) < rng.uniform(0.25, 0.75)
    values = rng.random((h, w))
    traced = trace_regions(mask, values)
    assert all(shapely.is_valid(traced.geometries))
    union = shapely.union_all(traced.geometries)
    assert union.symmetric_difference(pixel_union(mask)).area == 0
    # regions do not overlap, each one's area is its pixel count, stats are over its pixels
    assert sum(g.area for g in traced.geometries) == mask.sum() == traced.pixels.sum()
    assert traced.sums.sum() == pytest.approx(values[mask].sum())
    assert traced.maxima.max() == pytest.approx(values[mask].max())


def test_blobs_with_a_hole_an_island_and_two_parts_have_the_right_areas() -> None:
    canvas = np.zeros((60, 80), np.float32)
    canvas[5:25, 5:25] = 0.8  # 20 x 20 square ...
    canvas[10:20, 10:20] = 0.0  # ... with a 10 x 10 hole
    canvas[13:16, 13:16] = 0.95  # an island inside the hole (its own region)
    canvas[40:45, 40:45] = 0.7  # two squares touching at one corner: one MultiPolygon
    canvas[45:50, 45:50] = 0.9
    canvas[2, 70] = 0.99  # one pixel: below the minimum area
    regions = threshold_regions(
        make_heatmap(canvas),
        threshold=0.5,
        mpp=MPP,
        classification="Tumor",
        min_area_um2=2 * PX_UM2,
        simplify_px=0,
    )
    by_area = sorted(regions, key=lambda a: a.measurements[AREA])
    island, two_parts, holed = by_area
    assert [a.classification for a in regions] == ["Tumor"] * 3

    assert isinstance(holed.geometry, Polygon) and len(holed.geometry.interiors) == 1
    assert holed.measurements[AREA] == pytest.approx((400 - 100) * PX_UM2)
    assert holed.geometry.bounds == (5 * DS, 5 * DS, 25 * DS, 25 * DS)  # pixel edges, level 0
    hole = Polygon(holed.geometry.interiors[0])
    assert hole.bounds == (10 * DS, 10 * DS, 20 * DS, 20 * DS)
    # the island is not part of the holed region's statistics
    assert holed.measurements[MEAN] == pytest.approx(0.8)
    assert holed.measurements[MAX] == pytest.approx(0.8)
    assert island.measurements[AREA] == pytest.approx(9 * PX_UM2)
    assert island.measurements[MAX] == pytest.approx(0.95)

    assert isinstance(two_parts.geometry, MultiPolygon) and len(two_parts.geometry.geoms) == 2
    assert two_parts.measurements[AREA] == pytest.approx(50 * PX_UM2)
    assert two_parts.measurements[MEAN] == pytest.approx(0.8)
    assert two_parts.measurements[MAX] == pytest.approx(0.9)


def test_min_area_also_fills_small_holes_and_merge_gives_one_multipolygon() -> None:
    canvas = np.zeros((40, 40), np.float32)
    canvas[2:12, 2:12] = 1.0
    canvas[6, 6] = 0.0  # a one-pixel hole
    canvas[20:30, 25:35] = 0.6
    kwargs = {"threshold": 0.5, "mpp": MPP, "classification": "Tumor", "simplify_px": 0}
    heatmap = make_heatmap(canvas)
    kept = threshold_regions(heatmap, min_area_um2=0, **kwargs)
    assert sum(len(a.geometry.interiors) for a in kept) == 1
    filled = threshold_regions(heatmap, min_area_um2=2 * PX_UM2, **kwargs)
    assert sum(len(a.geometry.interiors) for a in filled) == 0
    assert sorted(a.measurements[AREA] for a in filled) == pytest.approx([100 * PX_UM2] * 2)

    (merged,) = threshold_regions(heatmap, min_area_um2=0, merge=True, **kwargs)
    assert isinstance(merged.geometry, MultiPolygon) and len(merged.geometry.geoms) == 2
    assert merged.measurements[AREA] == pytest.approx(199 * PX_UM2)
    assert merged.measurements[MEAN] == pytest.approx((99 * 1.0 + 100 * 0.6) / 199)
    assert merged.measurements[MAX] == 1.0


def test_simplification_is_light_and_keeps_validity() -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    disc = ((xx - 100) ** 2 + (yy - 100) ** 2 <= 70**2).astype(np.float32)
    exact = threshold_regions(
        make_heatmap(disc), threshold=0.5, mpp=MPP, classification="T", simplify_px=0
    )[0]
    light = threshold_regions(make_heatmap(disc), threshold=0.5, mpp=MPP, classification="T")[0]
    assert light.geometry.is_valid
    assert shapely.get_num_coordinates(light.geometry) < shapely.get_num_coordinates(exact.geometry)
    assert light.measurements[AREA] == pytest.approx(disc.sum() * PX_UM2, rel=0.01)
    assert shapely.hausdorff_distance(light.geometry, exact.geometry) <= 0.5 * DS + 1e-9


def test_uncovered_pixels_never_form_regions_and_slide_edges_clip() -> None:
    canvas = np.ones((10, 10), np.float32)
    coverage = np.zeros((10, 10), bool)
    coverage[:, 5:] = True
    heatmap = make_heatmap(canvas, coverage)
    assert threshold_mask(heatmap, 0.5).sum() == 50
    # the slide is narrower than the canvas: 9.5 canvas px wide
    clipped = Heatmap(**{**heatmap.__dict__, "slide_size": (int(9.5 * DS), int(10 * DS))})
    (region,) = threshold_regions(
        clipped, threshold=0.5, mpp=MPP, classification="T", simplify_px=0
    )
    assert region.geometry.bounds == (5 * DS, 0, 9.5 * DS, 10 * DS)
    assert region.measurements[AREA] == pytest.approx(4.5 * 10 * PX_UM2)


def test_argmax_regions_one_class_per_pixel_with_min_score_and_ignored_classes() -> None:
    probs = np.zeros((20, 30, 3), np.float32)
    probs[..., 0] = 0.6  # background everywhere ...
    probs[2:8, 2:10, 1] = 0.9  # ... tumour here
    probs[10:18, 15:25, 2] = 0.55  # stroma loses to background here
    probs[12:16, 17:21, 2] = 0.7  # ... but wins here
    regions = argmax_regions(
        make_heatmap(probs),
        ["Background", "Tumor", "Stroma"],
        mpp=MPP,
        ignore=("Background",),
        simplify_px=0,
    )
    areas = {a.classification: a.measurements[AREA] for a in regions}
    assert areas == pytest.approx({"Tumor": 48 * PX_UM2, "Stroma": 16 * PX_UM2})
    stroma = next(a for a in regions if a.classification == "Stroma")
    assert stroma.measurements[MEAN] == pytest.approx(0.7)
    strict = argmax_regions(
        make_heatmap(probs), ["Background", "Tumor", "Stroma"], mpp=MPP, min_score=0.8
    )
    assert [a.classification for a in strict] == ["Tumor"]


def test_regions_written_and_read_back_keep_geometry_classes_and_measurements(
    tmp_path: Path,
) -> None:
    canvas = np.zeros((50, 50), np.float32)
    canvas[5:30, 5:30] = np.linspace(0.6, 1.0, 25, dtype=np.float32)[None, :]
    canvas[12:18, 12:18] = 0.0
    canvas[35:45, 35:48] = 0.75
    regions = threshold_regions(make_heatmap(canvas), threshold=0.5, mpp=MPP, classification="T")
    out = tmp_path / "regions.geojson"
    report = write_geojson(out, regions, provenance={"slide": "x.svs", "slide_size_bytes": 1})
    assert (report.written, report.repaired, report.dropped) == (2, 0, 0)
    doc = json.loads(out.read_text())
    assert doc["wsi_ai"]["slide"] == "x.svs"
    feature = doc["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "T"
    assert len(feature["properties"]["classification"]["color"]) == 3
    assert set(feature["properties"]["measurements"]) == {AREA, MEAN, MAX}
    back = read_qupath_geojson(out)
    for a, b in zip(regions, back, strict=True):
        assert shapely.hausdorff_distance(a.geometry, b.geometry) <= 0.01
        assert b.classification == a.classification
        assert b.measurements == pytest.approx(dict(a.measurements))


def test_tiles_carry_per_class_measurements_and_gzip_imports(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "x": [0, 224, 448],
            "y": [0, 0, 224],
            "width": [224] * 3,
            "height": [224] * 3,
            "tumor": [0.9, 0.2, np.nan],
            "stroma": [0.1, 0.8, 0.5],
        }
    )
    tiles = list(tile_annotations(table, ["tumor", "stroma"]))
    assert [t.object_type for t in tiles] == ["tile"] * 3
    assert [t.classification for t in tiles] == ["tumor", "stroma", "stroma"]
    assert tiles[1].geometry.bounds == (224, 0, 448, 224)
    out = tmp_path / "tiles.geojson.gz"
    write_geojson(out, tiles)
    doc = json.loads(gzip.decompress(out.read_bytes()))
    props = doc["features"][2]["properties"]
    assert props["objectType"] == "tile"
    assert props["measurements"] == {"tumor": "NaN", "stroma": 0.5}
    back = read_qupath_geojson(out)
    assert back[0].measurements == {"tumor": 0.9, "stroma": 0.1}
    detections = list(tile_annotations(table, ["tumor"], object_type="detection"))
    assert detections[0].object_type == "detection" and detections[0].classification is None
    with pytest.raises(InvalidInputError, match="lymphocytes"):
        list(tile_annotations(table, ["lymphocytes"]))


def test_otsu_threshold_splits_two_populations() -> None:
    values = np.r_[np.full(50, 0.01), np.full(30, 0.09), np.nan]
    assert 0.01 < otsu_threshold(values) < 0.09
    with pytest.raises(InvalidInputError):
        otsu_threshold(np.array([np.nan]))


def test_bad_arguments_are_refused() -> None:
    mask = np.ones((4, 4), bool)
    with pytest.raises(InvalidInputError, match="mpp"):
        regions_from_mask(mask, mask, downsample=1, mpp=0, classification=None)
    with pytest.raises(InvalidInputError, match="shape"):
        regions_from_mask(mask, np.ones((3, 4)), downsample=1, mpp=1, classification=None)
    with pytest.raises(InvalidInputError, match="class names"):
        argmax_regions(make_heatmap(np.ones((4, 4, 2))), ["a"], mpp=1)


def test_nothing_above_threshold_gives_an_empty_but_valid_export(tmp_path: Path) -> None:
    heatmap = make_heatmap(np.full((10, 10), 0.2))
    for merge in (False, True):
        regions = threshold_regions(
            heatmap, threshold=0.5, mpp=MPP, classification="T", merge=merge
        )
        assert regions == []
    out = tmp_path / "empty.geojson"
    assert write_geojson(out, []).written == 0
    assert json.loads(out.read_text())["features"] == []
