"""Patch batches that decode every stored tile once, planned from the patch table.

:class:`PlannedBatches` is the CPU reader behind ``--decode cpu``: for each batch of the
table it decodes the tiles the batch is the first to need (:class:`~.tile_plan.TilePlan`),
cuts and resizes the batch's patches from the decoded tiles, and drops the tiles the batch
is the last to need. No tile is decoded twice whatever the cache size, unlike the LRU path
(:class:`~wsi_ai.engine.loader.PatchBatches`), and memory is known before the first read.

Work runs in ``threads`` threads, ahead of the consumer by ``prefetch`` batches: tile
decodes (a ``pread`` and libjpeg-turbo through imagecodecs, which release the GIL) then
patch assembly and resizing (numpy copies and OpenCV, which release it too). Tasks go
through one FIFO queue, decodes of a batch before its assembly, so an assembly task only
waits on decodes already running.

:class:`TileSource` gives a level's tiles by id: decoded (natively for TIFF pyramids,
through ``read_region`` otherwise) and, for JPEG levels, as standalone JPEG files for a
GPU decoder (:mod:`wsi_ai.engine.device_reader`). :class:`ReadStats` adds up where the
reading time goes, for ``wsi-ai bench``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from wsi_ai.engine.loader import Batch, assemble
from wsi_ai.engine.tile_plan import LevelGeometry, TilePlan
from wsi_ai.errors import SlideReadError
from wsi_ai.slide import Slide
from wsi_ai.slide.slide import resize
from wsi_ai.tiling import GridSpec

__all__ = ["PlannedBatches", "ReadStats", "TileSource", "level_coordinates"]

Tile = NDArray[np.uint8]


def level_coordinates(table: pd.DataFrame, downsample: float) -> tuple[NDArray[np.int64], ...]:
    """Level-pixel patch origins: ``round(x / downsample)`` as the patch readers use."""
    x = table["x"].to_numpy(dtype=np.float64)
    y = table["y"].to_numpy(dtype=np.float64)
    return np.round(x / downsample).astype(np.int64), np.round(y / downsample).astype(np.int64)


@dataclass
class ReadStats:
    """Where reading went: tiles decoded, bytes read, seconds summed over threads."""

    tiles: int = 0
    bytes_read: int = 0
    read_s: float = 0.0  # pread of the stored bytes
    decode_s: float = 0.0  # decoding them (CPU) or handing them to the GPU decoder
    assemble_s: float = 0.0  # cutting patches out of tiles and resizing them
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **values: float) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("tiles", "bytes_read", "read_s", "decode_s")} | {
            "assemble_s": self.assemble_s
        }


class TileSource:
    """One level's tiles by id (``row * cols + col``), decoded or as JPEG files.

    The slide's own tiles where :class:`~wsi_ai.slide.native_tiles.NativeTiles` reads the
    level, else 512 px chunks through ``read_region`` (NDPI, MRXS, DICOM, striped TIFF);
    edge tiles are whole tiles, only their part inside the level is ever used.
    """

    def __init__(self, slide: Slide, level: int) -> None:
        from wsi_ai.slide.zarr_store import LazySlideStore

        self.level = level
        self._store = LazySlideStore(slide, cache_bytes=0)  # no cache: decoded once anyway
        th, tw = self._store.chunk_shape(level)
        lv = slide.levels[level]
        self.geometry = LevelGeometry(lv.width, lv.height, tw, th)
        native = self._store.native
        self._native = native if native is not None and native.tile_shape(level) else None

    @property
    def native(self) -> bool:
        """Whether tiles are the file's own (else ``read_region`` chunks)."""
        return self._native is not None

    @property
    def jpeg(self) -> bool:
        """Whether tiles are JPEG streams a GPU decoder can take (:meth:`jpeg_file`)."""
        return self._native is not None and self._native.is_jpeg(self.level)

    def raw(self, tile: int) -> bytes:
        """A native tile's stored bytes (``b""`` for a sparse tile)."""
        assert self._native is not None
        return self._native.raw(self.level, *divmod(int(tile), self.geometry.cols))

    def decode_raw(self, tile: int, data: bytes) -> Tile:
        assert self._native is not None
        row, col = divmod(int(tile), self.geometry.cols)
        return self._native.decode_raw(self.level, row, col, data)

    def jpeg_file(self, data: bytes) -> bytes:
        """A stored JPEG tile (from :meth:`raw`) as a standalone JPEG file."""
        assert self._native is not None
        return self._native.jpeg_stream(self.level, data)

    def decode(self, tile: int, stats: ReadStats | None = None) -> Tile:
        """The tile as (tile_h, tile_w, 3) RGB uint8."""
        g = self.geometry
        if self._native is None:
            start = time.perf_counter()
            data = self._store.chunk_bytes(self.level, *divmod(int(tile), g.cols))
            if stats is not None:
                stats.add(tiles=1, decode_s=time.perf_counter() - start)
            return np.frombuffer(data, dtype=np.uint8).reshape(g.tile_h, g.tile_w, 3)
        start = time.perf_counter()
        try:
            data = self.raw(tile)
            read = time.perf_counter()
            pixels = self.decode_raw(tile, data)
        except Exception as err:
            row, col = divmod(int(tile), g.cols)
            raise SlideReadError(
                f"could not decode tile ({row}, {col}) of level {self.level} ({err}); the "
                "file may be truncated or corrupt: copy it again from the scanner",
                self._store.slide.path,
            ) from err
        if stats is not None:
            stats.add(
                tiles=1,
                bytes_read=len(data),
                read_s=read - start,
                decode_s=time.perf_counter() - read,
            )
        return pixels

    def close(self) -> None:
        if self._native is not None:
            self._native.close()


