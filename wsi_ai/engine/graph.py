"""Many slides as a Dask graph, in this process or on a cluster.

Each slide is two nodes: *prepare* (:func:`~wsi_ai.engine.embed.prepare_slide`: open,
tissue, patch table) and *run* (:func:`~wsi_ai.engine.embed.run_prepared`: patch table ->
batches -> model -> store; inside it, read threads, prefetch and streaming writes are
pipelined). Run nodes hold the device; prepare nodes do not, so one slide's tissue
detection overlaps another's inference. ``scheduler`` picks where the nodes run:

``None`` or ``"threads"``
    This process, Dask's threaded scheduler with two threads: one model on one device,
    one slide on it at a time while the next is prepared. With several GPUs visible,
    ``device="auto"`` and several slides, it becomes ``"processes"``: one worker per GPU.
``"processes"`` or ``"processes:N"``
    A ``distributed.LocalCluster`` of N worker processes with one thread each. With
    CUDA GPUs, N defaults to their number and every worker declares the resource
    ``GPU=1`` and uses its own GPU (worker *i* takes ``cuda:i``); else N is 1.
``"tcp://HOST:PORT"``
    An existing ``distributed`` cluster. Slides and the output folder must be at the same
    paths on every worker (a shared filesystem), and so must the model card and weights.
    A lab with a GPU node starts one worker per GPU, each seeing one GPU::

        dask scheduler --port 8786                       # on the head node
        CUDA_VISIBLE_DEVICES=0 dask worker tcp://HEAD:8786 --nthreads 1 --resources GPU=1
        CUDA_VISIBLE_DEVICES=1 dask worker tcp://HEAD:8786 --nthreads 1 --resources GPU=1
        wsi-ai embed slides/*.svs --model uni -o features/ --scheduler tcp://HEAD:8786

    When the workers declare ``GPU`` resources, each run node asks for ``GPU=1``, so one
    slide runs per GPU at a time.

Every worker builds the model once and keeps it for the slides that follow.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
import torch

from wsi_ai.engine.cluster import dask_client, parse_scheduler
from wsi_ai.engine.config import EngineConfig, ModelConfig, SlideResult
from wsi_ai.engine.embed import PreparedSlide, prepare_slide, run_prepared
from wsi_ai.engine.runner import InferenceModel, load_model, normalise_device
from wsi_ai.errors import ModelError, OutputExistsError, failure_message
from wsi_ai.nn.cards import ModelCard, find_card
from wsi_ai.outputs import check_output
from wsi_ai.store.features import features_path

__all__ = ["cached_model", "run_slides", "worker_device"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@functools.lru_cache(maxsize=1)
def _load_cached(key: ModelConfig, device: str) -> InferenceModel:
    return load_model(key, device=device)


def cached_model(key: ModelConfig, device: str) -> InferenceModel:
    """The model for ``key`` on ``device``, built once per process and kept.

    The device is normalised first (``cuda`` and ``auto`` are ``cuda:N``), so spellings
    of one device share the cache entry instead of loading the weights twice.
    """
    return _load_cached(key, normalise_device(device))


def worker_device(config: EngineConfig) -> str:
    """This worker's device (``cpu`` or ``cuda:N``): its own GPU on a multi-GPU node,
    else the config's."""
    if config.device != "auto" or not torch.cuda.is_available():
        return normalise_device(config.device)
    count = torch.cuda.device_count()
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not on a Dask worker: this process's GPU
        return normalise_device("auto")
    name = str(worker.name)
    digits = re.search(r"(\d+)$", name)
    index = (int(digits.group(1)) if digits and name != worker.address else 0) % count
    torch.cuda.set_device(index)  # this worker process's GPU (no context on the others)
    return f"cuda:{index}"


def _prepare_task(
    slide: str, config: EngineConfig, mpp: float, size: int, raise_errors: bool = False
) -> PreparedSlide | SlideResult:
    """Graph node 1: the slide's patch table (tissue, grid), or its failure."""
    path = Path(slide)
    start = time.perf_counter()
    try:
        return prepare_slide(path, config, mpp, size)
    except Exception as err:
        if raise_errors:
            raise
        return SlideResult(path, None, 0, time.perf_counter() - start, failure_message(path, err))


def _run_task(
    prepared: PreparedSlide | SlideResult,
    out: str,
    config: EngineConfig,
    card_hash: str,
    overwrite: bool,
    raise_errors: bool = False,
    device_lock: AbstractContextManager[Any] | None = None,
    device: str | None = None,
) -> SlideResult:
    """Graph node 2: patch table -> batches -> model -> store, on ``device`` (``None``:
    this worker's, see :func:`worker_device`).

    The model is built once per worker process and kept for the slides that follow.
    """
    if isinstance(prepared, SlideResult):  # the slide failed to prepare
        return prepared
    path, start = prepared.slide, time.perf_counter()
    try:
        with device_lock or nullcontext():
            where = device if device is not None else worker_device(config)
            model = cached_model(config.model_config, where)
            if model.card.card_hash != card_hash:
                raise ModelError(
                    f"the model card {config.model} differs on this worker (hash "
                    f"{model.card.card_hash[:12]}, expected {card_hash[:12]}); give every "
                    "worker the same card"
                )
            count = run_prepared(prepared, Path(out), config, model, overwrite)
    except Exception as err:
        if raise_errors:
            raise
        seconds = prepared.seconds + time.perf_counter() - start
        return SlideResult(path, None, 0, seconds, failure_message(path, err))
    seconds = prepared.seconds + time.perf_counter() - start
    return SlideResult(path, Path(out), count, seconds, None)


