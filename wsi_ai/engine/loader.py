"""Patch batches for inference: read, resize, pack into reusable uint8 buffers, prefetch.

:class:`PatchBatches` walks a patch table in order and yields :class:`Batch` objects whose
``pixels`` are a uint8 tensor ``[B, size, size, 3]`` (RGB, channels last). Batches are read
by a small thread pool ahead of the consumer (a bounded prefetch window), so decoding
overlaps the model; the buffers are allocated once and reused, in pinned (page-locked)
memory when the consumer copies them to a GPU, so the copy can be non-blocking.

Pixels come from the slide's lazy Zarr pyramid (:meth:`~wsi_ai.slide.Slide.as_zarr`):
each patch is assembled from the level's own tiles (``store.chunk_bytes``, natively
decoded where the file allows, kept in the pyramid's LRU cache so neighbouring patches
decode a tile once), then resized from ``read_size`` to ``size`` px exactly as
:func:`wsi_ai.tiling.read_patch` does. Going to the tiles directly rather than slicing
the Zarr array skips zarr's per-call machinery (one event loop for every thread), which
measured 1.5 to 2.5 times faster and lets the read threads scale.

Coordinates: table rows are level-0 ``x, y``; a patch is read at ``spec.level`` from
``round(x / downsample), round(y / downsample)`` (level pixels). Outside the slide is white.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from wsi_ai.engine.tile_plan import LevelGeometry
from wsi_ai.slide import Slide
from wsi_ai.slide.slide import resize
from wsi_ai.tiling import GridSpec

__all__ = ["Batch", "PatchBatches", "PatchReader", "assemble"]

# Decoded tiles kept per slide (bytes); a tile row of a 100,000 px slide is about 75 MiB.
DEFAULT_CACHE_BYTES = 128 * 2**20
WHITE = 255
MIN_CHUNK = 8  # patches per read task, at least


def assemble(
    tile_at: Callable[[int], NDArray[np.uint8]],
    lx: int,
    ly: int,
    side: int,
    geometry: LevelGeometry,
    out: NDArray[np.uint8],
) -> None:
    """Fill ``out`` (side, side, 3) with level pixels from ``(lx, ly)``; ``tile_at(id)``
    gives the decoded tile ``row * cols + col``. Outside the level is white."""
    th, tw = geometry.tile_h, geometry.tile_w
    x1, y1 = min(lx + side, geometry.width), min(ly + side, geometry.height)
    x0, y0 = max(lx, 0), max(ly, 0)
    if x0 >= x1 or y0 >= y1:
        out[...] = WHITE
        return
    if (x0, y0, x1, y1) != (lx, ly, lx + side, ly + side):
        out[...] = WHITE  # partly outside the level
    for cy in range(y0 // th, (y1 - 1) // th + 1):
        top, bottom = max(y0, cy * th), min(y1, (cy + 1) * th)
        for cx in range(x0 // tw, (x1 - 1) // tw + 1):
            left, right = max(x0, cx * tw), min(x1, (cx + 1) * tw)
            tile = tile_at(cy * geometry.cols + cx)
            out[top - ly : bottom - ly, left - lx : right - lx] = tile[
                top - cy * th : bottom - cy * th, left - cx * tw : right - cx * tw
            ]


class PatchReader:
    """Reads ``spec.size`` px patches of one slide level from its native tiles (thread-safe)."""

    def __init__(self, slide: Slide, spec: GridSpec, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.spec = spec
        self.level = spec.level
        group = slide.as_zarr(cache_bytes=cache_bytes)
        array: Any = group[str(spec.level)]
        self._store: Any = group.store  # LazySlideStore: chunk_bytes(level, cy, cx)
        self._tile_h, self._tile_w = int(array.chunks[0]), int(array.chunks[1])
        self._height, self._width = int(array.shape[0]), int(array.shape[1])
        self._downsample = slide.levels[spec.level].downsample
        self._geometry = LevelGeometry(self._width, self._height, self._tile_w, self._tile_h)

    def _tile(self, cy: int, cx: int) -> NDArray[np.uint8]:
        data = self._store.chunk_bytes(self.level, cy, cx)
        return np.frombuffer(data, dtype=np.uint8).reshape(self._tile_h, self._tile_w, 3)

    def read_level(self, lx: int, ly: int, side: int, out: NDArray[np.uint8]) -> None:
        """Fill ``out`` (side, side, 3) with level pixels from level coordinates (lx, ly)."""
        assemble(self._tile_by_id, lx, ly, side, self._geometry, out)

    def _tile_by_id(self, tile: int) -> NDArray[np.uint8]:
        return self._tile(*divmod(tile, self._geometry.cols))

    def read(self, x: int, y: int, out: NDArray[np.uint8]) -> None:
        """Fill ``out`` (size, size, 3) with the patch at level-0 ``(x, y)``."""
        spec = self.spec
        lx, ly = round(x / self._downsample), round(y / self._downsample)
        if spec.read_size == spec.size:
            self.read_level(lx, ly, spec.size, out)
            return
        raw = np.empty((spec.read_size, spec.read_size, 3), dtype=np.uint8)
        self.read_level(lx, ly, spec.read_size, raw)
        out[...] = resize(raw, (spec.size, spec.size))


@dataclass
class Batch:
    """Patches ``start`` to ``stop`` of the table as uint8 ``pixels`` [B, size, size, 3].

    ``pixels`` is a reused buffer: call :meth:`release` once it has been copied or used
    (with the CUDA event recorded after a non-blocking copy from it, if any).
    """

    start: int
    stop: int
    pixels: torch.Tensor
    _pool: queue.Queue[tuple[torch.Tensor, Any]] = field(repr=False)
    _buffer: torch.Tensor = field(repr=False)
    _released: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def padded(self) -> torch.Tensor:
        """The whole buffer: ``pixels`` followed by stale rows up to the batch size."""
        return self._buffer

    def release(self, event: Any = None) -> None:
        """Give the buffer back; ``event`` (a CUDA event) must complete before it is reused."""
        if not self._released:
            self._released = True
            self._pool.put((self._buffer, event))


class PatchBatches:
    """Batches of patches from a patch table, read by ``threads`` threads ahead of use.

    Iterating yields :class:`Batch` objects in table order. Each batch is read as chunks
    of consecutive patches spread over the threads (so a few batches in flight keep every
    thread busy); at most ``prefetch`` batches are read ahead. Memory is therefore
    ``prefetch + 2`` buffers of ``batch_size x size² x 3`` bytes plus the tile cache,
    whatever the slide's size. ``pin_memory`` allocates the buffers page-locked (for
    non-blocking copies to a CUDA device).
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
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.reader = PatchReader(slide, spec, cache_bytes)
        self.batch_size = batch_size
        self.threads = max(1, threads)
        self.prefetch = max(1, prefetch)
        self.pin_memory = pin_memory
        self._x = table["x"].to_numpy(dtype=np.int64)
        self._y = table["y"].to_numpy(dtype=np.int64)
        self.size = spec.size
        # patches per read task: the batch split over the threads, at least MIN_CHUNK
        self._chunk = max(MIN_CHUNK, -(-batch_size // self.threads))

    def __len__(self) -> int:
        return -(-len(self._x) // self.batch_size)

    def _new_buffer(self) -> torch.Tensor:
        shape = (self.batch_size, self.size, self.size, 3)
        buffer = torch.empty(shape, dtype=torch.uint8)
        return buffer.pin_memory() if self.pin_memory else buffer

    def _fill(
        self, buffer: torch.Tensor, offset: int, rows: range, event: Any, stop: threading.Event
    ) -> None:
        """Read table ``rows`` into the buffer from row ``offset`` on."""
        if event is not None:
            event.synchronize()  # the last non-blocking copy out of this buffer is done
        pixels = buffer.numpy()
        for i in rows:
            if stop.is_set():
                return
            self.reader.read(int(self._x[i]), int(self._y[i]), pixels[i - offset])

    def __iter__(self) -> Iterator[Batch]:
        pool: queue.Queue[tuple[torch.Tensor, Any]] = queue.Queue()
        for _ in range(self.prefetch + 2):
            pool.put((self._new_buffer(), None))
        stop = threading.Event()
        pending: deque[tuple[int, torch.Tensor, list[Future[None]]]] = deque()
        starts = iter(range(0, len(self._x), self.batch_size))
        executor = ThreadPoolExecutor(self.threads, thread_name_prefix="wsi-ai-read")
        last: Batch | None = None
        try:
            while True:
                if last is not None:
                    last.release()  # the consumer moved on: its buffer is free
                while len(pending) < self.prefetch:
                    start = next(starts, None)
                    if start is None:
                        break
                    buffer, event = pool.get()  # free: at most prefetch + 1 are out
                    end = min(start + self.batch_size, len(self._x))
                    futures = [
                        executor.submit(
                            self._fill,
                            buffer,
                            start,
                            range(a, min(a + self._chunk, end)),
                            event,
                            stop,
                        )
                        for a in range(start, end, self._chunk)
                    ]
                    pending.append((start, buffer, futures))
                if not pending:
                    return
                start, buffer, futures = pending.popleft()
                for future in futures:
                    future.result()
                end = min(start + self.batch_size, len(self._x))
                last = Batch(start, end, buffer[: end - start], pool, buffer)
                yield last
        finally:
            stop.set()
            for _, _, futures in pending:
                for future in futures:
                    future.cancel()
            executor.shutdown(wait=True)
