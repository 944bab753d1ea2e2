"""Tissue detection: synthetic images with known answers, and the real slides."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from shapely.geometry import Polygon

from wsi_ai.slide.slide import open_slide
from wsi_ai.tissue import (
    TissueMask,
    detect_tissue,
    detect_tissue_rgb,
    mask_to_polygons,
    plan_read,
)

PINK = (205, 110, 170)  # eosin/hematoxylin mix, OpenCV hue ~160
PURPLE = (120, 70, 150)  # hematoxylin-rich, hue ~135
GLASS = (242, 240, 243)


def glass(h: int = 400, w: int = 400, seed: int = 0) -> np.ndarray:
    """White glass with mild scanner noise."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = GLASS
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def paint(img: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], seed: int = 1) -> None:
    """Paint textured tissue of ``color`` where ``mask`` is set."""
    rng = np.random.default_rng(seed)
    texture = rng.normal(0, 12.0, (*mask.shape, 1))
    tissue = np.clip(np.asarray(color, np.float32) + texture, 0, 255).astype(np.uint8)
    img[mask] = tissue[mask]


def disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# -- synthetic images: the pure-array core --------------------------------------------------
def test_pink_blob_on_glass_is_found_with_its_hole() -> None:
    img = glass()
    ring = disc(400, 400, 200, 200, 120) & ~disc(400, 400, 200, 200, 40)
    paint(img, ring, PINK)
    mask = detect_tissue_rgb(img, "brightfield", mpp=8.0)
    assert mask[200, 200] == np.False_  # the hole (area ~5,000 px >> the hole-fill limit)
    assert mask[200, 120] and mask[200, 290]
    assert not mask[:40, :40].any() and not mask[-40:, -40:].any()
    agreement = (mask == ring).mean()
    assert agreement > 0.98

    polygons = mask_to_polygons(mask, (4.0, 4.0))
    assert len(polygons) == 1
    (poly,) = polygons
    assert poly.is_valid and len(poly.interiors) == 1
    expected = math.pi * (120**2 - 40**2) * 16  # level-0 px² at downsample 4
    assert poly.area == pytest.approx(expected, rel=0.03)
    hole = Polygon(poly.interiors[0])
    assert hole.centroid.x == pytest.approx((200 + 0.5) * 4, abs=4)
    assert hole.area == pytest.approx(math.pi * 40**2 * 16, rel=0.06)


def test_black_border_is_not_tissue() -> None:
    img = glass()
    rng = np.random.default_rng(3)
    img[:, :50] = np.clip(rng.normal(20, 8, (400, 50, 3)), 0, 255).astype(np.uint8)
    # a dark, faintly coloured band (JPEG noise makes dark pixels look saturated)
    img[-40:] = (38, 28, 34)
    blob = disc(400, 400, 220, 180, 90)
    paint(img, blob, PURPLE)
    mask = detect_tissue_rgb(img, "brightfield", mpp=8.0)
    assert not mask[:, :50].any()
    assert not mask[-40:].any()
    assert mask[blob].mean() > 0.97


def test_pen_strokes_on_glass_are_not_tissue() -> None:
    img = glass(400, 600)
    cv2.line(img, (20, 40), (580, 60), (40, 150, 70), 14, cv2.LINE_AA)  # green marker
    cv2.line(img, (30, 360), (570, 330), (35, 70, 175), 14, cv2.LINE_AA)  # blue marker
    cv2.circle(img, (480, 200), 60, (60, 170, 180), 10, cv2.LINE_AA)  # teal ring
    blob = disc(400, 600, 220, 200, 80)
    paint(img, blob, PINK)
    mask = detect_tissue_rgb(img, "brightfield", mpp=8.0)
    assert not mask[20:80].any()
    assert not mask[310:380].any()
    assert not mask[130:270, 410:560].any()
    assert mask[blob].mean() > 0.97


def test_hematoxylin_blue_and_keratin_are_not_taken_for_ink() -> None:
    img = glass()
    left, right = disc(400, 400, 120, 200, 70), disc(400, 400, 290, 200, 70)
    paint(img, left, (70, 55, 135))  # dark blue-purple nuclei, hue ~125
    paint(img, right, (160, 170, 205))  # pale blue keratin, hue ~110, low saturation
    mask = detect_tissue_rgb(img, "brightfield", mpp=8.0)
    assert mask[left].mean() > 0.95
    assert mask[right].mean() > 0.9


