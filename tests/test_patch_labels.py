"""Patch class fractions and labels: exact answers on hand-made geometry, then a real CAMELYON16
lesion annotation where the fractions must add back up to the lesion area."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, Point, Polygon, box

from wsi_ai.annotations import Annotation, patch_class_fractions, patch_labels, read_asap_xml
from wsi_ai.errors import InvalidInputError


def _grid(x0: float, y0: float, nx: int, ny: int, size: float) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(x0 + size * np.arange(nx), y0 + size * np.arange(ny))
    return gx.ravel().astype(float), gy.ravel().astype(float)


def test_fractions_are_exact_on_hand_made_geometry():
    annotations = [
        Annotation(geometry=box(0, 0, 100, 100), classification="tumor"),
        Annotation(geometry=box(50, 0, 150, 100), classification="stroma"),
        # half of the patch at (150, 0): the triangle under its diagonal
        Annotation(geometry=Polygon([(150, 0), (200, 0), (200, 50)]), classification="necrosis"),
    ]
    x, y = _grid(0, 0, 4, 2, 50)  # 4 x 2 patches of 50 px over [0, 200] x [0, 100]
    fractions, names = patch_class_fractions(annotations, x, y, 50, 50)
    assert names == ["necrosis", "stroma", "tumor"]
    assert fractions.dtype == np.float32 and fractions.shape == (8, 3)
    expected_row = np.array(
        [[0, 0, 1], [0, 1, 1], [0, 1, 0], [0.5, 0, 0]], dtype=np.float32
    )  # per column of patches; both rows of the grid are the same except necrosis
    np.testing.assert_allclose(fractions[:4], expected_row, atol=1e-6)
    np.testing.assert_allclose(fractions[4:], expected_row * [0, 1, 1], atol=1e-6)


def test_same_class_overlaps_are_not_counted_twice_and_classes_pick_columns():
    annotations = [
        Annotation(geometry=box(0, 0, 10, 10), classification="a"),
        Annotation(geometry=box(0, 0, 10, 10), classification="a"),  # duplicate
        Annotation(geometry=box(5, 0, 10, 10), classification="a"),  # inside the first
        Annotation(geometry=box(0, 0, 10, 10), classification=None),  # unclassified: ignored
        Annotation(geometry=Point(5, 5), classification="b"),  # no area
        Annotation(geometry=LineString([(0, 0), (10, 10)]), classification="b"),
    ]
    fractions, names = patch_class_fractions(annotations, [0, 5], [0, 0], [10, 10], 10, ["c", "a"])
    assert names == ["c", "a"]
    np.testing.assert_allclose(fractions, [[0, 1], [0, 0.5]])


def test_invalid_input_geometry_is_made_valid_before_union():
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # two triangles of area 25
    fractions, _ = patch_class_fractions([Annotation(bowtie, "x")], [0], [0], 10, 10)
    assert fractions[0, 0] == pytest.approx(0.5)


def test_splitting_big_polygons_does_not_change_the_answer():
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 2 * np.pi, 500))
    r = 300 * (1 + 0.2 * rng.uniform(-1, 1, 500))
    blob = Polygon(np.c_[500 + r * np.cos(t), 500 + r * np.sin(t)])
    blob = shapely.make_valid(blob)
    x, y = _grid(100, 100, 16, 16, 50)  # covers the blob (radius <= 360 around 500)
    coarse, _ = patch_class_fractions([Annotation(blob, "k")], x, y, 50, 50, max_vertices=10**9)
    fine, _ = patch_class_fractions([Annotation(blob, "k")], x, y, 50, 50, max_vertices=8)
    np.testing.assert_allclose(fine, coarse, atol=1e-5)
    assert float(coarse.sum()) * 2500 == pytest.approx(blob.area, rel=1e-6)


def test_labels_threshold_priority_and_ties():
    names = ["tissue", "tumor", "necrosis"]
    fractions = np.array(
        [
            [1.0, 0.6, 0.0],  # tumour inside tissue
            [0.3, 0.2, 0.1],  # nothing reaches the threshold
            [0.0, 0.5, 0.5],  # a tie
            [0.7, 0.0, 0.9],
            [0.0, 0.0, 0.0],
        ]
    )
    assert patch_labels(fractions, names).tolist() == [0, -1, 1, 2, -1]  # largest wins
    with_priority = patch_labels(fractions, names, priority=["tumor", "necrosis"])
    assert with_priority.tolist() == [1, -1, 1, 2, -1]
    assert patch_labels(fractions, names, priority=["necrosis"]).tolist() == [0, -1, 2, 2, -1]
    assert patch_labels(fractions, names, threshold=0.25).tolist() == [0, 0, 1, 2, -1]
    assert patch_labels(fractions, names, threshold=0.0).tolist() == [0, 0, 1, 2, -1]
    assert patch_labels(fractions, names).dtype == np.int64


def test_labels_reject_bad_arguments():
    fr = np.zeros((2, 2))
    with pytest.raises(InvalidInputError, match="unknown class"):
        patch_labels(fr, ["a", "b"], priority=["c"])
    with pytest.raises(InvalidInputError, match="shape"):
        patch_labels(fr, ["a"])
    with pytest.raises(InvalidInputError, match="threshold"):
        patch_labels(fr, ["a", "b"], threshold=1.5)
    with pytest.raises(InvalidInputError, match="positive"):
        patch_class_fractions([], [0], [0], 0, 10)


def test_empty_inputs():
    fractions, names = patch_class_fractions([], np.zeros(3), np.zeros(3), 10, 10)
    assert fractions.shape == (3, 0) and names == []
    assert patch_labels(fractions, names).tolist() == [-1, -1, -1]
    fractions, names = patch_class_fractions([Annotation(box(0, 0, 1, 1), "a")], [], [], 10, 10)
    assert fractions.shape == (0, 1)


def test_real_camelyon_lesions_add_up_and_match_direct_intersection(shared):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file has self-intersecting lesions (repaired)
        lesions = read_asap_xml(shared("annotations/asap_xml/camelyon16_tumor_085.xml"))
    union = shapely.union_all([a.geometry for a in lesions])
    minx, miny, maxx, maxy = union.bounds
    size = 512.0
    nx, ny = int((maxx - minx) // size) + 1, int((maxy - miny) // size) + 1
    x, y = _grid(minx, miny, nx, ny, size)
    fractions, names = patch_class_fractions(lesions, x, y, size, size)
    assert names == ["metastasis"]
    # the grid tiles the lesions' bounding box: covered areas add back up to the lesion area
    assert float(fractions[:, 0].astype(np.float64).sum()) * size**2 == pytest.approx(
        union.area, rel=1e-6
    )
    rng = np.random.default_rng(0)
    pick = rng.choice(np.flatnonzero(fractions[:, 0] > 0), 200, replace=False)
    boxes = shapely.box(x[pick], y[pick], x[pick] + size, y[pick] + size)
    direct = shapely.area(shapely.intersection(boxes, union)) / size**2
    np.testing.assert_allclose(fractions[pick, 0], direct, atol=1e-6)
    labels = patch_labels(fractions, names, threshold=0.5)
    assert set(np.unique(labels)) == {-1, 0}
    assert (labels == 0).sum() == (fractions[:, 0] >= 0.5).sum()
