"""Slide QC: the bundled CMU slide, synthetic blurred / inked / bubbled copies of its tissue,
the pure-array cores, and cohort outliers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from shapely.geometry import LineString, Point
from shapely.ops import unary_union

from wsi_ai.errors import InvalidInputError, ParameterError
from wsi_ai.export.geojson import dumps
from wsi_ai.qc import (
    BLUR_CLASS,
    BUBBLE_CLASS,
    PEN_CLASS,
    SlideQC,
    bubble_mask,
    cohort_outliers,
    macenko,
    pen_mask,
    qc_annotations,
    sample_patches,
    slide_qc,
)
from wsi_ai.qc.stain import RUIFROK_E, RUIFROK_H, angle_deg
from wsi_ai.slide import open_slide
from wsi_ai.tiling import grid
from wsi_ai.tissue import detect_tissue

# A tissue-rich crop of CMU-1 (level-0 x, y, width, height) for the synthetic slides.
CROP = (600, 800, 1280, 1792)
MPP = 0.499
PEN_STROKE = ((100, 300), (700, 700), (1000, 1400), (600, 1700))  # level-0 px of the crop
PEN_WIDTH = 50
BUBBLE_CENTRE, BUBBLE_RADIUS, BUBBLE_RIM = (640, 900), 300, 24


def run_qc(path: Path, **kwargs: int) -> tuple[SlideQC, int]:
    """(QC of the slide at ``path``, its grid's patch count): tissue, 224 px grid at 0.5."""
    with open_slide(path) as slide:
        tissue = detect_tissue(slide)
        patches = grid(slide, mpp=0.5, size=224, tissue=tissue)
        return slide_qc(slide, tissue, patches, **kwargs), len(patches)


def write_tiff(path: Path, rgb: np.ndarray, mpp: float = MPP) -> Path:
    """A tiled RGB TIFF with its MPP in the resolution tags (pixels per cm)."""
    tifffile.imwrite(
        path,
        rgb,
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
    )
    return path


@pytest.fixture(scope="module")
def cmu(cmu_small: Path) -> tuple[SlideQC, int]:
    return run_qc(cmu_small)


@pytest.fixture(scope="module")
def crop(cmu_small: Path) -> np.ndarray:
    with open_slide(cmu_small) as slide:
        return slide.read_region(CROP[:2], 0, CROP[2:])


# -- the real slide ----------------------------------------------------------------------------
def test_cmu_measures_are_plausible(cmu: tuple[SlideQC, int], cmu_small: Path) -> None:
    qc, n_patches = cmu
    assert qc.modality == "brightfield"
    with open_slide(cmu_small) as slide:
        tissue = detect_tissue(slide)
    expected_mm2 = tissue.mask.sum() * np.prod(tissue.downsample) * MPP * MPP / 1e6
    assert qc.tissue_area_mm2 == pytest.approx(expected_mm2)
    assert qc.tissue_area_mm2 is not None and 0.3 < qc.tissue_area_mm2 < 1.5  # measured 0.638 mm²
    assert qc.patches_sampled == n_patches == 49  # fewer than max_patches: all of them
    assert qc.blur_fraction == 0.0 and qc.patches_blurry == 0
    assert qc.laplacian_var_median is not None and qc.laplacian_var_median > 500
    assert qc.pen_fraction is not None and qc.pen_fraction < 0.01
    assert qc.bubble_fraction == 0.0
    assert qc.stain_vectors is not None and qc.stain_max_concentrations is not None
    h, e = qc.stain_vectors["hematoxylin"], qc.stain_vectors["eosin"]
    assert np.linalg.norm(h) == pytest.approx(1) and np.linalg.norm(e) == pytest.approx(1)
    assert h[0] > e[0]  # Macenko's convention: hematoxylin has the larger red OD
    assert angle_deg(h, RUIFROK_H) < 25 and angle_deg(e, RUIFROK_E) < 25  # measured 4 and 17
    assert qc.stain_h_angle == pytest.approx(angle_deg(h, RUIFROK_H))
    assert all(0.5 < c < 10 for c in qc.stain_max_concentrations.values())
    assert qc.background_rgb is not None and min(qc.background_rgb) > 230
    assert not [a for a in qc.annotations if a.classification in (PEN_CLASS, BUBBLE_CLASS)]


def test_as_dict_is_json_ready_and_rounded(cmu: tuple[SlideQC, int]) -> None:
    qc, _ = cmu
    d = qc.as_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    assert d["slide"] == "CMU-1-Small-Region.svs"
    assert set(d) >= {
        "tissue_area_mm2",
        "blur_fraction",
        "pen_fraction",
        "bubble_fraction",
        "stain_vectors",
        "stain_max_concentrations",
        "stain_h_angle",
        "patches_sampled",
    }
    assert d["stain_vectors"]["hematoxylin"] == [
        round(c, 4) for c in d["stain_vectors"]["hematoxylin"]
    ]
    assert d["tissue_area_mm2"] == round(d["tissue_area_mm2"], 4)
    assert "annotations" not in d and "pen_mask" not in d


def test_without_patches_the_stain_comes_from_the_low_resolution_tissue(
    cmu_small: Path,
) -> None:
    qc, _ = run_qc(cmu_small, max_patches=0)
    assert qc.patches_sampled == 0 and qc.blur_fraction is None
    assert qc.stain_vectors is not None
    assert angle_deg(qc.stain_vectors["hematoxylin"], RUIFROK_H) < 25
    assert angle_deg(qc.stain_vectors["eosin"], RUIFROK_E) < 25


def test_parameters_are_checked(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide:
        tissue = detect_tissue(slide)
        patches = grid(slide, mpp=0.5, size=224, tissue=tissue)
        with pytest.raises(ParameterError, match="max_patches"):
            slide_qc(slide, tissue, patches, max_patches=-1)
        with pytest.raises(ParameterError, match="blur_threshold"):
            slide_qc(slide, tissue, patches, blur_threshold=math.nan)


# -- sampling ----------------------------------------------------------------------------------
def test_sampling_is_deterministic_and_spread_over_the_slide() -> None:
    gy, gx = np.mgrid[:40, :60]
    table = pd.DataFrame(
        {"x": gx.ravel() * 224, "y": gy.ravel() * 224, "width": 224, "height": 224}
    )
    picks = sample_patches(table, 64, seed=0)
    assert len(picks) == len(set(picks)) == 64
    np.testing.assert_array_equal(picks, sample_patches(table, 64, seed=0))
    assert not np.array_equal(picks, sample_patches(table, 64, seed=1))
    # every quarter of the slide gets about its share (16 each)
    x, y = table["x"].to_numpy()[picks], table["y"].to_numpy()[picks]
    quarters = np.bincount((x >= 30 * 224) * 2 + (y >= 20 * 224), minlength=4)
    assert quarters.min() >= 12, quarters
    np.testing.assert_array_equal(sample_patches(table.iloc[:10], 64), np.arange(10))
    assert len(sample_patches(table, 0)) == 0


# -- synthetic slides --------------------------------------------------------------------------
def test_a_blurred_copy_is_out_of_focus(crop: np.ndarray, tmp_path: Path) -> None:
    path = write_tiff(tmp_path / "blurred.tif", cv2.GaussianBlur(crop, (0, 0), 3))
    qc, n = run_qc(path)
    assert qc.patches_sampled == n > 10
    assert qc.blur_fraction is not None and qc.blur_fraction >= 0.9  # measured 1.0
    blur = [a for a in qc_annotations(qc) if a.classification == BLUR_CLASS]
    assert len(blur) == qc.patches_blurry
    assert all(a.geometry.area == pytest.approx(224 * 224, rel=0.02) for a in blur)
    assert all(a.measurements["Laplacian variance"] < qc.blur_threshold for a in blur)


def test_green_pen_strokes_are_found(crop: np.ndarray, tmp_path: Path) -> None:
    inked = crop.copy()
    cv2.polylines(inked, [np.array(PEN_STROKE, np.int32)], False, (40, 150, 70), PEN_WIDTH)
    qc, _ = run_qc(write_tiff(tmp_path / "pen.tif", inked))
    assert qc.pen_fraction is not None and 0.02 < qc.pen_fraction < 0.2  # measured 0.060
    assert qc.bubble_fraction == 0.0 and qc.blur_fraction == 0.0
    pens = [a for a in qc.annotations if a.classification == PEN_CLASS]
    assert pens and all("Area µm^2" in a.measurements for a in pens)
    found = unary_union([a.geometry for a in pens])
    stroke = LineString(PEN_STROKE).buffer(PEN_WIDTH / 2)
    assert found.intersection(stroke).area > 0.6 * stroke.area
    assert found.difference(LineString(PEN_STROKE).buffer(PEN_WIDTH)).area < 0.1 * found.area
    # ink is kept out of the stain estimate
    assert qc.stain_vectors is not None
    assert angle_deg(qc.stain_vectors["hematoxylin"], RUIFROK_H) < 25
    # QuPath sees "QC: pen" as its own (derived) class
    feature = json.loads(dumps(pens))["features"][0]
    assert feature["properties"]["classification"]["names"] == ["QC", "pen"]


def test_an_air_bubble_is_found(crop: np.ndarray, tmp_path: Path) -> None:
    img = crop.astype(np.float32)
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    d = np.hypot(xx - BUBBLE_CENTRE[0], yy - BUBBLE_CENTRE[1])
    inside = d < BUBBLE_RADIUS
    img[inside] = img[inside] * 0.7 + 255 * 0.3  # contents a little brighter
    img[(d >= BUBBLE_RADIUS) & (d < BUBBLE_RADIUS + BUBBLE_RIM)] = (95, 95, 100)  # grey rim
    qc, _ = run_qc(write_tiff(tmp_path / "bubble.tif", img.astype(np.uint8)))
    assert qc.bubble_fraction is not None and qc.bubble_fraction > 0.05  # measured 0.168
    assert qc.pen_fraction == 0.0
    bubbles = [a for a in qc.annotations if a.classification == BUBBLE_CLASS]
    assert len(bubbles) == 1
    disc = Point(BUBBLE_CENTRE).buffer(BUBBLE_RADIUS + BUBBLE_RIM)
    geom = bubbles[0].geometry
    assert geom.contains(Point(BUBBLE_CENTRE))
    assert geom.intersection(disc).area / geom.union(disc).area > 0.8


# -- pure-array cores --------------------------------------------------------------------------
def _pink(h: int = 300, w: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.asarray((205, 110, 170), np.float32) + rng.normal(0, 10, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_bubble_rule_wants_a_grey_closed_outline() -> None:
    mpp = 4.0
    clean = _pink()
    assert not bubble_mask(clean, mpp).any()
    ringed = clean.copy()
    cv2.circle(ringed, (150, 150), 60, (200, 200, 200), -1)
    cv2.circle(ringed, (150, 150), 60, (100, 100, 104), 3)
    found = bubble_mask(ringed, mpp)
    assert found[150, 150] and not found[20, 20]
    assert found.sum() == pytest.approx(math.pi * 62**2, rel=0.15)
    opened = ringed.copy()
    cv2.ellipse(opened, (150, 150), (60, 60), 0, 0, 120, (200, 200, 200), 5)  # a third gone
    assert not bubble_mask(opened, mpp).any()
    inked = clean.copy()
    cv2.circle(inked, (150, 150), 60, (200, 200, 200), -1)
    cv2.circle(inked, (150, 150), 60, (20, 20, 22), 3)  # a black pen circle
    assert not bubble_mask(inked, mpp).any()
    assert pen_mask(inked, mpp).any()


def test_pen_rule_leaves_h_and_e_alone() -> None:
    img = _pink()
    img[100:200, 100:200] = (120, 70, 150)  # hematoxylin-rich
    img[:30, :30] = (35, 30, 60)  # the darkest nuclei
    assert not pen_mask(img, 4.0).any()
    img[140:160, 20:280] = (60, 100, 200)  # blue ink, 80 µm x 1 mm
    found = pen_mask(img, 4.0)
    assert found[150, 150] and found.sum() == pytest.approx(20 * 260, rel=0.1)
    framed = _pink()
    framed[:, :25] = (30, 30, 32)  # a dark slide frame along the left edge, 100 µm thick
    framed[60:66, 25:280] = (30, 30, 32)  # a black stroke, 24 µm wide, running into it
    found = pen_mask(framed, 4.0)
    assert not found[:, :25].any()
    assert found[63, 40:280].all()


def test_a_blank_slide_has_nothing_to_measure(tmp_path: Path) -> None:
    qc, n = run_qc(write_tiff(tmp_path / "glass.tif", np.full((1024, 1024, 3), 242, np.uint8)))
    assert n == 0 and qc.patches_sampled == 0
    assert qc.tissue_area_mm2 == 0.0
    assert qc.blur_fraction is qc.pen_fraction is qc.bubble_fraction is qc.stain_vectors is None
    assert json.loads(json.dumps(qc.as_dict(), allow_nan=False))["stain_h_angle"] is None


def test_macenko_recovers_the_vectors_it_was_given() -> None:
    rng = np.random.default_rng(0)
    h = np.asarray(RUIFROK_H) / np.linalg.norm(RUIFROK_H)
    e = np.asarray(RUIFROK_E) / np.linalg.norm(RUIFROK_E)
    conc = rng.gamma(2.0, 0.4, size=(20_000, 2))
    conc[:5_000, 1] *= 0.05  # pure hematoxylin
    conc[5_000:10_000, 0] *= 0.05  # pure eosin
    od = conc @ np.stack([h, e])
    pixels = np.clip(240 * np.exp(-od), 0, 255).round().astype(np.uint8)
    est = macenko(pixels, (240.0, 240.0, 240.0))
    assert est is not None
    assert angle_deg(est.hematoxylin, h) < 5 and angle_deg(est.eosin, e) < 5
    assert est.max_hematoxylin == pytest.approx(np.percentile(conc[:, 0], 99), rel=0.25)
    assert macenko(np.full((5_000, 3), 245, np.uint8)) is None  # glass only


# -- cohort ------------------------------------------------------------------------------------
def _rows(n: int = 8, seed: int = 0) -> list[dict[str, object]]:
    """``n`` unremarkable slides: measures spread evenly over a normal range, in random order."""
    rng = np.random.default_rng(seed)
    area, bubbles, h_max, e_max = (
        rng.permutation(np.linspace(lo, hi, n))
        for lo, hi in ((72, 88), (0, 0.002), (1.8, 2.0), (1.1, 1.3))
    )
    rows = []
    for i in range(n):
        tilt = rng.normal(0, 0.01, 3)
        rows.append(
            {
                "slide": f"s{i}.svs",
                "tissue_area_mm2": float(area[i]),
                "blur_fraction": float(rng.choice([0.0, 0.0, 1 / 64])),
                "pen_fraction": 0.0,
                "bubble_fraction": float(bubbles[i]),
                "stain_vectors": {
                    "hematoxylin": list(np.asarray(RUIFROK_H) + tilt),
                    "eosin": list(np.asarray(RUIFROK_E) - tilt),
                },
                "stain_max_concentrations": {
                    "hematoxylin": float(h_max[i]),
                    "eosin": float(e_max[i]),
                },
            }
        )
    return rows


def test_cohort_flags_a_planted_outlier() -> None:
    rows = _rows()
    assert cohort_outliers(rows) == [[]] * 8
    rows[5]["blur_fraction"] = 0.4
    rows[5]["stain_vectors"] = {"hematoxylin": [0.3, 0.8, 0.52], "eosin": list(RUIFROK_E)}
    rows[2]["tissue_area_mm2"] = 400.0
    rows[6]["pen_fraction"] = 0.1  # the others are all 0: MAD is 0
    flags = cohort_outliers(rows)
    assert flags[5] == ["blur_fraction", "stain_h_drift"]
    assert flags[2] == ["tissue_area_mm2"]
    assert flags[6] == ["pen_fraction"]
    assert all(f == [] for i, f in enumerate(flags) if i not in (2, 5, 6))


def test_cohort_of_identical_rows_flags_nothing(cmu: tuple[SlideQC, int]) -> None:
    rows = [cmu[0].as_dict() for _ in range(8)]
    assert cohort_outliers(rows) == [[]] * 8
    # MAD is 0 and the one difference is too small to matter (below z times the floor)
    rows[3]["pen_fraction"] = 0.01
    assert cohort_outliers(rows) == [[]] * 8
    rows[3]["pen_fraction"] = 0.05
    assert cohort_outliers(rows)[3] == ["pen_fraction"]


def test_cohort_reports_missing_values_and_needs_five_slides() -> None:
    rows = _rows()
    rows[1]["blur_fraction"] = math.nan
    rows[2]["pen_fraction"] = None
    del rows[3]["bubble_fraction"]
    rows[4]["stain_vectors"] = None
    rows[7] = {"slide": "fluo.ndpi", "modality": "fluorescence", "tissue_area_mm2": 80.0}
    flags = cohort_outliers(rows)
    assert flags[1] == ["blur_fraction (missing)"]
    assert flags[2] == ["pen_fraction (missing)"]
    assert flags[3] == ["bubble_fraction (missing)"]
    assert flags[4] == ["stain_h_drift (missing)", "stain_e_drift (missing)"]
    assert flags[7] == []  # brightfield measures are not expected of a fluorescence slide
    assert flags[0] == flags[5] == flags[6] == []
    few = _rows(4)
    few[0]["tissue_area_mm2"] = 1e6
    few[1]["blur_fraction"] = math.inf
    assert cohort_outliers(few) == [[], ["blur_fraction (missing)"], [], []]
    assert cohort_outliers(_rows(), keys=("stain_h_angle",)) == [[]] * 8  # no row has it


def test_cohort_refuses_what_is_not_a_number() -> None:
    rows = _rows()
    rows[0]["blur_fraction"] = "0.1"
    with pytest.raises(InvalidInputError, match=r"row 0: blur_fraction"):
        cohort_outliers(rows)
    with pytest.raises(ParameterError, match="keys"):
        cohort_outliers(_rows(), keys="blur_fraction")
    with pytest.raises(ParameterError, match="z must"):
        cohort_outliers(_rows(), z=0)