def test_empty_slides_give_no_tissue() -> None:
    white = glass(300, 500)
    assert not detect_tissue_rgb(white, "brightfield", mpp=8.0).any()
    assert not detect_tissue_rgb(white, "brightfield").any()  # no MPP: px fallback
    flat = np.full((64, 64, 3), 255, np.uint8)
    assert not detect_tissue_rgb(flat, "brightfield").any()
    rng = np.random.default_rng(5)
    dark = rng.integers(0, 5, (300, 500, 3), dtype=np.uint8)
    assert not detect_tissue_rgb(dark, "fluorescence", mpp=8.0).any()
    assert mask_to_polygons(np.zeros((10, 10), bool), (2.0, 2.0)) == ()


def test_fluorescence_region_against_dark_background() -> None:
    rng = np.random.default_rng(7)
    img = rng.integers(0, 5, (400, 400, 3), dtype=np.uint8)
    region = disc(400, 400, 200, 200, 130)
    img[region, 2] = 14  # autofluorescence
    # nuclei: small bright dots inside the region only
    for _ in range(400):
        x, y = rng.integers(80, 320, 2)
        if region[y, x]:
            cv2.circle(img, (int(x), int(y)), 2, (0, 0, 230), -1)
    mask = detect_tissue_rgb(img, "fluorescence", mpp=2.0)
    assert (mask == region).mean() > 0.97
    assert not mask[:50, :50].any()


def test_small_specks_are_dropped_and_small_holes_filled() -> None:
    img = glass()
    paint(img, disc(400, 400, 50, 50, 4), PINK)  # ~50 px at 8 µm = 3,200 µm² < 10,000 µm²
    blob = disc(400, 400, 250, 250, 100)
    paint(img, blob, PINK)
    img[248:252, 248:252] = GLASS  # 16 px hole = 1,024 µm² < 5,000 µm²
    mask = detect_tissue_rgb(img, "brightfield", mpp=8.0)
    assert not mask[30:70, 30:70].any()
    assert mask[248:252, 248:252].all()
    keep = detect_tissue_rgb(img, "brightfield", mpp=8.0, min_tissue_area_um2=1_000.0)
    assert keep[50, 50]


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        detect_tissue_rgb(np.zeros((10, 10), np.uint8), "brightfield")
    with pytest.raises(ValueError, match="modality"):
        detect_tissue_rgb(np.zeros((10, 10, 3), np.uint8), "darkfield")


# -- polygons and fraction ---------------------------------------------------------------------
def test_polygons_follow_pixel_edges_in_level0() -> None:
    mask = np.zeros((20, 30), bool)
    mask[2:10, 3:12] = True
    (poly,) = mask_to_polygons(mask, (2.0, 3.0))
    assert poly.bounds == (6.0, 6.0, 24.0, 30.0)
    assert poly.area == 9 * 8 * 6.0
    full = mask_to_polygons(np.ones((5, 7), bool), (1.5, 2.5))
    assert len(full) == 1 and full[0].bounds == (0.0, 0.0, 10.5, 12.5)
    line = np.zeros((6, 10), bool)
    line[3] = True  # one pixel wide, touching both edges
    (strand,) = mask_to_polygons(line, (4.0, 4.0))
    assert strand.bounds == (0.0, 12.0, 40.0, 16.0) and strand.area == 160.0


def _mask_fixture(ds: tuple[float, float]) -> TissueMask:
    rng = np.random.default_rng(11)
    mask = rng.random((37, 53)) > 0.4
    return TissueMask(mask, ds, mask_to_polygons(mask, ds), "brightfield", 0)


@pytest.mark.parametrize("ds", [(4.0, 4.0), (3.7, 5.3)])
def test_fraction_is_exact_on_aligned_rectangles(ds: tuple[float, float]) -> None:
    tm = _mask_fixture(ds)
    rng = np.random.default_rng(12)
    c0 = rng.integers(0, 50, 200)
    r0 = rng.integers(0, 34, 200)
    cw = rng.integers(1, 53 - c0 + 1)
    rh = rng.integers(1, 37 - r0 + 1)
    got = tm.fraction(c0 * ds[0], r0 * ds[1], cw * ds[0], rh * ds[1])
    want = [tm.mask[r : r + h, c : c + w].mean() for c, r, w, h in zip(c0, r0, cw, rh, strict=True)]
    assert got.dtype == np.float32 and got.shape == (200,)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_fraction_counts_outside_the_slide_as_non_tissue() -> None:
    tm = _mask_fixture((4.0, 4.0))
    rows, cols = tm.shape
    width, height = cols * 4.0, rows * 4.0
    # right edge: half the rectangle outside
    got = tm.fraction(width - 16, 40, 32, 24)
    assert got == pytest.approx(tm.mask[10:16, -4:].sum() / (8 * 6))
    # top-left corner, three quarters outside
    got = tm.fraction(-20, -20, 40, 40)
    assert got == pytest.approx(tm.mask[:5, :5].sum() / 100)
    assert tm.fraction(width + 10, 0, 50, 50) == 0.0
    assert tm.fraction(0, 0, width, height) == pytest.approx(tm.mask.mean())
    # a rectangle smaller than a mask pixel samples the pixel under its centre
    assert tm.fraction(4 * 7 + 1, 4 * 9 + 1, 1, 1) == float(tm.mask[9, 7])
    with pytest.raises(ValueError, match="positive"):
        tm.fraction(0, 0, 0, 10)


