"""Many slides through one pipeline: resumable, fault-isolated, locally or on a Dask cluster.

``run_batch(inputs, pipeline, OUT)`` runs :func:`wsi_ai.pipeline.run_slide` on every slide and
keeps the batch promises:

* each slide is written into ``OUT/slides/.<name>.tmp-*`` and renamed into
  ``OUT/slides/<name>/`` only when complete (with its ``slide.json`` record), so a crash never
  leaves a half-written slide that looks finished; leftovers of a killed run are removed by the
  next one;
* a rerun skips a slide whose folder is complete and whose identity matches: the input
  file's :func:`~wsi_ai.slide.identity.fingerprint`, the pipeline's settings hash and the
  model card, weights and aggregator hashes (``force`` recomputes everything); a slide that
  failed before with the same identity is reported again without rerunning unless
  ``retry_failed``;
* a slide that fails is a row of ``OUT/summary.csv`` and an entry of ``OUT/errors.json`` with
  its one-line reason, and the batch goes on; ``OUT/run.json`` records versions, the pipeline,
  model hashes, the machine and the time spent per stage; ``OUT/logs/`` holds each run's log;
* ``OUT/.wsi-ai-run.lock`` (an OS file lock, released when the process dies, so a killed run
  never leaves a dead end) refuses a second run on the same OUT.

Where slides run is the engine's scheduler choice (:func:`wsi_ai.engine.cluster.parse_scheduler`):
this process, ``processes:N`` (a local cluster of N worker processes) or ``tcp://HOST:PORT``
(slides, OUT, cards and weights at the same paths on every worker). A worker that dies is
replaced and its slide rerun by Dask. Each worker builds its models once (:class:`WorkerModels`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsi_ai import __version__
from wsi_ai.errors import OutputError, failure_message
from wsi_ai.inputs import SlideInput
from wsi_ai.outputs import MARKER
from wsi_ai.pipeline import run_slide
from wsi_ai.pipeline_config import Pipeline, file_sha256
from wsi_ai.report import write_slide_report
from wsi_ai.run_records import (
    SlideOutcome,
    machine,
    run_lock,
    run_log,
    versions,
    write_run,
    write_summary,
)
from wsi_ai.slide import open_slide
from wsi_ai.slide.identity import fingerprint

log = logging.getLogger(__name__)

SLIDE_RECORD = "slide.json"
Progress = Callable[[str, int, int], None]  # ("slides" | "patches", done, total)


@functools.lru_cache(maxsize=2)
def _aggregator(run: str, device: str) -> Any:
    from wsi_ai.nn.predict import load_run

    return load_run(Path(run), device)


class WorkerModels:
    """A worker's models, built on first use and kept for the slides that follow."""

    def backbone(self, pipeline: Pipeline) -> Any:
        from wsi_ai.engine.graph import cached_model, worker_device

        config = pipeline.engine_config()
        return cached_model(config.model_config, worker_device(config))

    def aggregator(self, pipeline: Pipeline) -> Any:
        assert pipeline.aggregator.run is not None
        return _aggregator(pipeline.aggregator.run, pipeline.aggregator.device)


WORKER_MODELS = WorkerModels()


