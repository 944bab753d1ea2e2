"""The same result twice: the same inputs and seed give byte-identical data files on a CPU.

Each writing command runs twice on the bundled CMU slide (cheap settings), each run reading
its own copy of the inputs in its own folder and writing into its own folder, so a path, a
time or a random id inside a data file shows up as a difference. Where a command takes a
worker count, the second run uses another: the bytes must not depend on it either. Every
file is compared by sha256, every chunk and attribute file of a Zarr store included.

Dates belong only in run records: under ``wsi-ai run``'s ``slides/<name>/``, ``slide.json``
and ``report.html`` carry the run's ``finished`` time and its stage timings (``slide.json``
also the slide's path), and must be equal once those are taken out. (The run's own
``run.json``, ``summary.csv`` and ``logs/`` are records of the run, not data: not compared.)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.test_engine import tiny_card
from wsi_ai.cli import main
from wsi_ai.engine.embed import torch_determinism

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "he-density.toml"
SLIDE = "CMU-1-Small-Region.svs"
GRID = ("--mpp", "2")  # a few dozen patches of the CMU slide
QUPATH_FILES = {
    "ids": "annotations/qupath_geojson/coscia_03012023_JN.geojson",  # ids and classes given
    "bare": "annotations/qupath_geojson/qupath_test_polygon.geojson",  # no ids: derived ones
}
RUN_RECORDS = ("slide.json", "report.html")  # under slides/<name>/: carry the run's date

Argv = Callable[[Path, Path], list[object]]  # (inputs folder, outputs folder) -> argv

# id -> (argv, extra args of the second run only: knobs that must not change the bytes)
CASES: dict[str, tuple[Argv, tuple[str, ...]]] = {
    "tissue": (
        lambda i, o: ["tissue", i / SLIDE, "-o", o / "tissue.geojson", "--mask", o / "mask.png"],
        (),
    ),
    "tiles-csv": (
        lambda i, o: ["tiles", i / SLIDE, *GRID, "-o", o / "grid.csv", "--preview", o / "g.png"],
        (),
    ),
    "tiles-parquet": (lambda i, o: ["tiles", i / SLIDE, *GRID, "-o", o / "grid.parquet"], ()),
    "tiles-zarr": (lambda i, o: ["tiles", i / SLIDE, *GRID, "-o", o / "grid.zarr"], ()),
    "score-he-csv": (
        lambda i, o: ["score-he", i / SLIDE, *GRID, "-o", o / "scores.csv", "--workers", "2"],
        ("--workers", "1"),
    ),
    "score-he-parquet": (
        lambda i, o: ["score-he", i / SLIDE, *GRID, "-o", o / "scores.parquet"],
        (),
    ),
    "stitch": (
        lambda i, o: [
            "stitch",
            i / "scores.csv",
            "--slide",
            i / SLIDE,
            "-o",
            o / "maps",
            "--tiles",
            "--gz",
            "--blend",
            "gaussian",
        ],
        (),
    ),
    "convert-0.4": (
        lambda i, o: ["convert", i / SLIDE, "-o", o / "s.ome.zarr", "--chunk", "256"],
        ("--workers", "1"),
    ),
    "convert-0.5": (
        lambda i, o: ["convert", i / SLIDE, "-o", o / "s.ome.zarr", "--ngff", "0.5"],
        ("--workers", "1"),
    ),
    **{
        f"annotations-{kind}-{fmt}": (
            lambda i, o, kind=kind, fmt=fmt: [
                "annotations",
                "convert",
                i / f"{kind}.geojson",
                "-o",
                o / f"out.{fmt}",
            ],
            (),
        )
        for kind in QUPATH_FILES
        for fmt in ("geojson", "xml")
    },
    "embed": (
        lambda i, o: ["embed", i / SLIDE, "--model", i / "tiny.toml", "--random-init", "-o", o],
        (),
    ),
    "run": (
        lambda i, o: [
            "run",
            i / SLIDE,
            "-p",
            i / "he-density.toml",
            "-o",
            o,
            "--set",
            "grid.mpp=1",
        ],
        (),
    ),
}


def wsi(*args: object) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.stderr


@pytest.fixture(scope="module")
def inputs(
    cmu_small: Path, shared: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One folder holding every input: the slide, a score table, QuPath files, a card."""
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(cmu_small, folder / SLIDE)
    shutil.copy(PIPELINE, folder / PIPELINE.name)
    for kind, relpath in QUPATH_FILES.items():
        shutil.copy(shared(relpath), folder / f"{kind}.geojson")
    tiny_card(folder, classes=False)
    wsi("score-he", folder / SLIDE, *GRID, "-o", folder / "scores.csv")
    return folder


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def without_run_dates(path: Path) -> str:
    """A run record with the run's date and timings taken out (what may differ), and in
    ``slide.json`` the slide's path (each run reads its own copy)."""
    if path.suffix == ".json":
        record = json.loads(path.read_text())
        del record["finished"], record["slide"]["path"]
        record["stages"] = sorted(record["stages"])  # seconds per stage: keep the names
        return json.dumps(record, sort_keys=True)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", "<finished>", path.read_text())
    return re.sub(r"(Processing time</th><td>)[^<]*", r"\1<seconds>", text)


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_inputs_give_the_same_bytes(case: str, inputs: Path, tmp_path: Path) -> None:
    argv, second_only = CASES[case]
    outs = []
    for name, extra in (("a", ()), ("b", second_only)):
        own_inputs = tmp_path / name / "in"
        shutil.copytree(inputs, own_inputs)
        out = tmp_path / name / "out"
        wsi(*argv(own_inputs, out), *extra)
        outs.append(out / "slides" if case == "run" else out)
    first, second = (digests(out) for out in outs)
    assert first, f"{case} wrote nothing"
    if case == "run":
        for relpath in [p for p in first if p.endswith(RUN_RECORDS)]:
            a, b = (without_run_dates(out / relpath) for out in outs)
            assert a == b, f"{relpath} differs in more than the run's date and timings"
            del first[relpath], second[relpath]
    differ = sorted(p for p in first.keys() | second.keys() if first.get(p) != second.get(p))
    assert not differ, f"{case}: not the same bytes twice: {differ[:10]}"
    now = datetime.now(UTC)  # a date would be the same in both runs: look for it
    leaks = [str(tmp_path), now.strftime("%Y-%m-%d"), now.strftime("%Y:%m:%d")]
    for path in outs[0].rglob("*"):  # nor a machine's path inside a data file
        if path.is_file() and path.name not in RUN_RECORDS:
            data = path.read_bytes()
            assert not [s for s in leaks if s.encode() in data], path
    if case == "embed":
        store = json.loads((outs[0] / "CMU-1-Small-Region.zarr" / "zarr.json").read_text())
        assert store["attributes"]["wsi_ai"]["deterministic"] is True


def test_a_gpu_run_records_the_nondeterminism_it_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert torch_determinism(torch.device("cpu")) == {"deterministic": True}
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # what the engine sets
    fast = torch_determinism(cuda)
    assert fast["deterministic"] is False and fast["torch_determinism"]["cudnn_benchmark"]
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    strict = torch_determinism(cuda)
    assert strict["deterministic"] is True
    assert set(strict["torch_determinism"]) == {
        "device",
        "deterministic_algorithms",
        "cudnn_benchmark",
        "cudnn_deterministic",
        "tf32_matmul",
        "tf32_cudnn",
    }
