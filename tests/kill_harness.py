"""Kill a wsi-ai command at chosen points with SIGKILL; what the kill-output tests share.

One helper process imports wsi-ai (and what its commands import lazily) once, then forks:
a *chain* process per chain of jobs (several chains at a time), and from it a *job* process
per job, so every run starts from the preloaded state and runs ``wsi_ai.cli.main`` as
``wsi-ai`` would. A job process counts, in its folder (the outputs' parent):

- renames into the folder (``os.replace``, patched): with ``kill_after = n`` it SIGKILLs
  itself after ``n`` of them (0: before the first);
- files opened for writing anywhere below the folder (an audit hook, so zarr's chunks, PIL's
  and tifffile's files and writes from worker threads count too): with ``kill_open = k`` it
  SIGKILLs itself on opening the k-th, part-way through writing; ``kill_open_fraction`` picks
  k from the opens of an uninterrupted run (its ``counts`` file).

Jobs run in phases (a phase starts when the previous one is done); chains of a phase run in
parallel, the jobs of a chain one after the other. A job may start from a copy of another
folder (``copy_from``) or with files of someone else's in it (``files``), leave a copy of
what it left (``snapshot``), or run only when an earlier job of its chain failed
(``only_if_failed``). Exit codes (negative: killed by that
signal; None: not run) come back by job id.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HELPER = r"""
import gc, json, math, os, shutil, signal, sys, threading, time, traceback
from pathlib import Path

import numpy as np
import distributed, openslide, PIL.PngImagePlugin, skimage.filters, timm  # noqa: F401

from wsi_ai.cli import main
from wsi_ai.score.he import patch_hematoxylin  # imported (and compiled) once, before forking
import wsi_ai.annotations, wsi_ai.slide.anonymize, wsi_ai.store, wsi_ai.tiling  # noqa: F401
import wsi_ai.tiling.preview, wsi_ai.tissue  # noqa: F401
import wsi_ai.export.geojson, wsi_ai.export.maps, wsi_ai.export.ome_zarr  # noqa: F401
import wsi_ai.export.qupath_project  # noqa: F401
import wsi_ai.engine.graph, wsi_ai.nn.predict, wsi_ai.train  # noqa: F401  (torch: never run here)

patch_hematoxylin(np.zeros((2, 2, 3), np.uint8))
assert threading.active_count() == 1, "a thread before fork(): the children could hang"
gc.freeze()  # the children's collections leave the shared pages alone: cheaper forks
WRITING = os.O_WRONLY | os.O_RDWR


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def job_process(job):
    folder = os.path.abspath(job["dir"])
    kill_after, kill_open = job.get("kill_after"), job.get("kill_open")
    renames, opens = [0], [0]
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        ours = os.path.dirname(os.path.abspath(os.fsdecode(dst))) == folder
        if ours and renames[0] == kill_after:
            die()
        real_replace(src, dst, *args, **kwargs)
        renames[0] += ours
        if ours and renames[0] == kill_after:
            die()

    def hook(event, args):
        if event != "open" or not isinstance(args[2], int) or not args[2] & WRITING:
            return
        if not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        if os.path.abspath(os.fsdecode(args[0])).startswith(folder + os.sep):
            opens[0] += 1
            if opens[0] == kill_open:
                die()

    os.replace = replace
    sys.addaudithook(hook)
    signal.alarm(job.get("timeout", 60))  # a hung run dies with SIGALRM (-14), not the suite
    try:
        main(job["args"], prog_name="wsi-ai")
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 99
    if job.get("counts"):
        Path(job["counts"]).write_text(json.dumps({"renames": renames[0], "opens": opens[0]}))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_chain(chain, out):
    codes = {}
    try:
        for job in chain:
            if job.get("only_if_failed") and codes.get(job["only_if_failed"]) == 0:
                codes[job["id"]] = None
                continue
            folder = Path(job["dir"])
            if job.get("copy_from"):
                shutil.copytree(job["copy_from"], folder, symlinks=True)
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in job.get("files", {}).items():
                (folder / name).write_text(text)
            if "kill_open_fraction" in job:
                total = json.loads(Path(job["counts_from"]).read_text())["opens"]
                job["kill_open"] = max(1, math.ceil(job["kill_open_fraction"] * total))
            start, pid = time.monotonic(), os.fork()
            if pid == 0:
                job_process(job)
            _, status = os.waitpid(pid, 0)
            codes[job["id"]] = os.waitstatus_to_exitcode(status)
            codes["seconds:" + job["id"]] = round(time.monotonic() - start, 3)
            if job.get("snapshot"):
                shutil.copytree(folder, job["snapshot"], symlinks=True)
    except BaseException:
        codes["error"] = traceback.format_exc()
    Path(out).write_text(json.dumps(codes))


spec = json.loads(Path(sys.argv[1]).read_text())
results = Path(sys.argv[2])
results.mkdir()
for p, phase in enumerate(spec["phases"]):
    queue, running = list(enumerate(phase)), {}
    while queue or running:
        while queue and len(running) < spec["workers"]:
            c, chain = queue.pop(0)
            pid = os.fork()
            if pid == 0:
                run_chain(chain, results / f"{p}-{c}.json")
                os._exit(0)
            running[pid] = c
        pid, _ = os.wait()
        running.pop(pid)
"""


# chains run side by side: one thread each for the numeric libraries
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def run_phases(root: Path, phases: list[list[list[dict[str, Any]]]], timeout: float = 240) -> dict:
    """Run ``phases`` (lists of chains of jobs) in one helper process; exit codes by job id."""
    spec = root / "jobs.json"
    spec.write_text(json.dumps({"phases": phases, "workers": max(2, min(4, os.cpu_count() or 2))}))
    script = root / "helper.py"
    script.write_text(HELPER)
    results = root / "results"
    done = subprocess.run(
        [sys.executable, str(script), str(spec), str(results)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ONE_THREAD, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    codes: dict[str, Any] = {}
    for part in sorted(results.glob("*.json")):
        found = json.loads(part.read_text())
        assert "error" not in found, found["error"]
        codes.update(found)
    seconds = {k.split(":", 1)[1]: v for k, v in codes.items() if k.startswith("seconds:")}
    (root / "seconds.json").write_text(json.dumps(seconds, indent=1))  # what to speed up
    return {k: v for k, v in codes.items() if not k.startswith("seconds:")}


def _normalised(path: Path) -> bytes:
    """A file's bytes, less what differs between two identical runs: a QuPath project's
    timestamps and its own address."""
    data = path.read_bytes()
    if path.name == "project.qpproj":
        record = json.loads(data)
        for key in ("createTimestamp", "modifyTimestamp", "uri"):
            record.pop(key, None)
        return json.dumps(record, sort_keys=True).encode()
    return data


def digest(path: Path) -> str | None:
    """The sha256 of a file, or of a folder's every file and its relative path; None when
    ``path`` does not exist."""
    if not (path.exists() or path.is_symlink()):
        return None
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        sha.update(str(file.relative_to(path)).encode() + b"\0")
        sha.update(hashlib.sha256(_normalised(file)).digest())
    return sha.hexdigest()


def state(path: Path, old: str | None, new: str | None) -> str:
    """``absent``, ``old``, ``new`` or ``mixed`` (neither: a half-written or mixed output)."""
    found = digest(path)
    if found is None:
        return "absent"
    return "old" if found == old else "new" if found == new else "mixed"


def leftovers(folder: Path) -> list[str]:
    """Hidden names a run left in ``folder``: temporaries, aside copies, unit journals."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