def _plan(
    slides: Sequence[Path], out_dir: Path, overwrite: bool
) -> tuple[list[tuple[int, Path, Path]], dict[int, SlideResult]]:
    """(index, slide, store) to run, and results for inputs rejected before running."""
    todo: list[tuple[int, Path, Path]] = []
    rejected: dict[int, SlideResult] = {}
    seen: dict[str, Path] = {}
    for index, slide in enumerate(slides):
        slide = Path(slide).absolute()
        out = features_path(out_dir, slide)
        if out.name in seen:
            message = (
                f"{slide}: another input ({seen[out.name]}) also writes {out.name}; "
                "run slides with the same name into different output folders"
            )
            rejected[index] = SlideResult(slide, None, 0, 0.0, message)
            continue
        seen[out.name] = slide
        try:
            check_output(out, overwrite)
        except OutputExistsError as err:  # no model is built for slides already done
            rejected[index] = SlideResult(slide, None, 0, 0.0, str(err))
            continue
        todo.append((index, slide, out))
    return todo, rejected


def _check_card(config: EngineConfig) -> ModelCard:
    card = find_card(config.model)
    if "scores" in config.outputs and not card.classes:
        raise ModelError(
            f"card {card.name!r} has no classes, so it gives no scores; use `wsi-ai embed` "
            "for embeddings, or a card with a classifier head and classes",
            card.path,
        )
    return card


def run_slides(
    slides: Sequence[Path],
    out_dir: Path,
    config: EngineConfig,
    *,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    raise_errors: bool = False,
) -> list[SlideResult]:
    """Embed (and score) every slide into ``out_dir/<slide-stem>.zarr``.

    Returns one :class:`SlideResult` per input, in input order; a slide that fails is
    reported in its result and the others still run. Raises :class:`ModelError` before
    any slide runs when the card cannot be used (unknown, no classes for scores) and,
    for the local schedulers, when its weights do not load. ``progress(done, total)``
    counts slides. ``raise_errors`` (local schedulers only) raises a slide's error with
    its traceback instead of reporting it (the CLI's ``--debug``).
    """
    kind, workers = parse_scheduler(scheduler)
    card = _check_card(config)
    if card.path is not None:  # workers find the card by its path, not by name
        config = replace(config, model=card.path)
    if config.weights is not None:
        config = replace(config, weights=Path(config.weights).absolute())
    out_dir = Path(out_dir).absolute()
    todo, results = _plan(slides, out_dir, overwrite)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "threads" and config.device == "auto" and gpus > 1 and len(todo) > 1:
        kind = "processes"
    done = [0]
    lock = threading.Lock()

    def tick() -> None:
        with lock:
            done[0] += 1
            if progress is not None:
                progress(done[0], len(todo))

    job = _Job(
        config, card.card_hash, config.mpp or card.mpp, config.size or card.input_size, overwrite
    )
    if kind == "threads" and todo:
        device = worker_device(config)  # resolved once: the run nodes use the same model
        cached_model(config.model_config, device)  # fail early
        results.update(_run_threads(todo, job, tick, raise_errors, device))
    elif todo:
        with dask_client(kind, scheduler, workers, gpus) as client:
            results.update(_run_distributed(client, todo, job, tick))
    return [results[i] for i in range(len(slides))]


@dataclass(frozen=True)
class _Job:
    config: EngineConfig
    card_hash: str
    mpp: float  # µm/px of the patches
    size: int  # px
    overwrite: bool


def _run_threads(
    todo: list[tuple[int, Path, Path]],
    job: _Job,
    tick: Callable[[], None],
    raise_errors: bool,
    device: str,
) -> dict[int, SlideResult]:
    """Two threads: one prepares the next slide while the other runs the model on ``device``."""
    device_lock = threading.Lock()  # one slide at a time on the device

    def run(prepared: PreparedSlide | SlideResult, out: Path) -> SlideResult:
        result = _run_task(
            prepared,
            str(out),
            job.config,
            job.card_hash,
            job.overwrite,
            raise_errors,
            device_lock,
            device,
        )
        tick()
        return result

    graph = []
    for _, slide, out in todo:
        prepared = dask.delayed(_prepare_task, pure=False)(
            str(slide), job.config, job.mpp, job.size, raise_errors
        )
        graph.append(dask.delayed(run, pure=False)(prepared, out))
    with ThreadPoolExecutor(2, thread_name_prefix="wsi-ai-slide") as pool:
        computed = dask.compute(*graph, scheduler="threads", pool=pool)
    return {index: result for (index, _, _), result in zip(todo, computed, strict=True)}


def _run_distributed(
    client: Any, todo: list[tuple[int, Path, Path]], job: _Job, tick: Callable[[], None]
) -> dict[int, SlideResult]:
    from distributed import as_completed

    workers = client.scheduler_info().get("workers", {}).values()
    has_gpus = any("GPU" in (w.get("resources") or {}) for w in workers)
    gpu: dict[str, Any] = {"resources": {"GPU": 1}} if has_gpus else {}
    futures = {}
    for index, slide, out in todo:
        tag = f"{slide.stem}-{time.monotonic_ns()}"
        prepared = client.submit(
            _prepare_task,
            str(slide),
            job.config,
            job.mpp,
            job.size,
            key=f"wsi-ai-prepare-{tag}",
            pure=False,
        )
        future = client.submit(
            _run_task,
            prepared,
            str(out),
            job.config,
            job.card_hash,
            job.overwrite,
            key=f"wsi-ai-embed-{tag}",
            pure=False,
            **gpu,
        )
        futures[future] = (index, slide)
    results: dict[int, SlideResult] = {}
    for future in as_completed(futures):
        index, slide = futures[future]
        try:
            results[index] = future.result()
        except Exception as err:  # the worker died, or the result could not travel
            results[index] = SlideResult(slide, None, 0, 0.0, failure_message(slide, err))
        tick()
    return results