class _Resolved(dict[int, Tile]):
    """Decoded tiles of a batch, taken from their futures on first use."""

    def __init__(self, futures: Mapping[int, Future[Tile]]) -> None:
        super().__init__()
        self._futures = futures

    def __missing__(self, tile: int) -> Tile:
        value = self._futures[tile].result()
        self[tile] = value
        return value


class PlannedBatches:
    """Batches of a patch table, each stored tile decoded once (module docstring).

    Same interface as :class:`~wsi_ai.engine.loader.PatchBatches`: iterating yields
    :class:`~wsi_ai.engine.loader.Batch` objects in table order, uint8 ``[B, size, size, 3]``
    in reused (optionally pinned) buffers. ``stats`` adds up the reading time.
    """

    def __init__(
        self,
        slide: Slide,
        spec: GridSpec,
        table: pd.DataFrame,
        batch_size: int,
        *,
        threads: int = 2,
        prefetch: int = 3,
        pin_memory: bool = False,
        source: TileSource | None = None,
        plan: TilePlan | None = None,
    ) -> None:
        self.source = source if source is not None else TileSource(slide, spec.level)
        self.spec, self.size, self.batch_size = spec, spec.size, batch_size
        self.threads, self.prefetch = max(1, threads), max(1, prefetch)
        self.pin_memory = pin_memory
        self._lx, self._ly = level_coordinates(table, slide.levels[spec.level].downsample)
        geometry = self.source.geometry
        self.plan = plan or TilePlan(self._lx, self._ly, spec.read_size, geometry, batch_size)
        self._chunk = max(8, -(-batch_size // self.threads))
        self.stats = ReadStats()

    def __len__(self) -> int:
        return len(self.plan.batches)

    def _new_buffer(self) -> torch.Tensor:
        buffer = torch.empty((self.batch_size, self.size, self.size, 3), dtype=torch.uint8)
        return buffer.pin_memory() if self.pin_memory else buffer

    def _assemble(
        self,
        buffer: torch.Tensor,
        offset: int,
        rows: range,
        tiles: Mapping[int, Future[Tile]],
        event: Any,
        stop: threading.Event,
    ) -> None:
        if event is not None:
            event.synchronize()  # the last non-blocking copy out of this buffer is done
        pixels = buffer.numpy()
        side, geometry = self.spec.read_size, self.source.geometry
        resolved = _Resolved(tiles)
        raw = np.empty((side, side, 3), dtype=np.uint8) if side != self.size else None
        for i in rows:
            if stop.is_set():
                return
            for tile in self._patch_tiles(i):  # wait for the decodes outside the timer
                _ = resolved[tile]
            start = time.perf_counter()
            lx, ly = int(self._lx[i]), int(self._ly[i])
            if raw is None:
                assemble(resolved.__getitem__, lx, ly, side, geometry, pixels[i - offset])
            else:
                assemble(resolved.__getitem__, lx, ly, side, geometry, raw)
                pixels[i - offset] = resize(raw, (self.size, self.size))
            self.stats.add(assemble_s=time.perf_counter() - start)

    def _patch_tiles(self, i: int) -> list[int]:
        g, side = self.source.geometry, self.spec.read_size
        lx, ly = int(self._lx[i]), int(self._ly[i])
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + side, g.width), min(ly + side, g.height)
        if x0 >= x1 or y0 >= y1:
            return []
        return [
            cy * g.cols + cx
            for cy in range(y0 // g.tile_h, (y1 - 1) // g.tile_h + 1)
            for cx in range(x0 // g.tile_w, (x1 - 1) // g.tile_w + 1)
        ]

    def __iter__(self) -> Iterator[Batch]:
        pool: queue.Queue[tuple[torch.Tensor, Any]] = queue.Queue()
        for _ in range(self.prefetch + 2):
            pool.put((self._new_buffer(), None))
        stop = threading.Event()
        decoded: dict[int, Future[Tile]] = {}
        pending: deque[tuple[int, torch.Tensor, list[Future[None]]]] = deque()
        plans = iter(self.plan.batches)
        executor = ThreadPoolExecutor(self.threads, thread_name_prefix="wsi-ai-tiles")
        last: Batch | None = None
        try:
            while True:
                if last is not None:
                    last.release()
                while len(pending) < self.prefetch:
                    plan = next(plans, None)
                    if plan is None:
                        break
                    for tile in plan.decode:
                        decoded[int(tile)] = executor.submit(
                            self.source.decode, int(tile), self.stats
                        )
                    needed = {t: decoded[t] for i in plan_rows(plan) for t in self._patch_tiles(i)}
                    buffer, event = pool.get()
                    futures = [
                        executor.submit(
                            self._assemble,
                            buffer,
                            plan.start,
                            range(a, min(a + self._chunk, plan.stop)),
                            needed,
                            event,
                            stop,
                        )
                        for a in range(plan.start, plan.stop, self._chunk)
                    ]
                    for tile in plan.release:  # later batches do not need them
                        decoded.pop(int(tile), None)
                    pending.append((plan.start, buffer, futures))
                if not pending:
                    return
                start, buffer, futures = pending.popleft()
                for future in futures:
                    future.result()
                stop_row = min(start + self.batch_size, self.plan.patches)
                last = Batch(start, stop_row, buffer[: stop_row - start], pool, buffer)
                yield last
        finally:
            stop.set()
            for _, _, futures in pending:
                for future in futures:
                    future.cancel()
            executor.shutdown(wait=True, cancel_futures=True)


def plan_rows(plan: Any) -> range:
    """The table rows of a :class:`~.tile_plan.BatchPlan`."""
    return range(plan.start, plan.stop)
