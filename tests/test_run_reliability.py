"""Batch runs survive crashes: ``kill -9`` of the run, and a Dask worker killed mid-slide."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wsi_ai.batch import run_batch
from wsi_ai.inputs import collect_inputs
from wsi_ai.pipeline_config import load_pipeline

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
HE = PIPELINES / "he-density.toml"


def copies(source: Path, folder: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        shutil.copy(source, folder / f"s{i}.svs")
    return folder


def finished(out: Path) -> dict[str, int]:
    """Finished slide folders and their slide.json mtimes; none may be partial."""
    slides = out / "slides"
    done = {}
    for folder in slides.iterdir() if slides.is_dir() else []:
        if folder.name.startswith("."):
            continue  # a temporary folder: never taken for finished
        assert (folder / "slide.json").is_file(), f"{folder} looks finished but is not"
        done[folder.name] = (folder / "slide.json").stat().st_mtime_ns
    return done


@pytest.mark.slow
def test_kill_9_then_rerun_keeps_what_finished(cmu_small: Path, tmp_path: Path) -> None:
    slides = copies(cmu_small, tmp_path / "scans", 6)
    out = tmp_path / "out"
    command = [
        str(Path(sys.executable).parent / "wsi-ai"),
        "run",
        str(slides),
        "-p",
        str(HE),
        "-o",
        str(out),
        "--set",
        "score.workers=1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if len([p for p in (out / "slides").glob("s*")]) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the batch ended before it could be killed: make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = finished(out)
    assert 2 <= len(before) < 6

    result = run_batch(collect_inputs([slides]), load_pipeline(HE), out)
    statuses = {o.input.name: o.status for o in result.outcomes}
    assert all(statuses[name] == "skipped" for name in before)
    assert sorted(statuses.values()).count("done") == 6 - len(before)
    after = finished(out)
    assert len(after) == 6
    assert {name: after[name] for name in before} == before  # not recomputed
    assert not [p.name for p in (out / "slides").iterdir() if p.name.startswith(".")]
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_killed_dask_worker_does_not_lose_a_slide(cmu_small: Path, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    slides = copies(cmu_small, tmp_path / "scans", 4)
    out = tmp_path / "out"
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        with Client(cluster) as client:
            pids = list(client.run(os.getpid).values())
            results = {}

            def batch() -> None:
                results["r"] = run_batch(
                    collect_inputs([slides]),
                    load_pipeline(HE),
                    out,
                    scheduler=cluster.scheduler_address,
                )

            thread = threading.Thread(target=batch)
            thread.start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not list((out / "slides").glob(".s*.tmp-*")):
                time.sleep(0.02)
            os.kill(pids[0], signal.SIGKILL)  # a worker dies in the middle of a slide
            thread.join(300)
            assert not thread.is_alive()
    finally:
        cluster.close()
    result = results["r"]
    assert [o.status for o in result.outcomes] == ["done"] * 4, [o.error for o in result.outcomes]
    assert len(finished(out)) == 4
    assert not [p.name for p in (out / "slides").iterdir() if p.name.startswith(".")]