# -- real slides ------------------------------------------------------------------------------
def _check_polygons(tm: TissueMask, dims: tuple[int, int]) -> None:
    assert tm.polygons, "no tissue polygons"
    for poly in tm.polygons:
        assert isinstance(poly, Polygon) and poly.is_valid and poly.area > 0
        x0, y0, x1, y1 = poly.bounds
        assert x0 >= 0 and y0 >= 0 and x1 <= dims[0] + 1e-6 and y1 <= dims[1] + 1e-6
    assert tm.slide_dimensions == pytest.approx(dims)
    total = sum(p.area for p in tm.polygons) / (dims[0] * dims[1])
    assert total == pytest.approx(tm.tissue_fraction, abs=0.03)


@pytest.fixture(scope="module")
def cmu_tissue(cmu_small: Path) -> TissueMask:
    with open_slide(cmu_small) as slide:
        return detect_tissue(slide)


def test_cmu_small_region(cmu_tissue: TissueMask) -> None:
    tm = cmu_tissue
    assert tm.modality == "brightfield" and tm.level == 0
    assert 0.25 < tm.tissue_fraction < 0.55  # a tissue strip on glass
    assert tm.fraction(100, 100, 500, 600) == 0.0  # glass, top-left
    assert tm.fraction(800, 2400, 300, 300) > 0.95  # epidermis/dermis, bottom centre
    _check_polygons(tm, (2220, 2967))
    # 0.499 µm/px at target 8 µm/px would be only 185 px tall: the floor keeps 512 px
    assert max(tm.shape) == 512


def test_cmu_annotations_carry_area_in_um2(cmu_tissue: TissueMask) -> None:
    annotations = cmu_tissue.to_annotations()
    assert len(annotations) == len(cmu_tissue.polygons)
    first = annotations[0]
    assert first.classification == "Tissue"
    assert first.geometry is cmu_tissue.polygons[0]
    assert first.measurements["Area µm^2"] == pytest.approx(first.geometry.area * 0.499**2)
    px = cmu_tissue.to_annotations("Region", mpp=1.0)
    assert px[0].measurements["Area µm^2"] == pytest.approx(first.geometry.area)


def test_cmu_tissue_geojson_round_trip(cmu_tissue: TissueMask, tmp_path: Path) -> None:
    geojson = pytest.importorskip("wsi_ai.export.geojson")
    qupath = pytest.importorskip("wsi_ai.annotations.qupath")
    out = tmp_path / "tissue.geojson"
    geojson.write_geojson(out, cmu_tissue.to_annotations())
    back = qupath.read_qupath_geojson(out)
    assert len(back) == len(cmu_tissue.polygons)
    assert back[0].classification == "Tissue"
    assert back[0].geometry.area == pytest.approx(cmu_tissue.polygons[0].area, rel=1e-4)


def test_tcga_without_mpp_uses_the_pixel_fallback(shared: Callable[[str], Path]) -> None:
    with open_slide(shared("slides/tcga-cr-7395-01a-01-ts1.svs")) as slide:
        assert slide.mpp is None
        assert plan_read(slide, 8.0) == (1, None)  # 2221 px: already near the 2,048 px aim
        tm = detect_tissue(slide)
    assert tm.level == 1 and tm.mpp is None
    assert 0.45 < tm.tissue_fraction < 0.8
    assert tm.fraction(0, 0, 400, 400) == 0.0  # glass, top-left corner
    assert tm.fraction(1800, 1600, 400, 400) > 0.95  # tumour, centre-left
    _check_polygons(tm, (4443, 3567))
    annotations = tm.to_annotations()
    assert set(annotations[0].measurements) == {"Area px^2"}