def model_identity(pipeline: Pipeline) -> dict[str, Any]:
    """Hashes of the card, weights and aggregator a pipeline uses (what a resume compares)."""
    if not pipeline.uses_model:
        return {}
    from wsi_ai.nn.cards import find_card
    from wsi_ai.nn.weights import file_sha256 as weights_sha256

    m = pipeline.model
    card = find_card(m.card)
    weights = Path(m.weights) if m.weights else card.weights
    sha = None if m.random_init else (m.sha256 or card.sha256)
    if sha is None and not m.random_init and weights is not None and weights.is_file():
        sha = weights_sha256(weights)
    identity: dict[str, Any] = {
        "card": card.name,
        "card_hash": card.card_hash,
        "weights_sha256": sha,
        "random_init": m.random_init,
    }
    if pipeline.score.kind == "mil":
        from wsi_ai.nn.aggregator_card import CARD_NAME, read_card

        assert pipeline.aggregator.run is not None
        agg = read_card(Path(pipeline.aggregator.run) / CARD_NAME)
        identity["aggregator_sha256"] = agg.sha256
    return identity


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an older result."""
    if final.exists():
        backup = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, backup)
        os.replace(tmp, final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, final)


def process_slide(
    item: SlideInput,
    pipeline: Pipeline,
    slides_dir: Path,
    identity: dict[str, Any],
    progress: Callable[[int, int], None] | None = None,
    raise_errors: bool = False,
) -> SlideOutcome:
    """Run one slide into ``slides_dir/<name>/`` (all or nothing); a worker's unit of work."""
    start = time.perf_counter()
    final = slides_dir / item.name
    tmp = slides_dir / f".{item.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        record = run_slide(
            item.path,
            pipeline,
            tmp,
            slide_mpp=item.slide_mpp,
            default_mpp=item.default_mpp,
            models=WORKER_MODELS,
            progress=progress,
        )
        record.update(identity=identity, pipeline=pipeline.name, wsi_ai_version=__version__)
        record["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        if pipeline.export.report:
            with open_slide(item.path) as slide:  # the report reads pixels, not the MPP
                write_slide_report(tmp, record, slide)
        (tmp / MARKER).write_text("written by wsi-ai\n")
        (tmp / SLIDE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _install(tmp, final)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if raise_errors:
            raise
        log.debug("%s failed", item.path, exc_info=True)
        seconds = time.perf_counter() - start
        return SlideOutcome(item, "failed", {}, failure_message(item.path, err), identity, seconds)
    return SlideOutcome(item, "done", record, None, identity, time.perf_counter() - start)


# -- the batch ---------------------------------------------------------------------------


def _prepare_out(out: Path) -> None:
    try:
        (out / "slides").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot create the output folder ({err.strerror or err}); choose another -o", out
        ) from err
    if not os.access(out, os.W_OK) or not os.access(out / "slides", os.W_OK):
        raise OutputError("the output folder is not writable; choose another -o", out)


def _clean_leftovers(slides_dir: Path) -> None:
    for leftover in slides_dir.glob(".*"):
        if ".tmp-" in leftover.name or ".old-" in leftover.name:
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("removed %s, left by an interrupted run", leftover.name)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _previous(
    item: SlideInput,
    slides_dir: Path,
    failed: dict[str, Any],
    identity: dict[str, Any],
    force: bool,
    retry_failed: bool,
) -> SlideOutcome | None:
    """The outcome an earlier run already gives this slide, or ``None`` to run it."""
    if force:
        return None
    record = _read_json(slides_dir / item.name / SLIDE_RECORD)
    if isinstance(record, dict) and record.get("identity") == identity:
        return SlideOutcome(item, "skipped", record, None, identity)
    before = failed.get(item.name)
    if not retry_failed and isinstance(before, dict) and before.get("identity") == identity:
        reason = f"{before.get('error')} [failed in an earlier run; --retry-failed runs it again]"
        return SlideOutcome(item, "failed", {}, reason, identity)
    return None


@dataclass
class BatchResult:
    outcomes: list[SlideOutcome]
    run: dict[str, Any]

    @property
    def failed(self) -> list[SlideOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _identity(item: SlideInput, pipeline: Pipeline, models: dict[str, Any]) -> dict[str, Any]:
    return {
        "input": fingerprint(item.path),
        "pipeline": pipeline.config_hash(),
        "models": models,
        "slide_mpp": item.slide_mpp,
        "default_mpp": item.default_mpp,
    }


def plan(
    inputs: Sequence[SlideInput],
    pipeline: Pipeline,
    out: Path,
    force: bool = False,
    retry_failed: bool = False,
) -> tuple[list[SlideOutcome | None], list[tuple[int, SlideInput, dict[str, Any]]]]:
    """What an earlier run already settled (outcomes, ``None`` where not) and what to run."""
    models = model_identity(pipeline)
    failed_before: dict[str, Any] = {
        str(e.get("slide")): e for e in _read_json(out / "errors.json") or [] if isinstance(e, dict)
    }
    outcomes: list[SlideOutcome | None] = []
    todo: list[tuple[int, SlideInput, dict[str, Any]]] = []
    seen: dict[str, Path] = {}
    for index, item in enumerate(inputs):
        outcome: SlideOutcome | None = None
        if item.name in seen:
            reason = (
                f"{item.path}: another input ({seen[item.name]}) has the same file name; "
                "give slides unique names or run them into different -o folders"
            )
            outcome = SlideOutcome(item, "failed", error=reason)
        else:
            seen[item.name] = item.path
            try:
                identity = _identity(item, pipeline, models)
            except OSError as err:
                why = err.strerror or str(err)
                outcome = SlideOutcome(item, "failed", error=f"{item.path}: {why}; check the path")
            else:
                outcome = _previous(
                    item, out / "slides", failed_before, identity, force, retry_failed
                )
                if outcome is None:
                    todo.append((index, item, identity))
        outcomes.append(outcome)
    return outcomes, todo


def _run_record(pipeline: Pipeline, scheduler: str | None, log_path: Path) -> dict[str, Any]:
    return {
        "status": "running",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "wsi_ai_version": __version__,
        "versions": versions(),
        "machine": machine(),
        "scheduler": scheduler or "threads",
        "models": model_identity(pipeline),
        "log": log_path.name,
        "pipeline": {
            "name": pipeline.name,
            "file": str(pipeline.path or ""),
            "file_sha256": file_sha256(pipeline.path) if pipeline.path else None,
            "config_hash": pipeline.config_hash(),
            "settings": pipeline.settings(),
        },
    }


def _describe(outcome: SlideOutcome) -> str:
    why = f" ({outcome.error})" if outcome.error else ""
    return f"{outcome.input.name}: {outcome.status} in {outcome.seconds:.1f} s{why}"


def run_batch(
    inputs: Sequence[SlideInput],
    pipeline: Pipeline,
    out: Path,
    *,
    scheduler: str | None = None,
    force: bool = False,
    retry_failed: bool = False,
    progress: Progress | None = None,
    report: Callable[[SlideOutcome], None] | None = None,
    raise_errors: bool = False,
) -> BatchResult:
    """Run ``pipeline`` over ``inputs`` into ``out`` (see the module docs for the promises).

    ``progress(what, done, total)`` counts slides and each slide's patches; ``report(outcome)``
    hears of every slide as soon as it is settled (skipped, failed early, done or failed)."""
    tell = report or (lambda outcome: None)
    out = Path(out).absolute()
    _prepare_out(out)
    clock = time.perf_counter()
    with run_lock(out), run_log(out) as log_path:
        _clean_leftovers(out / "slides")
        outcomes, todo = plan(inputs, pipeline, out, force, retry_failed)
        for settled in outcomes:
            if settled is not None:
                log.info(_describe(settled))
                tell(settled)
        run = _run_record(pipeline, scheduler, log_path)
        write_run(out, run)

        def finished(index: int, outcome: SlideOutcome) -> None:
            outcomes[index] = outcome
            log.info(_describe(outcome))
            tell(outcome)
            write_summary(out, [o for o in outcomes if o is not None])

        write_summary(out, [o for o in outcomes if o is not None])
        execute(todo, pipeline, out / "slides", scheduler, finished, progress, raise_errors)
        _clean_leftovers(out / "slides")  # what a worker that died mid-slide left
        done = [o for o in outcomes if o is not None]
        stages: dict[str, float] = {}
        for o in done:
            if o.status == "done":
                for name, seconds in (o.record.get("stages") or {}).items():
                    stages[name] = round(stages.get(name, 0.0) + seconds, 3)
        run.update(
            status="finished",
            counts={s: sum(o.status == s for o in done) for s in ("done", "skipped", "failed")},
            stages=stages,
            finished=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - clock, 3),
        )
        write_run(out, run)
    return BatchResult(done, run)


def execute(
    todo: Sequence[tuple[int, SlideInput, dict[str, Any]]],
    pipeline: Pipeline,
    slides_dir: Path,
    scheduler: str | None,
    finished: Callable[[int, SlideOutcome], None],
    progress: Progress | None = None,
    raise_errors: bool = False,
) -> None:
    """Run :func:`process_slide` for every ``todo`` row where ``scheduler`` says; report each
    outcome to ``finished(index, outcome)`` as it comes."""
    from wsi_ai.engine.cluster import dask_client, parse_scheduler

    kind, workers = parse_scheduler(scheduler)
    total = len(todo)
    tick = progress or (lambda what, done, of: None)
    tick("slides", 0, total)
    if not todo:
        return
    if kind == "threads":
        if pipeline.uses_model:  # a model that does not load fails the batch once, up front
            WORKER_MODELS.backbone(pipeline)
            if pipeline.score.kind == "mil":
                WORKER_MODELS.aggregator(pipeline)
        for n, (index, item, identity) in enumerate(todo, start=1):
            patches = functools.partial(tick, "patches")
            finished(
                index, process_slide(item, pipeline, slides_dir, identity, patches, raise_errors)
            )
            tick("slides", n, total)
        return
    from distributed import as_completed

    torch = sys.modules.get("torch")
    gpus = torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0
    with dask_client(kind, scheduler, workers, gpus) as client:
        info = client.scheduler_info().get("workers", {}).values()
        has_gpus = pipeline.uses_model and any("GPU" in (w.get("resources") or {}) for w in info)
        extra: dict[str, Any] = {"resources": {"GPU": 1}} if has_gpus else {}
        futures = {}
        for index, item, identity in todo:
            key = f"wsi-ai-slide-{item.name}-{uuid.uuid4().hex[:8]}"
            future = client.submit(
                process_slide, item, pipeline, slides_dir, identity, key=key, pure=False, **extra
            )
            futures[future] = (index, item, identity)
        for n, future in enumerate(as_completed(futures), start=1):
            index, item, identity = futures[future]
            try:
                outcome = future.result()
            except Exception as err:  # the worker died too often, or the result did not travel
                outcome = SlideOutcome(
                    item, "failed", {}, failure_message(item.path, err), identity
                )
            finished(index, outcome)
            tick("slides", n, total)
