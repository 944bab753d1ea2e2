"""The stage contracts: frozen tissue/grid configs, the one patch planner, the torch-free
store, imports that run one way, and ``wsi-ai stitch`` writing OUTDIR as one unit."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from wsi_ai.annotations import read_qupath_geojson
from wsi_ai.cli import main
from wsi_ai.errors import InvalidInputError, MissingMppError, ParameterError
from wsi_ai.outputs import MARKER
from wsi_ai.slide import open_slide
from wsi_ai.tiling import GridConfig, grid, plan_patches
from wsi_ai.tissue import TissueConfig, detect_tissue

PACKAGE = Path(__file__).resolve().parents[1] / "wsi_ai"


def white_slide(path: Path, side: int = 1024) -> Path:
    import tifffile

    tifffile.imwrite(path, np.full((side, side, 3), 242, np.uint8), tile=(256, 256))
    return path


# ---------------------------------------------------------------- configs


def test_configs_have_the_cli_defaults_and_are_frozen() -> None:
    assert GridConfig() == GridConfig(mpp=0.5, size=224, overlap=0, min_tissue=0.5, edge="inside")
    assert TissueConfig() == TissueConfig(enabled=True, target_mpp=8.0)
    with pytest.raises(AttributeError):
        GridConfig().size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mpp": 0.0}, "mpp"),
        ({"mpp": math.nan}, "mpp"),
        ({"mpp": math.inf}, "mpp"),
        ({"size": 0}, "size"),
        ({"size": 2.5}, "size"),
        ({"overlap": -1}, "overlap"),
        ({"overlap": 224}, "overlap"),
        ({"min_tissue": 1.5}, "min_tissue"),
        ({"min_tissue": math.nan}, "min_tissue"),
        ({"edge": "wrap"}, "edge"),
    ],
)
def test_grid_config_refuses_bad_values_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ParameterError, match=f"grid {field} must be"):
        GridConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [0.0, -2.0, math.nan, math.inf, "8"])
def test_tissue_config_refuses_bad_values(target: object) -> None:
    with pytest.raises(ParameterError, match="target_mpp must be"):
        TissueConfig(target_mpp=target)  # type: ignore[arg-type]
    assert GridConfig(mpp=np.float64(1.0), size=np.int64(64)).size == 64  # numpy scalars do


# ---------------------------------------------------------------- plan_patches


def test_plan_is_tissue_then_grid(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide:
        planned = plan_patches(slide, TissueConfig(), GridConfig(mpp=2.0, size=112))
        mask = detect_tissue(slide)
        expected = grid(slide, mpp=2.0, size=112, tissue=mask, min_tissue=0.5)
        pd.testing.assert_frame_equal(planned.table, expected.table)
        assert planned.spec == expected.spec
        # a given mask is used as it is; with tissue off it is ignored
        again = plan_patches(slide, TissueConfig(), GridConfig(mpp=2.0, size=112), mask)
        pd.testing.assert_frame_equal(again.table, expected.table)
        off = plan_patches(slide, TissueConfig(enabled=False), GridConfig(mpp=2.0, size=112), mask)
        assert len(off) > len(expected) and off.table["tissue_fraction"].isna().all()


def test_an_empty_plan_says_why_once(cmu_small: Path, tmp_path: Path) -> None:
    with open_slide(cmu_small) as slide:  # 2220 x 2967 px at 0.499 µm/px
        with pytest.raises(InvalidInputError) as small:
            plan_patches(slide, TissueConfig(enabled=False), GridConfig(mpp=8.0, size=224))
        with pytest.raises(InvalidInputError) as tissue:
            plan_patches(slide, TissueConfig(), GridConfig(mpp=2.0, size=224, min_tissue=1.0))
    assert str(small.value) == (
        f"{cmu_small}: no patch left: the slide (2220 x 2967 px) is smaller than one patch of "
        "224 px at 8 µm/px (3591 px at level 0); lower --size or --mpp"
    )
    assert small.value.path == cmu_small
    assert tissue.value.reason == (
        "no patch left: no patch of 224 px at 2 µm/px has at least 100% tissue; "
        "lower --min-tissue or pass --no-tissue"
    )
    white = white_slide(tmp_path / "white.tif")
    no_tissue = pytest.raises(InvalidInputError, match="at least 50% tissue; lower --min-tissue")
    with open_slide(white, mpp_override=0.5) as slide, no_tissue:
        plan_patches(slide, TissueConfig(), GridConfig())
    with open_slide(tmp_path / "white.tif") as slide, pytest.raises(MissingMppError):
        plan_patches(slide, TissueConfig(), GridConfig())


# ---------------------------------------------------------------- layers


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("stitch", ("export", "engine", "store", "cli", "score")),
        ("store", ("engine", "stitch", "export", "cli", "train", "nn", "tiling")),
        ("tiling", ("engine", "stitch", "export", "cli", "store")),
    ],
)
def test_imports_run_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    bad = {
        f"{path.name}: {name}"
        for path in sorted((PACKAGE / package).glob("*.py"))
        for name in _imports(path)
        if any(name == f"wsi_ai.{f}" or name.startswith(f"wsi_ai.{f}.") for f in forbidden)
    }
    assert not bad


def test_the_store_needs_no_torch() -> None:
    code = "import sys, wsi_ai.store, wsi_ai.store.scores; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------- stitch OUTDIR


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def scores(tmp_path: Path) -> Path:
    xs, ys = np.meshgrid(np.arange(0, 2000, 400), np.arange(0, 2800, 400))
    table = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "width": 400, "height": 400})
    table["tumor"] = (table["x"] < 1000).astype(float)
    path = tmp_path / "scores.csv"
    table.to_csv(path, index=False)
    return path


def test_stitch_writes_outdir_as_one_unit(cmu_small: Path, scores: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    stitch = ("stitch", scores, "--slide", cmu_small, "-o", out, "--downsample", "40")
    code, stdout, stderr = run(*stitch, "--json")
    assert code == 0, stderr
    outputs = json.loads(stdout)["outputs"]
    assert outputs == {
        "heatmap": str(out / "heatmap.png"),
        "overlay": str(out / "overlay.png"),
        "regions": str(out / "regions.geojson"),
        "ome_zarr": str(out / "heatmap.ome.zarr"),
    }
    names = {"heatmap.png", "overlay.png", "regions.geojson", "heatmap.ome.zarr", MARKER}
    assert {p.name for p in out.iterdir()} == names
    assert {p.name for p in tmp_path.iterdir()} == {"scores.csv", "maps"}  # no temporaries

    regions = read_qupath_geojson(out / "regions.geojson")
    code, _, stderr = run(*stitch)
    assert code == 1 and "--overwrite" in stderr
    code, _, stderr = run(*stitch, "--overwrite")
    assert code == 0, stderr
    again = read_qupath_geojson(out / "regions.geojson")
    assert [a.geometry.wkt for a in again] == [a.geometry.wkt for a in regions]
    code, _, stderr = run(*stitch, "--overwrite", "--tiles")
    assert code == 0, stderr
    assert (out / "tiles.geojson").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"scores.csv", "maps"}


def test_stitch_outdir_that_is_empty_foreign_or_failed(
    cmu_small: Path, scores: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "made-beforehand"
    empty.mkdir()
    code, _, stderr = run("stitch", scores, "--slide", cmu_small, "-o", empty)
    assert code == 0, stderr
    assert (empty / "heatmap.png").exists() and (empty / MARKER).exists()

    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, _, stderr = run("stitch", scores, "--slide", cmu_small, "-o", foreign, "--overwrite")
    assert code == 1 and "did not write" in stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    # a slide large enough for the patches (so the identity and bounds checks let it through
    # with --allow-other-slide) but without an MPP: the writing itself fails
    no_mpp = white_slide(tmp_path / "white.tif", side=3072)
    failed = tmp_path / "failed"
    code, _, stderr = run("stitch", scores, "--slide", no_mpp, "-o", failed, "--allow-other-slide")
    assert code == 1 and "--slide-mpp" in stderr
    assert not failed.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
