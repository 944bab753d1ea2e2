"""``kill -9`` at any point of any command that writes leaves each output whole or absent:
the complete old result (same bytes), the complete new one (same bytes as an uninterrupted
run) or nothing; never half a file or folder, never the parts of one unit from two runs.

:data:`CASES` is the table, one row per command (and output format): its outputs grouped in
units, the decision (``why``), how many renames a first and an ``--overwrite`` run make into
the output folder, and the kill points part-way through writing. The last name of a unit
is its marker, what a reader looks for: without it there is no result and the unit's other
files are left-overs the next run clears; with it, every file of the unit is from the same
run. On ``--overwrite`` a unit's old marker is moved aside first (one more rename), a
folder is moved aside before the new one comes in (:mod:`wsi_ai.outputs`).

Each command is killed (:mod:`tests.kill_harness`) after 0, 1, ... of its renames and
part-way through writing its files, on a first run and on an ``--overwrite`` run over the
old result. Then it is run again as a user would: the same command (refused when the kill
left a result, as it must be without ``--overwrite``; then with it); that run must succeed
and leave the new result and no hidden left-over. Separately, each output of each command
is found taken by a file of someone else's: the run is refused before it writes anything.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

from tests.kill_harness import digest, leftovers, run_phases, state
from wsi_ai.annotations.model import Annotation
from wsi_ai.errors import InvalidInputError, OutputExistsError
from wsi_ai.export.geojson import write_geojson
from wsi_ai.nn.predict import read_prediction
from wsi_ai.outputs import atomic_outputs
from wsi_ai.store import read_table, write_features

SLIDE = "CMU-1-Small-Region"
Args = Callable[[dict[str, Path], Path, bool], list[Any]]


@dataclass(frozen=True)
class Case:
    units: tuple[tuple[str, ...], ...]  # output names in the folder; a unit's marker last
    renames: tuple[int, int]  # into the folder: a first run, an --overwrite run
    writes: tuple[float, ...]  # kill points part-way through writing: parts of the opens
    args: Args  # (inputs, folder, new result?) -> the command's arguments
    why: str  # the decision about its outputs


def _grid(out: str) -> Args:
    return lambda i, f, new: [
        *("tiles", i["slide"], "--mpp", "2", "--no-tissue", "--size", 112 if new else 224),
        *("-o", f / out, *(("--preview", f / "grid.png") if out.endswith(".csv") else ())),
    ]


def _annotations(out: str) -> Args:
    return lambda i, f, new: [
        "annotations",
        "convert",
        i["ann-new" if new else "ann-old"],
        "-o",
        f / out,
    ]


CASES: dict[str, Case] = {
    "tissue": Case(
        (("tissue.png", "tissue.geojson"),),
        (2, 3),
        (),  # part-way: as renames0, with less written; its runs cost most
        lambda i, f, new: [
            *("tissue", i["slide" if new else "skin"], "-o", f / "tissue.geojson"),
            *("--mask", f / "tissue.png"),
        ],
        "one unit: the mask is the GeoJSON's raster (output_unit, the GeoJSON last)",
    ),
    "tiles-csv": Case(
        (("grid.csv.json", "grid.csv"), ("grid.png",)),
        (3, 4),
        (),  # part-way: as renames0, with less written; its runs cost most
        _grid("grid.csv"),
        "the table and its sidecar one unit; the --preview PNG is a picture of it, written "
        "after it and on its own (a kill between them leaves the new table, the old picture)",
    ),
    "tiles-parquet": Case(
        (("grid.parquet",),),
        (1, 1),
        (),  # written by Arrow's C++: no opens to count
        _grid("grid.parquet"),
        "one file, its metadata inside",
    ),
    "score-he": Case(
        (("scores.csv.json", "scores.csv"),),
        (2, 3),
        (),  # part-way: as renames0, with less written; its runs cost most
        lambda i, f, new: [
            *("score-he", i["slide"], "--mpp", 2, "--no-tissue", "--workers", 1),
            *(("--size", 112, "--read-mpp", 8) if new else ("--size", 224)),
            *("-o", f / "scores.csv"),
        ],
        "the table and its sidecar one unit (write_table)",
    ),
    "stitch": Case(
        (("maps",),),
        (1, 2),
        (0.5,),
        lambda i, f, new: [
            *("stitch", i["scores"], "--slide", i["slide"], "--thumbnail-size", 96 if new else 64),
            *("-o", f / "maps"),
        ],
        "OUTDIR is one folder (PNGs, regions, heatmap.ome.zarr), renamed whole",
    ),
    "convert": Case(
        (("slide.ome.zarr",),),
        (1, 2),
        (0.3, 0.7),
        lambda i, f, new: [
            *("convert", i["slide"], "--workers", 1, "--chunk", 1024 if new else 2048),
            *("-o", f / "slide.ome.zarr"),
        ],
        "one OME-Zarr folder, renamed whole",
    ),
    "annotations-geojson": Case(
        (("ann.geojson",),), (1, 1), (0.5,), _annotations("ann.geojson"), "one file"
    ),
    "annotations-xml": Case((("ann.xml",),), (1, 1), (0.5,), _annotations("ann.xml"), "one file"),
    "embed": Case(
        ((f"{SLIDE}.zarr",),),
        (1, 2),
        (0.5,),
        lambda i, f, new: [
            *("embed", i["slide"], "--model", i["card"], "--random-init", "--device", "cpu"),
            *("--mpp", 8 if new else 4, "--size", 32, "-o", f),
        ],
        "one features store per slide (a Zarr folder), renamed whole",
    ),
    "predict": Case(
        (("slide.patch_scores.csv", "slide.json"),),
        (2, 3),
        (0.5,),
        lambda i, f, new: [
            *(
                "predict",
                "--model",
                i["model"],
                "--features",
                i["features-new" if new else "features-old"],
            ),
            *("--device", "cpu", "-o", f),
        ],
        "one unit per slide: the JSON means finished (read_prediction), the CSV renamed first",
    ),
    "export-qupath": Case(
        (("project",),),
        (1, 2),
        (0.5,),
        lambda i, f, new: [
            "export-qupath",
            i["run-new" if new else "run-old"],
            "-o",
            f / "project",
        ],
        "one project folder, renamed whole",
    ),
    "anonymize": Case(
        (("anon.tif",),),
        (1, 1),
        (0.5,),
        lambda i, f, new: ["anonymize", i["slide"] if new else i["skin"], "-o", f / "anon.tif"],
        "one file",
    ),
}
MODES = ("first", "overwrite")


def _kills(case: Case, mode: str) -> list[tuple[str, float]]:
    renames = case.renames[MODES.index(mode)]
    return [("renames", n) for n in range(renames + 1)] + [("writes", w) for w in case.writes]


def _sid(name: str, mode: str, kill: tuple[str, float]) -> str:
    return f"{name}-{mode}-{kill[0]}{kill[1]:g}"


KILLS = [
    (name, mode, kill)
    for name, case in CASES.items()
    for mode in MODES
    for kill in _kills(case, mode)
]
SCENARIOS = [pytest.param(*key, id=_sid(*key)) for key in KILLS]
# every output of every command, with a file of someone else's at its name
BLOCKS = [(name, n) for name, case in CASES.items() for unit in case.units for n in unit]
BLOCKED = [pytest.param(*key, id=f"{key[0]}-{key[1]}") for key in BLOCKS]
FOREIGN = "someone else's file\n"


def _job(id: str, folder: Path, args: list[Any], **extra: Any) -> dict[str, Any]:
    return {"id": id, "dir": str(folder), "args": [str(a) for a in args], **extra}


def _argv(case: Case, inputs: dict[str, Path], folder: Path, new: bool, over: bool) -> list[Any]:
    return [*case.args(inputs, folder, new), *(["--overwrite"] if over else [])]


def _inputs(root: Path, cmu_small: Path, skin: Path) -> tuple[dict[str, Path], list[list[dict]]]:
    """What the commands read, and the chains (phase 0) that make the rest: a score table
    for ``stitch``, a trained run (a tiny ABMIL on 6 synthetic stores) for ``predict``."""
    from tests.test_engine import tiny_card

    root.mkdir()
    inputs = {"slide": cmu_small, "skin": skin, "card": tiny_card(root, classes=False)}
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"x": np.arange(12) * 224, "y": 0, "width": 224, "height": 224})
    attrs = {"model": {"name": "toy", "sha256": "ab"}}
    labels = []
    for i in range(6):
        emb = rng.normal(size=(12, 8)) + i % 2
        write_features(root / "train" / f"s{i}.zarr", rows, embeddings=emb, attrs=attrs)
        labels.append({"slide": f"s{i}", "label": "pos" if i % 2 else "neg"})
    pd.DataFrame(labels).to_csv(root / "labels.csv", index=False)
    for k, age in enumerate(("old", "new")):
        store = inputs[f"features-{age}"] = root / f"features-{age}" / "slide.zarr"
        write_features(store, rows, embeddings=rng.normal(size=(12, 8)), attrs=attrs)
        items = [
            Annotation(box(40 * j, 30 * j, 40 * j + 90, 30 * j + 60), "Tumor", name=f"r{j}")
            for j in range(2 + k)
        ]
        write_geojson(inputs.setdefault(f"ann-{age}", root / f"{age}.geojson"), items)
        run = inputs[f"run-{age}"] = root / f"run-{age}"  # what export-qupath reads of a run
        (run / "slides" / SLIDE).mkdir(parents=True)
        (run / "run.json").write_text("{}")
        record = {"slide": {"path": str(cmu_small), "backend": "openslide"}}
        (run / "slides" / SLIDE / "slide.json").write_text(json.dumps(record))
        write_geojson(run / "slides" / SLIDE / "regions.geojson", items)
    inputs["scores"], inputs["model"] = root / "scores.csv", root / "model"
    score = ["score-he", cmu_small, "--mpp", 2, "--no-tissue", "--workers", 1]
    train = ["train", "--features", root / "train", "--labels", root / "labels.csv"]
    train += ["--aggregator", "abmil", "--folds", 2, "--epochs", 1, "--width", 8]
    setup = [
        [_job("setup-score", root, [*score, "-o", inputs["scores"]])],
        [_job("setup-train", root, [*train, "--device", "cpu", "-o", inputs["model"]])],
    ]
    return inputs, setup


def _scenario(
    root: Path, inputs: dict[str, Path], name: str, mode: str, kill: tuple[str, float]
) -> list[dict[str, Any]]:
    """A kill, then the reruns a user makes: the same command, then (when it is refused: a
    first run that left a result) with --overwrite."""
    case, sid = CASES[name], _sid(name, mode, kill)
    folder, overwrite = root / sid, mode == "overwrite"
    args = _argv(case, inputs, folder, True, overwrite)
    job = _job(f"{sid}-killed", folder, args, snapshot=str(root / f"{sid}-killed"))
    if overwrite:
        job["copy_from"] = str(root / f"{name}-old")
    if kill[0] == "renames":
        job["kill_after"] = int(kill[1])
    else:
        job["kill_open_fraction"], job["counts_from"] = kill[1], str(root / f"{name}-new.counts")
    rerun = _job(f"{sid}-rerun", folder, args)
    again = _job(f"{sid}-again", folder, _argv(case, inputs, folder, True, True))
    return [job, rerun] if overwrite else [job, rerun, {**again, "only_if_failed": rerun["id"]}]


@pytest.fixture(scope="module")
def killed(
    cmu_small: Path, skin_striped: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Run every job: exit codes by job id, and ``"root"``, the folder holding ``inputs/``,
    ``<command>-old``, ``<command>-new``, each scenario's folder and the copy of it the kill
    left (``<scenario>-killed``), and each blocked run's ``blocked-<command>-<output>``."""
    root = tmp_path_factory.mktemp("kill")
    inputs, setup = _inputs(root / "inputs", cmu_small, skin_striped)
    base = [
        [
            _job(
                f"{name}-{age}",
                f,
                _argv(case, inputs, f, age == "new", False),
                counts=f"{f}.counts",
            )
        ]
        for name, case in CASES.items()
        for age in ("old", "new")
        for f in [root / f"{name}-{age}"]
    ]
    for name, n in BLOCKS:
        f = root / f"blocked-{name}-{n}"
        args = _argv(CASES[name], inputs, f, True, False)
        base.append([_job(f.name, f, args, files={n: FOREIGN}, counts=f"{f}.counts")])
    scenarios = [_scenario(root, inputs, *key) for key in KILLS]
    return {"root": root, **run_phases(root, [setup, base, scenarios])}


