"""The records of a batch run: its lock, its log, ``summary.csv``, ``errors.json``, ``run.json``.

:class:`SlideOutcome` is one input's outcome; :func:`write_summary` turns the outcomes into
``summary.csv`` (one row per input, manifest columns carried) and ``errors.json`` (the failed
ones with their one-line reasons), each replaced atomically after every slide, so a batch
killed at 3 a.m. still says what it finished. :func:`run_lock` refuses a second run on the
same output folder; :func:`run_log` sends the run's log to ``OUT/logs/``.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import os
import platform
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from wsi_ai import __version__
from wsi_ai.errors import OutputError
from wsi_ai.inputs import SlideInput
from wsi_ai.outputs import atomic_output
from wsi_ai.qc import cohort_outliers
from wsi_ai.report import triage_order, write_cohort_report

log = logging.getLogger(__name__)

LOCK_NAME = ".wsi-ai-run.lock"


@dataclass
class SlideOutcome:
    """One input's outcome: ``done`` (computed now), ``skipped`` (complete before) or ``failed``."""

    input: SlideInput
    status: str
    record: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``OUT/.wsi-ai-run.lock``; refuse when another live run holds it."""
    path = out / LOCK_NAME
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutputError(
            f"another wsi-ai run is writing this folder ({holder}); wait for it to finish or "
            "choose another -o",
            out,
        ) from None
    handle.seek(0)
    stale = handle.read().strip()
    if stale:
        log.info(
            "%s: taking over the lock of a run that ended without releasing it (%s)", out, stale
        )
    handle.seek(0)
    handle.truncate()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def versions() -> dict[str, str | None]:
    names = (
        "numpy",
        "torch",
        "timm",
        "dask",
        "distributed",
        "zarr",
        "openslide-python",
        "openslide-bin",
        "tiffslide",
        "tifffile",
        "imagecodecs",
        "shapely",
        "numba",
    )
    out: dict[str, str | None] = {"python": platform.python_version(), "wsi-ai": __version__}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


SUMMARY_COLUMNS = (
    "slide",
    "status",
    "error",
    "label",
    "path",
    "patches",
    "tissue_fraction",
    "tissue_area_mm2",
    "regions",
    "class",
    "probability",
    "confidence",
    "random_init",
    "blur_fraction",
    "pen_fraction",
    "bubble_fraction",
    "qc_flags",
    "seconds",
    "warnings",
)


def qc_flags(outcomes: Sequence[SlideOutcome]) -> list[list[str]]:
    """Per outcome, the QC measures that are outliers of the batch (robust z-score)."""
    measured = [i for i, o in enumerate(outcomes) if o.record.get("qc")]
    flags: list[list[str]] = [[] for _ in outcomes]
    found = cohort_outliers([outcomes[i].record["qc"] for i in measured])
    for index, names in zip(measured, found, strict=True):
        flags[index] = names
    return flags


def summary_rows(outcomes: Sequence[SlideOutcome]) -> list[dict[str, Any]]:
    """One row per input, ranked for triage (failures, then most suspicious, least sure)."""
    rows = []
    for o, flags in zip(outcomes, qc_flags(outcomes), strict=True):
        r, pred = o.record, o.record.get("prediction") or {}
        row: dict[str, Any] = {
            "slide": o.input.name,
            "status": o.status,
            "error": o.error or "",
            "label": o.input.label or "",
            "path": str(o.input.path),
        }
        for key in ("patches", "tissue_fraction", "tissue_area_mm2", "regions", "random_init"):
            row[key] = r.get(key, "")
        row.update({k: pred.get(k, "") for k in ("class", "probability", "confidence")})
        qc = r.get("qc") or {}
        row.update({k: qc.get(k, "") for k in ("blur_fraction", "pen_fraction", "bubble_fraction")})
        row["qc_flags"] = "; ".join(flags)
        row["seconds"] = round(sum((r.get("stages") or {}).values()), 3) if r else ""
        row["warnings"] = "; ".join(r.get("warnings", []))
        rows.append(row | dict(o.input.metadata))
    return triage_order(rows)


def write_summary(out: Path, outcomes: Sequence[SlideOutcome]) -> None:
    """``summary.csv``, ``errors.json`` and ``summary.html``, each replaced atomically."""
    rows = summary_rows(outcomes)
    extra = [k for r in rows for k in r if k not in SUMMARY_COLUMNS]
    columns = [*SUMMARY_COLUMNS, *dict.fromkeys(extra)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    errors = [
        {
            "slide": o.input.name,
            "path": str(o.input.path),
            "error": o.error,
            "identity": o.identity,
        }
        for o in outcomes
        if o.status == "failed"
    ]
    for name, content in (
        ("summary.csv", text.getvalue()),
        ("errors.json", json.dumps(errors, indent=2) + "\n"),
    ):
        with atomic_output(out / name, overwrite=True) as tmp:
            tmp.write_text(content)
    write_cohort_report(out, rows)


@contextmanager
def run_log(out: Path) -> Iterator[Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out / "logs" / f"run-{stamp}-{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    root, package = logging.getLogger(), logging.getLogger("wsi_ai")
    old_level = package.level
    # the file gets every note; the console handlers keep showing what they showed before
    quiet = [h for h in root.handlers if h.level == logging.NOTSET]
    for other in quiet:
        other.setLevel(root.getEffectiveLevel())
    package.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        package.setLevel(old_level)
        for other in quiet:
            other.setLevel(logging.NOTSET)
        handler.close()


def write_run(out: Path, run: dict[str, Any]) -> None:
    with atomic_output(out / "run.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(run, indent=2, default=str) + "\n")
