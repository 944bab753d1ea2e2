"""Patch grids: level choice, edges, overlap, tissue filtering, upsampling, tables."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsi_ai.errors import InvalidInputError, MissingMppError, OutputExistsError
from wsi_ai.slide import open_slide
from wsi_ai.store import read_table, write_table
from wsi_ai.tiling import grid, read_patch


class HalfTissue:
    """Tissue on the left half of the slide only: exact fractions for the test."""

    def __init__(self, width: int) -> None:
        self.half = width / 2

    def fraction(self, x, y, w, h):
        covered = np.clip(self.half - x, 0, w)
        return (covered / w).astype(np.float32)


def test_grid_at_native_resolution(cmu_small: Path) -> None:
    with open_slide(cmu_small, mpp_override=0.5) as slide:
        g = grid(slide, mpp=0.5, size=224)
    t = g.table
    assert list(t.columns) == ["x", "y", "width", "height", "level", "tissue_fraction"]
    assert len(t) == (2220 // 224) * (2967 // 224)
    assert (t["width"] == 224).all() and (t["level"] == 0).all()
    assert (t["x"] + t["width"] <= 2220).all() and (t["y"] + t["height"] <= 2967).all()
    assert t["tissue_fraction"].isna().all()
    assert g.spec.read_size == 224 and g.spec.effective_mpp == 0.5


def test_grid_picks_a_finer_level_and_resizes_a_little(shared) -> None:
    with open_slide(shared("slides/ndpi-fluorescence-dapi.ndpi")) as slide:
        mpp0 = slide.require_mpp()  # 0.228
        g = grid(slide, mpp=1.0, size=128)
        ds = 1.0 / mpp0  # 4.38 level-0 px per target px
        assert g.spec.level == 2  # 4x is the coarsest level at least as fine as 4.38x
        assert g.spec.read_size == round(128 * ds / 4)
        assert (g.table["width"] == round(128 * ds)).all()
        x, y = int(g.table["x"].iloc[5]), int(g.table["y"].iloc[5])
        assert read_patch(slide, g.spec, x, y).shape == (128, 128, 3)


def test_overlap_and_pad_edges(cmu_small: Path) -> None:
    with open_slide(cmu_small, mpp_override=0.5) as slide:
        inside = grid(slide, mpp=0.5, size=224, overlap=112)
        padded = grid(slide, mpp=0.5, size=224, overlap=0, edge="pad")
    xs = np.sort(inside.table["x"].unique())
    assert np.all(np.diff(xs) == 112)
    assert xs.max() + 224 <= 2220 and xs.max() + 224 + 112 > 2220
    assert len(padded) == (2220 // 224 + 1) * (2967 // 224 + 1)
    assert padded.table["x"].max() + 224 > 2220  # partial patches at the right edge


def test_tissue_fraction_filters_patches(cmu_small: Path) -> None:
    with open_slide(cmu_small, mpp_override=0.5) as slide:
        g = grid(slide, mpp=0.5, size=100, tissue=HalfTissue(2220), min_tissue=0.5)
    t = g.table
    assert (t["tissue_fraction"] >= 0.5).all()
    assert (t["x"] + t["width"] / 2 <= 1110).all()
    assert g.spec.min_tissue == 0.5


def test_upsampling_when_no_level_is_fine_enough(shared, caplog: pytest.LogCaptureFixture) -> None:
    with open_slide(shared("slides/dicom/camelyon-he-multiframe.dcm")) as slide:
        g = grid(slide, mpp=8.0, size=64)
        assert g.spec.effective_mpp == pytest.approx(slide.require_mpp())
        assert g.spec.read_size < 64  # read fewer pixels, upsample to 64
        assert read_patch(slide, g.spec, 0, 0).shape == (64, 64, 3)
    assert "no level is as fine" in caplog.text


def test_grid_needs_an_mpp(shared) -> None:
    with (
        open_slide(shared("slides/skin-he-striped.tif")) as slide,
        pytest.raises(MissingMppError, match="--slide-mpp"),
    ):
        grid(slide)


def test_bad_parameters(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide:
        for kwargs in ({"size": 0}, {"overlap": 224}, {"mpp": -1.0}, {"edge": "wrap"}):
            with pytest.raises(ValueError):
                grid(slide, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".zarr"])
def test_table_round_trip(cmu_small: Path, tmp_path: Path, suffix: str) -> None:
    with open_slide(cmu_small) as slide:
        g = grid(slide, mpp=1.0, size=64)
    out = tmp_path / f"grid{suffix}"
    write_table(g.table, out, meta=g.spec.as_dict())
    table, meta = read_table(out)
    pd.testing.assert_frame_equal(table, g.table, check_dtype=False)
    assert meta["mpp"] == 1.0 and meta["level"] == 0  # CSV: in grid.csv.json
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_table(g.table, out)
    write_table(g.table.head(3), out, overwrite=True)
    assert len(read_table(out)[0]) == 3
    expected = {out.name, out.name + ".json"} if suffix == ".csv" else {out.name}
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temporary left behind


def test_table_errors(tmp_path: Path) -> None:
    bad = tmp_path / "scores.csv"
    bad.write_text("x,y,score\n1,2,0.5\n")
    with pytest.raises(InvalidInputError, match="width, height"):
        read_table(bad)
    with pytest.raises(InvalidInputError, match=r"\.csv, \.parquet or \.zarr"):
        read_table(tmp_path / "grid.xlsx")
    with pytest.raises(InvalidInputError, match="no such table"):
        read_table(tmp_path / "missing.csv")


def test_absurd_grids_are_refused_per_slide(cmu_small: Path, monkeypatch) -> None:
    grid_module = importlib.import_module("wsi_ai.tiling.grid")  # the package exports grid()
    from wsi_ai.errors import ParameterError

    with open_slide(cmu_small) as slide:
        with pytest.raises(ParameterError, match="less than one pixel"):
            grid(slide, mpp=0.001, size=1)
        monkeypatch.setattr(grid_module, "MAX_PATCHES", 1000)
        with pytest.raises(ParameterError, match="more than 1,000"):
            grid(slide, mpp=0.5, size=32)