def _states(case: Case, folder: Path, root: Path, name: str) -> dict[str, str]:
    names = [n for unit in case.units for n in unit]
    return {
        n: state(folder / n, digest(root / f"{name}-old" / n), digest(root / f"{name}-new" / n))
        for n in names
    }


def _readers_agree(name: str, folder: Path, states: dict[str, str]) -> None:
    """A reader finds what the marker says: a whole unit, or nothing (never 'refused')."""
    if name in ("score-he", "tiles-csv", "tiles-parquet"):
        table = CASES[name].units[0][-1]
        if states[table] == "absent":
            with pytest.raises(InvalidInputError, match="no such table"):
                read_table(folder / table)
        else:
            read_table(folder / table)
    if name == "predict":
        found = read_prediction(folder, "slide")
        assert (found is None) == (states["slide.json"] == "absent")


@pytest.mark.parametrize(("name", "mode", "kill"), SCENARIOS)
def test_a_killed_write_leaves_old_new_or_nothing(
    killed: dict[str, Any], name: str, mode: str, kill: tuple[str, float]
) -> None:
    root, case, sid = killed["root"], CASES[name], _sid(name, mode, kill)
    assert killed["setup-score"] == killed["setup-train"] == 0
    assert killed[f"{name}-old"] == killed[f"{name}-new"] == 0
    for unit in case.units:  # the scenarios can tell old from new
        for n in unit:
            assert digest(root / f"{name}-old" / n) != digest(root / f"{name}-new" / n), n

    assert killed[f"{sid}-killed"] == -signal.SIGKILL  # the kill did happen
    snapshot = root / f"{sid}-killed"
    states = _states(case, snapshot, root, name)
    assert "mixed" not in states.values(), states  # never half an output
    for unit in case.units:
        marker = states[unit[-1]]
        if marker != "absent":  # a unit with its marker: all of it from one run
            assert {states[n] for n in unit} == {marker}, (unit, states)
    renames = case.renames[MODES.index(mode)]
    if kill == ("renames", 0):
        assert set(states.values()) == {"absent" if mode == "first" else "old"}, states
        assert leftovers(snapshot)  # temporaries the next run must clean
    if kill == ("renames", renames):
        assert set(states.values()) == {"new"}, states
    _readers_agree(name, snapshot, states)

    shown = any(states[unit[-1]] != "absent" for unit in case.units)
    refused = mode == "first" and shown  # a result is there: not replaced without --overwrite
    assert killed[f"{sid}-rerun"] == (1 if refused else 0)
    if mode == "first":
        assert killed[f"{sid}-again"] == (0 if refused else None)
    folder = root / sid
    assert set(_states(case, folder, root, name).values()) == {"new"}
    assert leftovers(folder) == []