def test_fluorescence_ndpi(shared: Callable[[str], Path]) -> None:
    with open_slide(shared("slides/ndpi-fluorescence-dapi.ndpi")) as slide:
        tm = detect_tissue(slide)
        dims = slide.dimensions
    assert tm.modality == "fluorescence"
    assert tm.level > 0  # never level 0 of a pyramid
    assert 0.5 < tm.tissue_fraction < 0.95
    assert tm.fraction(0, 0, 300, 300) == 0.0  # dark background, top-left
    assert tm.fraction(2200, 3400, 400, 400) > 0.95  # dense nuclei, bottom centre
    _check_polygons(tm, dims)


def test_method_overrides_the_modality(shared: Callable[[str], Path]) -> None:
    with open_slide(shared("slides/ndpi-fluorescence-dapi.ndpi")) as slide:
        forced = detect_tissue(slide, method="brightfield")
        # DAPI blue on black is "coloured" too, but the darker tissue between nuclei is lost
        assert forced.modality == "brightfield"
        assert forced.tissue_fraction < detect_tissue(slide).tissue_fraction
        with pytest.raises(ValueError, match="method"):
            detect_tissue(slide, method="otsu")


def test_skin_striped_tiff(skin_striped: Path) -> None:
    with open_slide(skin_striped) as slide:
        tm = detect_tissue(slide)
    assert tm.modality == "brightfield" and tm.shape == (960, 1280)
    assert 0.65 < tm.tissue_fraction < 0.9
    assert tm.fraction(0, 0, 1280, 100) < 0.02  # background above the epidermis
    assert tm.fraction(0, 800, 1280, 160) > 0.9  # dermis (white gaps between fibres)
    _check_polygons(tm, (1280, 960))


def test_explicit_level_and_shrinking_a_single_level_slide(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide:
        # one level only: it is shrunk while read, never used at full size
        level, max_size = plan_read(slide, 8.0)
        assert level == 0 and max_size == 512
        tm = detect_tissue(slide, target_mpp=2.0, min_tissue_area_um2=1_000.0)
    assert max(tm.shape) == math.ceil(2967 / (2.0 / 0.499))
    assert 0.25 < tm.tissue_fraction < 0.55


def test_grey_and_black_ink_are_not_tissue() -> None:
    img = glass(400, 600)
    cv2.line(img, (20, 50), (580, 70), (62, 62, 68), 16, cv2.LINE_AA)  # dark grey marker
    cv2.line(img, (20, 350), (580, 330), (20, 20, 24), 16, cv2.LINE_AA)  # black marker
    blob = disc(400, 600, 300, 200, 80)
    paint(img, blob, PINK)
    mask = detect_tissue_rgb(img, "brightfield", mpp=8.0)
    assert not mask[30:90].any() and not mask[310:370].any()
    assert mask[blob].mean() > 0.97


def test_camelyon_dicom(shared: Callable[[str], Path]) -> None:
    with open_slide(shared("slides/dicom/camelyon-he-multiframe.dcm")) as slide:
        tm = detect_tissue(slide)  # one level at about 29 µm/px: coarser than the target
        dims = slide.dimensions
    assert tm.level == 0 and tm.shape == (700, 1152)
    assert 0.15 < tm.tissue_fraction < 0.45  # two lymph-node sections and their fat
    assert tm.fraction(0, 0, 50, 700) == 0.0 and tm.fraction(1100, 0, 52, 700) == 0.0
    _check_polygons(tm, dims)


# make_slide's pen colour for these seeds: 0 green, 1 dark grey, 4 blue
@pytest.mark.parametrize("seed", [0, 1, 4])
def test_generated_slide_with_pen_and_dark_border(
    seed: int, tmp_path: Path, cmu_small: Path, skin_striped: Path
) -> None:
    """Real tissue mosaicked on glass, with a pen stroke and a dark left edge: ground truth."""
    make_slide = pytest.importorskip("benchmarks.make_slide").make_slide
    spec = make_slide(
        tmp_path / "gen.svs",
        (4000, 3000),
        seed=seed,
        sources=[cmu_small, skin_striped],
        pen_marks=True,
        dark_border=True,
    )
    with open_slide(spec.path) as slide:
        tm = detect_tissue(slide)
    ds = spec.mask_downsample
    rows, cols = spec.tissue_mask.shape
    yy, xx = np.mgrid[:rows, :cols]
    ours = tm.fraction(xx * ds, yy * ds, ds, ds) > 0.5
    truth, artefact = spec.tissue_mask, spec.artefact_mask
    iou = (ours & truth).sum() / (ours | truth).sum()
    assert iou > 0.85
    on_glass = artefact & ~truth
    assert on_glass.any()
    assert (ours & on_glass).sum() <= 0.02 * on_glass.sum()
