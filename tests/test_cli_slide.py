"""The slide commands end to end: outputs, one-line errors, exit codes, multi-slide runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from wsi_ai.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert lines, stderr
    assert "Traceback" not in stderr
    noise = [ln for ln in stderr.splitlines() if ln and not ln.startswith(("error:", "warning:"))]
    assert not noise, stderr
    for needle in needles:
        assert any(needle in ln for ln in lines), (needle, stderr)


def test_help_explains_every_command_with_an_example() -> None:
    code, out, _ = run("--help")
    assert code == 0
    commands = [ln.split()[0] for ln in out.split("Commands:")[1].strip().splitlines()]
    for command in commands:
        c, text, _ = run(command, "--help")
        assert c == 0 and "Example" in text, command


def test_info_json_reports_every_slide_and_each_failure(
    shared, cmu_small: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.svs"
    label_only = shared("slides/dicom/label-only.dcm")
    code, out, err = run(
        "info",
        cmu_small,
        missing,
        label_only,
        shared("slides/ndpi-fluorescence-dapi.ndpi"),
        "--json",
    )
    assert code == 1
    rows = json.loads(out)
    assert [Path(r["path"]).name for r in rows] == [
        "CMU-1-Small-Region.svs",
        "missing.svs",
        "label-only.dcm",
        "ndpi-fluorescence-dapi.ndpi",
    ] or {Path(r["path"]).name for r in rows} == {
        "CMU-1-Small-Region.svs",
        "missing.svs",
        "label-only.dcm",
        "ndpi-fluorescence-dapi.ndpi",
    }
    good = {Path(r["path"]).name: r for r in rows if "error" not in r}
    assert good["CMU-1-Small-Region.svs"]["mpp_x"] == 0.499
    assert good["ndpi-fluorescence-dapi.ndpi"]["modality"] == "fluorescence"
    assert_one_line_error(err, "missing.svs", "label-only.dcm")


def test_info_table(cmu_small: Path) -> None:
    code, out, _ = run("info", cmu_small)
    assert code == 0
    assert "aperio" in out and "0.499 (metadata)" in out and "20x" in out and "label, macro" in out


def test_tiles_without_tissue_writes_the_patch_table(cmu_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.parquet"
    code, stdout, _ = run(
        "tiles", cmu_small, "--mpp", "1.0", "--size", "128", "--no-tissue", "-o", out, "--json"
    )
    assert code == 0, stdout
    table = pd.read_parquet(out)
    assert list(table.columns) == ["x", "y", "width", "height", "level", "tissue_fraction"]
    assert json.loads(stdout)["patches"] == len(table) > 0


def test_existing_output_needs_overwrite(cmu_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.csv"
    out.write_text("keep me")
    code, _, err = run("tiles", cmu_small, "--no-tissue", "-o", out)
    assert code == 1
    assert_one_line_error(err, "grid.csv", "--overwrite")
    assert out.read_text() == "keep me"


def test_slide_without_mpp_asks_for_slide_mpp(shared, tmp_path: Path) -> None:
    slide = shared("slides/tcga-cr-7395-01a-01-ts1.svs")
    code, _, err = run("tiles", slide, "--no-tissue", "-o", tmp_path / "g.csv")
    assert code == 1
    assert_one_line_error(err, "tcga-cr-7395-01a-01-ts1.svs", "--slide-mpp")
    code, _, _ = run("tiles", slide, "--no-tissue", "--slide-mpp", "0.5", "-o", tmp_path / "g.csv")
    assert code == 0


@pytest.mark.parametrize("kind", ["missing", "directory", "not-a-slide", "truncated"])
def test_bad_inputs_exit_1_with_one_line(kind: str, cmu_small: Path, tmp_path: Path) -> None:
    path = {
        "missing": tmp_path / "nope.svs",
        "directory": tmp_path,
        "not-a-slide": tmp_path / "notes.svs",
        "truncated": tmp_path / "cut.svs",
    }[kind]
    if kind == "not-a-slide":
        path.write_text("hello")
    if kind == "truncated":
        path.write_bytes(cmu_small.read_bytes()[:4000])
    for command in (["info"], ["tiles", "--no-tissue", "-o", str(tmp_path / "g.csv")]):
        code, _, err = run(*command, path)
        assert code == 1, (command, err)
        assert_one_line_error(err, path.name)


def test_usage_errors_exit_2(cmu_small: Path) -> None:
    code, _, _ = run("tiles", cmu_small)  # missing -o
    assert code == 2
    code, _, _ = run("tiles", cmu_small, "-o", "x.csv", "--mpp", "-1")
    assert code == 2


def test_tissue_writes_qupath_geojson_and_mask(cmu_small: Path, tmp_path: Path) -> None:
    out, mask = tmp_path / "tissue.geojson", tmp_path / "mask.png"
    code, stdout, err = run("tissue", cmu_small, "-o", out, "--mask", mask, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["regions"] >= 1 and 0.2 < summary["tissue_fraction"] < 0.8
    assert summary["empty"] is False and "warning" not in err
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection"
    feature = doc["features"][0]
    assert feature["properties"]["classification"]["name"] == "Tissue"
    assert "color" in feature["properties"]["classification"]
    assert doc["wsi_ai"]["slide"] == "CMU-1-Small-Region.svs"
    assert mask.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the autouse fixture in conftest validates tissue.geojson against QuPath's rules


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_tissue_on_blank_glass_warns_and_writes_an_empty_collection(
    tmp_path: Path, as_json: bool
) -> None:
    """No tissue is a legitimate result (exit 0), but it must be said."""
    import numpy as np
    import tifffile

    slide = tmp_path / "glass.tif"
    glass = np.full((1024, 1024, 3), 245, np.uint8)
    tifffile.imwrite(slide, glass, tile=(256, 256), photometric="rgb")
    out = tmp_path / "tissue.geojson"
    code, stdout, err = run("tissue", slide, "-o", out, *(["--json"] if as_json else []))
    assert code == 0, err
    assert [ln for ln in err.splitlines() if ln.startswith("warning:")] == [
        f"warning: {out}: no tissue region found in glass.tif (brightfield): "
        'QuPath will say "No objects found"'
    ]
    if as_json:
        summary = json.loads(stdout)
        assert summary["empty"] is True and summary["regions"] == 0
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"] == []


def test_tiles_with_tissue_and_preview(cmu_small: Path, tmp_path: Path) -> None:
    out, preview = tmp_path / "grid.csv", tmp_path / "grid.png"
    code, _, err = run(
        "tiles", cmu_small, "--mpp", "0.5", "--size", "224", "-o", out, "--preview", preview
    )
    assert code == 0, err
    table = pd.read_csv(out)
    assert len(table) > 20 and (table["tissue_fraction"] >= 0.5).all()
    assert preview.stat().st_size > 1000


def test_tiles_empty_grid_is_an_error(cmu_small: Path, tmp_path: Path) -> None:
    code, _, err = run(
        "tiles", cmu_small, "--size", "2000", "--min-tissue", "1.0", "-o", tmp_path / "g.csv"
    )
    assert code == 1
    assert_one_line_error(err, "CMU-1-Small-Region.svs", "--min-tissue")
    assert not (tmp_path / "g.csv").exists()


def test_convert_cli_writes_a_valid_store(cmu_small: Path, tmp_path: Path) -> None:
    from tests.test_ome_zarr import validate  # the ome-zarr-models check

    out = tmp_path / "cmu.ome.zarr"
    code, stdout, err = run("convert", cmu_small, "-o", out)
    assert code == 0, err
    assert "wrote" in stdout
    validate(out, "0.4")
    code, _, err = run("convert", cmu_small, "-o", out)
    assert code == 1
    assert_one_line_error(err, "cmu.ome.zarr", "--overwrite")


@pytest.mark.parametrize(
    "args",
    [
        ["--mpp", "nan"],
        ["--mpp", "inf"],
        ["--slide-mpp", "nan"],
        ["--size", "224", "--overlap", "224"],
        ["--min-tissue", "nan"],
    ],
)
def test_bad_option_values_are_usage_errors(
    cmu_small: Path, tmp_path: Path, args: list[str]
) -> None:
    code, _, err = run("tiles", cmu_small, "-o", tmp_path / "g.csv", *args)
    assert code == 2, err
    assert "Traceback" not in err and "bug" not in err


def test_output_in_an_unusable_folder_names_the_output(cmu_small: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = run("tiles", cmu_small, "--no-tissue", "-o", blocker / "g.csv")
    assert code == 1
    assert_one_line_error(err, "g.csv")
    assert "bug" not in err
    # a second output that cannot be written stops the first from being written at all
    out = tmp_path / "tissue.geojson"
    code, _, err = run("tissue", cmu_small, "-o", out, "--mask", blocker / "m.png")
    assert code == 1 and not out.exists()


def test_overwrite_never_deletes_a_foreign_folder(cmu_small: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.zarr"
    (precious / "sub").mkdir(parents=True)
    (precious / "sub" / "important.txt").write_text("data")
    code, _, err = run("convert", cmu_small, "-o", precious, "--overwrite")
    assert code == 1
    assert_one_line_error(err, "precious.zarr", "did not write")
    assert (precious / "sub" / "important.txt").read_text() == "data"
    code, _, _ = run("convert", cmu_small, "-o", tmp_path / "not-a-store")
    assert code == 2  # the store must be named *.zarr


def test_truncated_striped_tiff_is_one_line(shared, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tif"
    cut.write_bytes(shared("slides/skin-he-striped.tif").read_bytes()[:2_000_000])
    code, _, err = run("tiles", cut, "--slide-mpp", "0.5", "-o", tmp_path / "g.csv")
    assert code == 1
    assert_one_line_error(err, "cut.tif")


def test_unreadable_slide_is_reported_and_the_others_still_run(
    cmu_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked.svs"
    locked.write_bytes(b"x")
    original = Path.open

    def deny(self: Path, *args, **kwargs):
        if self.name == "locked.svs":
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    code, out, err = run("info", locked, cmu_small, "--json")
    assert code == 1
    assert_one_line_error(err, "locked.svs", "permissions")
    assert any(r.get("file") == "CMU-1-Small-Region.svs" for r in json.loads(out))