@pytest.mark.parametrize(("name", "output"), BLOCKED)
def test_an_existing_output_is_refused_before_anything_is_written(
    killed: dict[str, Any], name: str, output: str
) -> None:
    """Any one output there (not ours) refuses the run, every output checked first: the
    file is kept and nothing else appears, not even a temporary."""
    folder = killed["root"] / f"blocked-{name}-{output}"
    assert killed[f"blocked-{name}-{output}"] == 1
    assert (folder / output).read_text() == FOREIGN
    assert sorted(p.name for p in folder.iterdir()) == [output]
    counts = json.loads(Path(f"{folder}.counts").read_text())
    assert counts == {"renames": 0, "opens": 0}


def test_a_unit_without_its_marker_is_cleared_only_with_its_journal(tmp_path: Path) -> None:
    """A file of a unit a killed run renamed is removed by the next run (its journal names
    it); the same file without a journal is someone's: refused without --overwrite."""
    table, sidecar = tmp_path / "t.csv", tmp_path / "t.csv.json"
    sidecar.write_text("{}")
    with pytest.raises(OutputExistsError), atomic_outputs([sidecar, table]):
        pass
    (tmp_path / ".t.csv.unit-0123abcd").write_text(json.dumps(["t.csv.json", "../x", "t.csv"]))
    with atomic_outputs([sidecar, table]) as (s, t):
        s.write_text("new")
        t.write_text("x")
    assert sidecar.read_text() == "new" and table.read_text() == "x"
    assert leftovers(tmp_path) == []
