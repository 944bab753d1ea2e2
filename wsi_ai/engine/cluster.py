"""Where slides run, torch-free: the scheduler choice and a quiet, private Dask client.

``parse_scheduler`` reads ``--scheduler`` (``threads``, ``processes[:N]``, ``tcp://HOST:PORT``);
``dask_client`` gives a client of a running cluster or of a local cluster of worker processes.
Both are used by the engine (:mod:`wsi_ai.engine.graph`) and the batch layer
(:mod:`wsi_ai.batch`) and import neither torch nor a model, so a batch without a model never
pays for torch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from wsi_ai.errors import ModelError

__all__ = ["dask_client", "parse_scheduler"]

_ADDRESS = re.compile(r"^[a-z][a-z0-9+]*://|^[\w.-]+:\d+$")


def parse_scheduler(scheduler: str | None) -> tuple[str, int | None]:
    """``(kind, workers)``: kind is ``threads``, ``processes`` or ``address``."""
    if scheduler in (None, "", "threads"):
        return "threads", None
    assert scheduler is not None
    if scheduler == "processes":
        return "processes", None
    match = re.fullmatch(r"processes:(\d+)", scheduler)
    if match and int(match.group(1)) >= 1:
        return "processes", int(match.group(1))
    if _ADDRESS.match(scheduler):
        return "address", None
    raise ValueError(
        f"scheduler {scheduler!r}: use threads, processes, processes:N or a cluster address "
        "such as tcp://HOST:8786"
    )


# Run by each worker of a local cluster before it registers (Dask's preload protocol).
_WORKER_NO_HTTP = """
def dask_setup(worker):  # wsi-ai: workers of a local cluster serve no HTTP
    server = getattr(worker, "http_server", None)
    if server is not None:
        server.stop()
    worker.services.pop("dashboard", None)
"""


@contextmanager
def dask_client(
    kind: str,
    address: str | None,
    workers: int | None,
    gpus: int,
    *,
    dashboard: str | None = None,
) -> Iterator[Any]:
    """A client of the cluster at ``address``, or of a local cluster of processes.

    The local cluster is quiet and private: Dask's log lines (scheduler, nannies, workers)
    are not printed (its warnings are, with -v), and neither its scheduler nor its workers
    serve HTTP (no dashboard, /metrics or /info) unless ``dashboard`` (e.g. ``":8787"``)
    asks for one. Only the processes' own TCP ports on 127.0.0.1 are open while it runs.
    """
    try:
        from distributed import Client, LocalCluster
        from distributed.scheduler import Scheduler
    except ImportError as err:
        raise ModelError(
            "running on a Dask cluster needs the `distributed` package: pip install distributed"
        ) from err
    if kind == "address":
        with Client(address, timeout="30s") as client:
            yield client
        return

    class NoHttpScheduler(Scheduler):
        """A scheduler without the HTTP server Dask starts even when the dashboard is off."""

        def start_http_server(self, *args: Any, **kwargs: Any) -> None:
            return None

    class QuietCluster(LocalCluster):
        async def _start(self) -> None:
            if dashboard is None and self.scheduler_spec is not None:
                self.scheduler_spec["cls"] = NoHttpScheduler
            await super()._start()

    # The CLI's log handler sits on the root logger, so Dask's INFO lines reach it unless
    # Dask's own logger is raised (to WARNING with -v, else ERROR); put back afterwards.
    dask_log = logging.getLogger("distributed")
    level = dask_log.level
    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    dask_log.setLevel(logging.WARNING if verbose else logging.ERROR)
    try:
        cluster = QuietCluster(
            n_workers=workers or max(1, gpus),
            threads_per_worker=1,
            processes=True,
            resources={"GPU": 1} if gpus else None,
            dashboard_address=dashboard,
            silence_logs=logging.ERROR,
            # Worker processes cannot take a class made here; a preload script (run before
            # the worker registers) closes the HTTP server every worker starts.
            preload=[] if dashboard is not None else [_WORKER_NO_HTTP],
        )
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
    finally:
        dask_log.setLevel(level)
