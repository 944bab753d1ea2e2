"""Heatmap pictures, the heatmap OME-Zarr, and the hematoxylin score that feeds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr_models import v04, v05
from skimage.color import rgb2hed

from wsi_ai.errors import InvalidInputError, MissingMppError
from wsi_ai.export.heatmap import (
    COLORMAPS,
    colorbar,
    colorize,
    colormap_lut,
    overlay,
    resample_to_thumbnail,
    value_range,
    write_heatmap_ome_zarr,
)
from wsi_ai.score.he import hematoxylin_density, hematoxylin_map, patch_hematoxylin
from wsi_ai.slide import open_slide
from wsi_ai.stitch import Heatmap, stitch


def heatmap_of(canvas: np.ndarray, ds: float, slide_size: tuple[int, int]) -> Heatmap:
    canvas = canvas.astype(np.float32).reshape(*canvas.shape[:2], -1)
    coverage = np.isfinite(canvas).all(axis=2)
    return Heatmap(canvas, coverage, ds, None, slide_size, "mean", None, float("nan"), 0, 0)


# ---------------------------------------------------------------- colour


@pytest.mark.parametrize("name", sorted(COLORMAPS))
def test_colormap_passes_through_its_anchors_and_brightens(name: str) -> None:
    lut = colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    first, last = COLORMAPS[name][0], COLORMAPS[name][-1]
    assert tuple(lut[0]) == tuple(int(first[i : i + 2], 16) for i in (1, 3, 5))
    assert tuple(lut[-1]) == tuple(int(last[i : i + 2], 16) for i in (1, 3, 5))
    luminance = lut @ np.array([0.2126, 0.7152, 0.0722])
    assert (np.diff(luminance) > -1.0).all()  # perceptual maps brighten monotonically
    assert luminance[-1] - luminance[0] > 150


def test_colorize_clips_and_makes_no_coverage_transparent() -> None:
    values = np.array([[0.0, 0.5, 1.0], [np.nan, -3.0, 7.0]])
    rgba = colorize(values, 0.0, 1.0)
    lut = colormap_lut()
    assert (rgba[0, 0, :3] == lut[0]).all() and (rgba[0, 2, :3] == lut[-1]).all()
    assert (rgba[1, 1, :3] == lut[0]).all() and (rgba[1, 2, :3] == lut[-1]).all()
    assert rgba[1, 0, 3] == 0 and (rgba[[0, 0, 0, 1, 1], [0, 1, 2, 1, 2], 3] == 255).all()
    flat = colorize(np.full((2, 2), 3.0), 3.0, 3.0)
    assert (flat[..., :3] == lut[128]).all()
    assert value_range(values) == (-3.0, 7.0)
    assert value_range(values, vmin=0.0) == (0.0, 7.0)
    with pytest.raises(InvalidInputError):
        value_range(values, vmin=2.0, vmax=1.0)


def test_resample_follows_level0_pixel_mapping() -> None:
    # slide 1000 x 600 level-0 px, canvas at ds 100 -> 10 x 6, each canvas px its own value
    canvas = np.arange(60, dtype=np.float32).reshape(6, 10)
    canvas[0, 0] = np.nan
    hm = heatmap_of(canvas, 100.0, (1000, 600))
    up = resample_to_thumbnail(hm, (60, 100))  # 10 level-0 px per thumbnail px
    for i, j in [(0, 15), (15, 37), (59, 99), (31, 50), (9, 9)]:
        centre_x, centre_y = (j + 0.5) * 10, (i + 0.5) * 10
        np.testing.assert_equal(up[i, j], canvas[int(centre_y // 100), int(centre_x // 100)])
    assert np.isnan(up[:10, :10]).all() and not np.isnan(up[10:, 10:]).any()
    down = resample_to_thumbnail(hm, (3, 5))  # 200 level-0 px: 2 x 2 canvas px averaged
    assert down[1, 2] == pytest.approx(canvas[2:4, 4:6].mean())
    assert down[0, 0] == pytest.approx(np.nanmean(canvas[0:2, 0:2]))  # NaN-aware


def test_overlay_blends_only_where_covered_and_adds_a_colorbar() -> None:
    thumb = np.full((200, 150, 3), 240, np.uint8)
    values = np.full((200, 150), np.nan)
    values[50:100, 20:80] = 1.0
    image = overlay(thumb, values, 0.0, 1.0, alpha=0.5, label="tumour")
    assert image.shape[0] == 200 and image.shape[1] > 150
    assert (image[:50, :150] == 240).all()  # uncovered: the thumbnail as it was
    expected = np.round(240 * 0.5 + colormap_lut()[-1] * 0.5)
    assert np.abs(image[75, 50].astype(int) - expected).max() <= 1
    bar = colorbar(200, 0.0, 1.0, label="tumour")
    assert bar.shape[0] == 200 and (bar != 255).any()
    with pytest.raises(InvalidInputError):
        overlay(thumb, values[:10], 0.0, 1.0)


# ---------------------------------------------------------------- OME-Zarr


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_heatmap_ome_zarr_is_valid_ngff_in_slide_microns(tmp_path: Path, ngff: str) -> None:
    rng = np.random.default_rng(0)
    n = 400
    x, y = rng.integers(0, 9000, n), rng.integers(0, 7000, n)
    values = rng.random((n, 2)).astype(np.float32)
    hm = stitch(x, y, 256, 256, values, slide_size=(9300, 7300), downsample=16)
    out = tmp_path / "heat.ome.zarr"
    write_heatmap_ome_zarr(
        hm,
        out,
        slide_mpp=(0.25, 0.26),
        channel_names=["tumor", "stroma"],
        name="slide heatmap",
        ngff=ngff,  # type: ignore[arg-type]
        provenance={"slide": "slide.svs"},
        min_size=128,
    )
    group = zarr.open_group(out, mode="r", zarr_format=2 if ngff == "0.4" else 3)
    model = v04.Image if ngff == "0.4" else v05.Image
    attrs = model.from_zarr(group).ome_attributes
    datasets = attrs.multiscales[0].datasets
    scales = [list(d.coordinateTransformations[0].scale) for d in datasets]
    assert scales[0] == pytest.approx([1.0, 16 * 0.26, 16 * 0.25])
    assert scales[1] == pytest.approx([1.0, 32 * 0.26, 32 * 0.25])
    level0 = np.asarray(group["0"][...])
    assert level0.shape == (2, *hm.shape) and level0.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(level0[0]), ~hm.coverage)
    np.testing.assert_allclose(level0.transpose(1, 2, 0)[hm.coverage], hm.canvas[hm.coverage])
    raw = group.attrs.asdict()
    meta = raw if ngff == "0.4" else raw["ome"]
    assert [c["label"] for c in meta["omero"]["channels"]] == ["tumor", "stroma"]
    assert raw["wsi_ai"]["slide"] == "slide.svs" and raw["wsi_ai"]["downsample"] == 16


def test_heatmap_ome_zarr_needs_the_slide_mpp(tmp_path: Path) -> None:
    hm = heatmap_of(np.ones((4, 4)), 10.0, (40, 40))
    with pytest.raises(MissingMppError, match="--slide-mpp"):
        write_heatmap_ome_zarr(
            hm, tmp_path / "h.zarr", slide_mpp=None, channel_names=["s"], name="h"
        )
    with pytest.raises(InvalidInputError):
        write_heatmap_ome_zarr(
            hm, tmp_path / "h.zarr", slide_mpp=(1, 1), channel_names=["a", "b"], name="h"
        )


# ---------------------------------------------------------------- hematoxylin score

# Level-0 patches of CMU-1-Small-Region.svs picked by eye on its thumbnail.
NUCLEI_DENSE = [(560, 2700), (1150, 800)]  # epithelium, nuclei packed
STROMA = [(900, 2500), (1000, 2650)]  # pink collagen, few nuclei
GLASS = [(224, 224)]  # empty slide


def test_hematoxylin_map_is_rgb2hed(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide:
        pixels = slide.read_region((1100, 1500), 0, (128, 96))
    np.testing.assert_allclose(hematoxylin_map(pixels), rgb2hed(pixels)[..., 0], atol=1e-12)
    assert patch_hematoxylin(pixels) == pytest.approx(rgb2hed(pixels)[..., 0].mean())
    assert patch_hematoxylin(np.full((8, 8, 3), 255, np.uint8), tissue_only=True) == 0.0


@pytest.mark.parametrize("read_mpp", [None, 2.0])
def test_nuclei_dense_patches_score_higher_than_stroma_and_glass(
    cmu_small: Path, read_mpp: float | None
) -> None:
    points = NUCLEI_DENSE + STROMA + GLASS
    table = pd.DataFrame(
        {
            "x": [p[0] for p in points],
            "y": [p[1] for p in points],
            "width": 224,
            "height": 224,
            "label": ["dense"] * 2 + ["stroma"] * 2 + ["glass"],
        }
    )
    with open_slide(cmu_small) as slide:
        scored = hematoxylin_density(slide, table, mpp=read_mpp, workers=2)
    assert list(scored["label"]) == list(table["label"])  # other columns kept, order kept
    h = scored.groupby("label")["hematoxylin"]
    assert h.min()["dense"] > 1.5 * h.max()["stroma"]
    assert h.min()["stroma"] > 3 * h.max()["glass"]


def test_hematoxylin_density_refuses_a_table_without_geometry(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide, pytest.raises(InvalidInputError, match="height"):
        hematoxylin_density(slide, pd.DataFrame({"x": [0], "y": [0], "width": [10]}))
