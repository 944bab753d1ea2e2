"""Tables we can trust: made on this slide, inside it, well-formed, and whole with their sidecar.

A result computed on the wrong slide, on NaN or on a table we did not understand is worse
than an error: each case here is refused with one line naming the file (exit 1), a usage
error is exit 2, and what can only be warned about (a renamed copy, a table that names no
slide) is warned about.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.cli_helpers import one_error_line, run
from wsi_ai.errors import InvalidInputError, OutputExistsError
from wsi_ai.slide.identity import IDENTITY_KEY, fingerprint, slide_identity
from wsi_ai.store import read_table, write_features, write_table
from wsi_ai.store.table import TABLE_HASH, csv_sidecar

CMU_SIZE = (2220, 2967)
FAST = ("--mpp", "2", "--size", "112", "--no-tissue")  # 40 patches of 449 level-0 px


def warnings_of(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("warning:")]


@pytest.fixture(scope="module")
def scores(cmu_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "scores.csv"
    code, _, err = run("score-he", cmu_small, *FAST, "-o", out)
    assert code == 0, err
    return out


def stitch_or_score(command: str, table: Path, slide: Path, out: Path, *extra: object) -> tuple:
    """``stitch TABLE --slide SLIDE`` or ``score-he SLIDE --patches TABLE``: both must check."""
    if command == "stitch":
        return run("stitch", table, "--slide", slide, "-o", out, *extra)
    return run("score-he", slide, "--patches", table, "-o", out / "s.csv", *extra)


# ---------------------------------------------------------------- 1. which slide


@pytest.mark.parametrize(
    ("command", "suffix"),
    [("tiles", ".csv"), ("tiles", ".parquet"), ("score-he", ".csv"), ("score-he", ".zarr")],
)
def test_tables_name_the_slide_they_were_made_on(
    cmu_small: Path, tmp_path: Path, command: str, suffix: str
) -> None:
    out = tmp_path / f"t{suffix}"
    code, _, err = run(command, cmu_small, *FAST, "-o", out)
    assert code == 0, err
    _, meta = read_table(out)
    assert meta[IDENTITY_KEY] == {
        "name": cmu_small.name,
        "dimensions": list(CMU_SIZE),
        "fingerprint": fingerprint(cmu_small),
    }
    assert meta[IDENTITY_KEY] == slide_identity(cmu_small) == slide_identity(str(cmu_small))
    assert TABLE_HASH not in meta  # the sidecar's own check, not the table's metadata


def _same_name_other_content(cmu_small: Path, folder: Path) -> Path:
    """A rescan: same name and dimensions, other bytes (trailing bytes a TIFF reader skips)."""
    other = folder / "rescan" / cmu_small.name
    other.parent.mkdir()
    other.write_bytes(cmu_small.read_bytes() + b"\0" * 4096)
    return other


@pytest.mark.parametrize("command", ["stitch", "score-he"])
@pytest.mark.parametrize(
    "case", ["other-slide", "same-name-other-content", "allowed", "renamed-copy", "no-identity"]
)
def test_a_table_of_another_slide_is_refused(
    scores: Path, cmu_small: Path, skin_striped: Path, tmp_path: Path, command: str, case: str
) -> None:
    extra: tuple[str, ...] = ()
    table, slide = scores, cmu_small
    if case == "other-slide":
        slide, extra = skin_striped, ("--slide-mpp", "0.5")
    elif case == "same-name-other-content":
        slide = _same_name_other_content(cmu_small, tmp_path)
    elif case == "allowed":
        slide, extra = _same_name_other_content(cmu_small, tmp_path), ("--allow-other-slide",)
    elif case == "renamed-copy":
        slide = tmp_path / "renamed.svs"
        shutil.copyfile(cmu_small, slide)
    else:
        table = tmp_path / "foreign.csv"
        pd.read_csv(scores).to_csv(table, index=False)  # no sidecar: an older or foreign table
    code, _, err = stitch_or_score(command, table, slide, tmp_path / "out", *extra)
    what = "scores" if command == "stitch" else "patches"
    if case in ("other-slide", "same-name-other-content"):
        assert code == 1
        assert one_error_line(err) == (
            f"error: {table}: {what} made on {cmu_small.name} ({CMU_SIZE[0]} x {CMU_SIZE[1]}), "
            f"not on {slide}: pass the slide they were made on, or --allow-other-slide "
            "to override"
        )
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
        return
    assert code == 0, err
    (warning,) = warnings_of(err)
    expected = {
        "allowed": f"{what} made on {cmu_small.name} (2220 x 2967), not on {slide} "
        "(2220 x 2967): used anyway (--allow-other-slide)",
        "renamed-copy": f"{what} made on {cmu_small.name}, given renamed.svs: same dimensions "
        "and content fingerprint, taken as a renamed copy",
        "no-identity": f"the {what} do not name the slide they were made on (an older or "
        f"foreign table): cannot check they belong to {cmu_small.name}",
    }[case]
    assert warning == f"warning: {table}: {expected}"


def test_a_features_store_names_its_slide_and_stitch_checks_it(
    cmu_small: Path, skin_striped: Path, tmp_path: Path
) -> None:
    table = pd.DataFrame({"x": [0, 500], "y": [0, 0], "width": 500, "height": 500})
    store = write_features(
        tmp_path / "cmu.zarr",
        table,
        scores=np.array([[0.2], [0.8]]),
        classes=["Tumor"],
        attrs={"grid": {"edge": "inside"}, IDENTITY_KEY: slide_identity(cmu_small)},
    )
    code, _, err = run("stitch", store, "--slide", cmu_small, "-o", tmp_path / "ok")
    assert code == 0 and warnings_of(err) == [], err
    args = ("stitch", store, "--slide", skin_striped, "--slide-mpp", "0.5", "-o", tmp_path / "no")
    code, _, err = run(*args)
    assert code == 1 and "scores made on CMU-1-Small-Region.svs" in one_error_line(err)


# ---------------------------------------------------------------- 2. well-formed and inside


def _bad_geometry(scores: Path, folder: Path, column: str, value: object) -> Path:
    table = pd.read_csv(scores)
    table[column] = table[column].astype(object)
    table.loc[2, column] = value
    if isinstance(value, bool):
        table[column] = value  # a column of booleans (pandas reads True/False back as such)
    bad = folder / "bad.csv"
    table.to_csv(bad, index=False)
    return bad


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("width", "abc", "'abc' is not a number"),
        ("x", True, "True is not a number"),
        ("y", "", "empty; x, y, width, height must be finite"),
        ("height", np.inf, "inf; x, y, width, height must be finite"),
        ("width", 0, "0; patch sizes must be positive"),
        ("height", -5, "-5; patch sizes must be positive"),
    ],
    ids=["string", "bool", "empty", "inf", "zero-width", "negative-height"],
)
def test_malformed_geometry_is_refused_naming_file_column_and_row(
    scores: Path, tmp_path: Path, column: str, value: object, why: str
) -> None:
    bad = _bad_geometry(scores, tmp_path, column, value)
    row = "row 1" if isinstance(value, bool) else "row 3 (line 4)"  # a bool column: every row
    with pytest.raises(InvalidInputError) as caught:
        read_table(bad)
    assert caught.value.path == bad
    assert caught.value.reason.startswith(f"column {column!r}, {row}")
    assert why in caught.value.reason


@pytest.mark.parametrize("command", ["stitch", "score-he"])
def test_commands_refuse_malformed_tables_in_one_line(
    scores: Path, cmu_small: Path, tmp_path: Path, command: str
) -> None:
    bad = _bad_geometry(scores, tmp_path, "width", "abc")
    code, _, err = stitch_or_score(command, bad, cmu_small, tmp_path / "out")
    assert code == 1
    assert one_error_line(err) == (
        f"error: {bad}: column 'width', row 3 (line 4): 'abc' is not a number; "
        "x, y, width, height are level-0 pixels"
    )


def _shifted(scores: Path, folder: Path, change: dict[str, float]) -> Path:
    """The scores with row 3 changed, written by wsi-ai (so naming their slide)."""
    table, meta = read_table(scores)
    for column, value in change.items():
        table[column] = table[column].astype(np.float64)
        table.loc[2, column] = value
    return write_table(table, folder / "moved.csv", meta=meta)


@pytest.mark.parametrize("command", ["stitch", "score-he"])
@pytest.mark.parametrize(
    ("change", "column", "why"),
    [
        ({"x": 2000}, "x", "it passes the right edge"),
        ({"y": 5000}, "y", "it passes the bottom edge"),
        ({"x": -10}, "x", "x is negative"),
        ({"width": 1e9}, "width", "it is larger than the slide (2220 px)"),
    ],
    ids=["right", "wholly-below", "negative", "huge"],
)
def test_patches_outside_the_slide_are_refused(
    scores: Path,
    cmu_small: Path,
    tmp_path: Path,
    command: str,
    change: dict[str, float],
    column: str,
    why: str,
) -> None:
    moved = _shifted(scores, tmp_path, change)
    code, _, err = stitch_or_score(command, moved, cmu_small, tmp_path / "out")
    assert code == 1
    line = one_error_line(err)
    assert line.startswith(f"error: {moved}: column {column!r}, row 3 (line 4): the patch at (")
    assert f"leaves {cmu_small.name} (2220 x 2967 px): {why};" in line


def test_a_pad_grid_may_pass_the_edge_but_not_start_outside(
    cmu_small: Path, tmp_path: Path
) -> None:
    grid = tmp_path / "grid.csv"
    assert run("tiles", cmu_small, *FAST, "--edge", "pad", "-o", grid)[0] == 0
    table, meta = read_table(grid)
    assert meta["edge"] == "pad" and (table["x"] + table["width"] > CMU_SIZE[0]).any()
    code, _, err = run("score-he", cmu_small, "--patches", grid, "-o", tmp_path / "s.csv")
    assert code == 0, err
    code, _, err = run("stitch", tmp_path / "s.csv", "--slide", cmu_small, "-o", tmp_path / "m")
    assert code == 0, err
    table.loc[0, "y"] = CMU_SIZE[1]  # starts below the slide: no edge mode allows that
    outside = write_table(table, tmp_path / "outside.csv", meta=meta)
    code, _, err = run("score-he", cmu_small, "--patches", outside, "-o", tmp_path / "t.csv")
    assert code == 1 and "it starts past the bottom edge" in one_error_line(err)
    meta["edge"] = "inside"  # the same partial patches, from a table that does not say pad
    table, _ = read_table(grid)
    inside = write_table(table, tmp_path / "inside.csv", meta=meta)
    code, _, err = run("score-he", cmu_small, "--patches", inside, "-o", tmp_path / "u.csv")
    assert code == 1 and "passes the" in one_error_line(err)


# ---------------------------------------------------------------- 3. usage errors


@pytest.mark.parametrize("overlap", ["112", "500"])
def test_score_he_overlap_not_below_size_is_a_usage_error(
    cmu_small: Path, tmp_path: Path, overlap: str
) -> None:
    out = tmp_path / "s.csv"
    code, _, err = run("score-he", cmu_small, "--size", "112", "--overlap", overlap, "-o", out)
    assert code == 2
    assert f"Invalid value for --overlap: {overlap} must be smaller than --size (112)" in err
    assert not out.exists()


# ---------------------------------------------------------------- 4. a table and its sidecar


def test_a_table_that_does_not_match_its_sidecar_is_refused(
    cmu_small: Path, tmp_path: Path
) -> None:
    table = pd.DataFrame({"x": [0, 100], "y": 0, "width": 100, "height": 100, "s": [0.1, 0.2]})
    out = write_table(table, tmp_path / "scores.csv", meta={"note": "new"})
    assert json.loads(csv_sidecar(out).read_text())[TABLE_HASH]
    table.assign(s=[0.3, 0.4]).to_csv(out, index=False)  # the old table with the new sidecar
    with pytest.raises(InvalidInputError) as caught:
        read_table(out)
    assert str(caught.value) == (
        f"{out}: table and sidecar (scores.csv.json) do not belong together "
        "(interrupted write?): rerun the command"
    )
    code, _, err = run("stitch", out, "--slide", cmu_small, "-o", tmp_path / "maps")
    assert code == 1 and "do not belong together" in one_error_line(err)
    # an older wsi-ai's sidecar has no hash: still read, as it always was
    csv_sidecar(out).write_text(json.dumps({"note": "old"}))
    assert read_table(out)[1] == {"note": "old"}


def test_leftovers_of_a_killed_run_are_cleaned_and_nothing_else(tmp_path: Path) -> None:
    table = pd.DataFrame({"x": [0], "y": [0], "width": [10], "height": [10]})
    out = tmp_path / "grid.csv"
    stale = [".grid.csv.tmp-0123abcd", ".grid.csv.json.tmp-89abcdef", ".grid.csv.old-00000000"]
    kept = [".grid.csv.tmp-0123abc", ".grid.csv.tmp-0123abcdX", ".other.csv.tmp-0123abcd"]
    kept += [".grid.csv.bak-0123abcd", "grid.csv.tmp-0123abcd"]
    for name in stale + kept:
        (tmp_path / name).write_text("left behind")
    (tmp_path / ".grid.csv.tmp-fedcba98").mkdir()  # a folder a killed run left (a Zarr store)
    # a first run killed between the two renames left its sidecar without its table
    csv_sidecar(out).write_text(json.dumps({TABLE_HASH: "0" * 64}))
    write_table(table, out)  # no --overwrite needed: nothing complete was there
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*kept, "grid.csv", "grid.csv.json"]
    )
    assert len(read_table(out)[0]) == 1
    csv_sidecar(out).unlink()
    csv_sidecar(out).write_text("{}")  # a sidecar that is not ours to drop
    (tmp_path / "grid.csv").unlink()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_table(table, out)
