"""``kill -9`` while a table and its sidecar are written leaves the old pair, the new pair,
or nothing; never a pair that reads as a result it is not.

One helper process imports wsi-ai once, then forks a child per run of ``wsi-ai score-he`` or
``wsi-ai tiles``. A child's ``os.replace`` is patched to SIGKILL the child after ``n`` of the
output's renames (0: both temporaries written, none renamed; 1: the sidecar in place; 2: both
in place). The helper copies what the kill left, then runs the same command again, as a user
would. Every state is checked with :func:`read_table`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from wsi_ai.errors import InvalidInputError
from wsi_ai.store import read_table

HELPER = r"""
import json, os, shutil, signal, sys
from pathlib import Path

import numpy as np

from wsi_ai.cli import main
from wsi_ai.score.he import patch_hematoxylin  # imported (and compiled) once, before forking
import wsi_ai.store, wsi_ai.tiling, wsi_ai.tissue  # noqa: F401

patch_hematoxylin(np.zeros((2, 2, 3), np.uint8))
real_replace = os.replace
results = []
for job in json.loads(Path(sys.argv[1]).read_text()):
    folder = Path(job["dir"])
    if job.get("copy_from"):
        shutil.copytree(job["copy_from"], folder)
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.fork()
    if pid == 0:
        kill_after, done = job.get("kill_after"), [0]

        def replace(src, dst, *args, **kwargs):
            ours = Path(dst).parent == folder
            if ours and done[0] == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst, *args, **kwargs)
            done[0] += ours
            if ours and done[0] == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace
        try:
            main(job["args"], prog_name="wsi-ai")
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append(os.waitstatus_to_exitcode(status))
    if job.get("snapshot"):
        shutil.copytree(folder, job["snapshot"])
Path(sys.argv[2]).write_text(json.dumps(results))
"""

COMMANDS = {
    # (output name, arguments of the old result, arguments of the new one)
    "score-he": ("scores.csv", ("--size", "224"), ("--size", "112", "--read-mpp", "8")),
    "tiles": ("grid.csv", ("--size", "224"), ("--size", "112")),
}
COMMON = ("--mpp", "2", "--no-tissue")
MODES = ("first", "overwrite")
KILLS = (0, 1, 2)
# What a reader finds after the kill: the sidecar is renamed into place before the table.
EXPECTED = {
    ("first", 0): "nothing",
    ("first", 1): "nothing",  # a sidecar without its table: no table
    ("first", 2): "new",
    ("overwrite", 0): "old",
    ("overwrite", 1): "refused",  # the old table with the new sidecar
    ("overwrite", 2): "new",
}


def _args(command: str, slide: Path, out: Path, new: bool, overwrite: bool) -> list[str]:
    _, old_args, new_args = COMMANDS[command]
    args = [command, str(slide), *COMMON, *(new_args if new else old_args), "-o", str(out)]
    return [*args, "--overwrite"] if overwrite else args


@pytest.fixture(scope="module")
def killed(cmu_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    """Run every scenario in one helper process: ``{(command, mode, n): (killed, rerun)}``
    exit codes, and ``"root"``: the folder of ``<command>-old``, ``<command>-new``, each
    scenario's ``<command>-<mode>-<n>`` and the copy of it the kill left (``...-killed``)."""
    root = tmp_path_factory.mktemp("kill")
    jobs: list[dict[str, Any]] = []
    keys: list[Any] = []
    for command, (name, _, _) in COMMANDS.items():
        for age in ("old", "new"):
            folder = root / f"{command}-{age}"
            args = _args(command, cmu_small, folder / name, age == "new", False)
            jobs.append({"dir": str(folder), "args": args})
            keys.append((command, age))
        for mode in MODES:
            for n in KILLS:
                folder = root / f"{command}-{mode}-{n}"
                args = _args(command, cmu_small, folder / name, True, mode == "overwrite")
                job = {"dir": str(folder), "args": args, "kill_after": n}
                job["snapshot"] = str(root / f"{command}-{mode}-{n}-killed")
                if mode == "overwrite":
                    job["copy_from"] = str(root / f"{command}-old")
                jobs += [job, {"dir": str(folder), "args": args}]  # killed, then run again
                keys += [(command, mode, n, "killed"), (command, mode, n, "rerun")]
    (root / "jobs.json").write_text(json.dumps(jobs))
    script = root / "helper.py"
    script.write_text(HELPER)
    done = subprocess.run(
        [sys.executable, str(script), str(root / "jobs.json"), str(root / "results.json")],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads((root / "results.json").read_text())
    return {"root": root, **dict(zip(keys, codes, strict=True))}


def _state(path: Path, old: tuple[pd.DataFrame, dict], new: tuple[pd.DataFrame, dict]) -> str:
    """What a reader of ``path`` finds: "old", "new", "nothing" or "refused"."""
    try:
        table, meta = read_table(path)
    except InvalidInputError as err:
        if "no such table" in err.reason:
            return "nothing"
        assert "do not belong together (interrupted write?): rerun the command" in err.reason
        return "refused"
    for name, (want_table, want_meta) in (("old", old), ("new", new)):
        if meta == want_meta and table.equals(want_table):
            return name
    raise AssertionError(f"{path}: a table that is neither the old nor the new result")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("n", KILLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_killed_write_leaves_old_new_or_nothing(
    killed: dict[str, Any], cmu_small: Path, command: str, mode: str, n: int
) -> None:
    root = killed["root"]
    name = COMMANDS[command][0]
    assert killed[command, "old"] == killed[command, "new"] == 0
    old = read_table(root / f"{command}-old" / name)
    new = read_table(root / f"{command}-new" / name)
    assert not old[0].equals(new[0])  # the scenarios can tell them apart

    assert killed[command, mode, n, "killed"] == -signal.SIGKILL  # the kill did happen
    snapshot = root / f"{command}-{mode}-{n}-killed"
    assert _state(snapshot / name, old, new) == EXPECTED[mode, n]
    if n == 0:
        assert _leftovers(snapshot)  # temporaries the next run must clean

    complete = mode == "first" and n == 2  # nothing to redo; no --overwrite: refused
    assert killed[command, mode, n, "rerun"] == (1 if complete else 0)
    folder = root / f"{command}-{mode}-{n}"
    assert _state(folder / name, old, new) == "new"
    assert _leftovers(folder) == []
