"""The GPU benchmark scripts (benchmarks/gpu/): run.sh's CPU dry mode end to end, and usage.

``run.sh --dry`` does every step of the GPU run on the CPU (module check, device log, a small
generated slide, ``wsi-ai bench`` with the small resnet18 card on a handful of patches, the
summary), with this test's interpreter first on PATH. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "benchmarks" / "gpu"
RATE_WORDS = ("per_s", "per_second", "rate", "throughput")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    for name in ("OUT", "PYTHONPATH"):
        env.pop(name, None)
    return env


def _rates(value: Any, key: str = "") -> Iterator[tuple[str, float]]:
    """Every number in the bench JSON whose key names a rate (patches/s and the like)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _rates(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _rates(v, key)
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and any(word in key.lower() for word in RATE_WORDS)
    ):
        yield key, float(value)


@pytest.mark.slow
def test_dry_run_benches_resnet18_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        ["bash", str(GPU / "run.sh"), "--dry", "--out", str(out), "--work", str(tmp_path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    assert run.returncode == 0, log
    assert (tmp_path / "bench-3000x2000.svs").is_file()
    for name in ("run.log", "env.txt", "bench-resnet18.txt"):
        assert (out / name).stat().st_size > 0, name
    assert "nvidia-smi" in (out / "env.txt").read_text()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu"
    assert "--dry" in summary["command"]
    assert set(summary["models"]) == {"resnet18"}, summary["models"].keys()
    record = summary["models"]["resnet18"]
    assert record["rc"] == 0
    assert "--model resnet18" in record["command"]
    assert "--random-init" in record["command"]
    result = json.loads((out / "bench-resnet18.json").read_text())
    assert record["result"] == result
    assert result["run"]["model"] == "resnet18"
    assert result["run"]["random_init"] is True
    assert result["run"]["settings"]["device"] == "cpu"
    (slide,) = result["slides"]
    assert slide["slide"] == "bench-3000x2000.svs"
    assert 0 < slide["patches"] <= 16
    stages = {row["stage"]: row["rate"] for row in slide["rows"]}
    assert stages["model alone"] > 0 and stages["end to end"] > 0, stages
    rates = list(_rates(result))
    assert rates, f"no patches/s figure in the bench JSON: {result}"
    assert all(rate > 0 for _, rate in rates), rates


def test_scripts_parse_and_refuse_unknown_options(tmp_path: Path) -> None:
    for script in ("wheels.sh", "run.sh"):
        check = subprocess.run(["bash", "-n", str(GPU / script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    run = subprocess.run(
        ["bash", str(GPU / "run.sh"), "--dry", "--bogus", "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "--bogus" in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
