"""Patch batches decoded, cut and resized on the model's device (nvJPEG on a GPU).

:class:`DeviceBatches` is the reader behind ``--decode gpu``, for levels stored as JPEG
tiles (SVS, generic tiled TIFF). Per batch of the table, following its
:class:`~wsi_ai.engine.tile_plan.TilePlan`:

1. the stored bytes of the tiles the batch is first to need are read (``pread`` in a few
   threads, one batch ahead) and made standalone JPEG files
   (:meth:`~.tile_reader.TileSource.jpeg_file`);
2. they are decoded in one batched call, ``torchvision.io.decode_jpeg(list, device=...)``
   (nvJPEG on CUDA; libjpeg-turbo on the CPU, which is how the tests run this code);
3. each patch is cut from a mosaic of the tiles around it with one gather, pixels outside
   the level are set to white, and the batch is resized on the device: an exact box filter
   for whole-number factors (what OpenCV's ``INTER_AREA`` computes), antialiased bilinear
   otherwise;
4. the uint8 ``[B, size, size, 3]`` batch (channels-last memory) goes to the model with no
   host round trip.

A producer thread runs this on its own CUDA stream up to ``prefetch`` batches ahead, so the
decode of batch *k + 1* overlaps the model on batch *k*; the consumer's stream waits on an
event per batch. Tiles are kept on the device from their first batch to their last.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from wsi_ai.engine.loader import WHITE
from wsi_ai.engine.tile_plan import BatchPlan, LevelGeometry, TilePlan, patch_spans
from wsi_ai.engine.tile_reader import ReadStats, TileSource, level_coordinates
from wsi_ai.errors import SlideReadError
from wsi_ai.slide import Slide
from wsi_ai.tiling import GridSpec

__all__ = ["DeviceBatch", "DeviceBatches", "device_decode_available", "resize_batch"]

SUB_BATCH = 64  # patches cut at once: bounds the mosaic to 64 x 9 tiles


def device_decode_available(device: torch.device) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` decodes lists of JPEGs on ``device``."""
    try:
        from torchvision.io import decode_jpeg
    except Exception:
        return False
    if device.type == "cpu":
        return True
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            decode_jpeg([_probe_jpeg()], device=device)
    except Exception:
        return False
    return True


def _probe_jpeg() -> torch.Tensor:
    from torchvision.io import encode_jpeg

    return encode_jpeg(torch.full((3, 16, 16), 128, dtype=torch.uint8))


def area_weights(side: int, size: int, device: torch.device) -> torch.Tensor:
    """``[size, side]`` weights of OpenCV's ``INTER_AREA`` shrink along one axis.

    Output pixel ``i`` averages input ``[i * s, (i + 1) * s)`` with ``s = side / size``,
    each input pixel weighted by how much of it lies inside (a box filter for whole ``s``).
    """
    scale = side / size
    starts = torch.arange(size, dtype=torch.float64) * scale
    left = torch.maximum(starts[:, None], torch.arange(side, dtype=torch.float64)[None, :])
    right = torch.minimum(starts[:, None] + scale, torch.arange(1, side + 1, dtype=torch.float64))
    return ((right - left).clamp_(min=0) / scale).to(device=device, dtype=torch.float32)


def resize_batch(raw: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[B, 3, side, side]`` -> ``[B, 3, size, size]``, as the CPU readers resize:
    area averaging down (:func:`area_weights`), bilinear up (``INTER_LINEAR``)."""
    side = raw.shape[-1]
    if side == size:
        return raw
    x = raw.float()
    if side > size:
        w = area_weights(side, size, raw.device)
        x = torch.matmul(torch.matmul(w, x), w.T)  # rows, then columns
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class DeviceBatch:
    """Patches ``start`` to ``stop`` as uint8 ``pixels`` [B, size, size, 3] on the device.

    ``padded`` has ``batch_size`` rows (white past ``stop``), for compiled models.
    """

    start: int
    stop: int
    padded: torch.Tensor

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def pixels(self) -> torch.Tensor:
        return self.padded[: len(self)]

    def release(self, event: Any = None) -> None:
        """Nothing to give back: each batch is a fresh device tensor."""


class DeviceBatches:
    """Batches of a patch table decoded on ``device`` (module docstring)."""

    def __init__(
        self,
        slide: Slide,
        spec: GridSpec,
        table: pd.DataFrame,
        batch_size: int,
        device: torch.device | str,
        *,
        threads: int = 2,
        prefetch: int = 2,
        source: TileSource | None = None,
        plan: TilePlan | None = None,
    ) -> None:
        self.source = source if source is not None else TileSource(slide, spec.level)
        if not self.source.jpeg:
            raise ValueError("device decoding needs a level stored as JPEG tiles")
        self.device = torch.device(device)
        self.spec, self.size, self.batch_size = spec, spec.size, batch_size
        self.threads, self.prefetch = max(1, threads), max(1, prefetch)
        self._lx, self._ly = level_coordinates(table, slide.levels[spec.level].downsample)
        geometry = self.source.geometry
        self.plan = plan or TilePlan(self._lx, self._ly, spec.read_size, geometry, batch_size)
        self.stats = ReadStats()
        self._path = slide.path

    def __len__(self) -> int:
        return len(self.plan.batches)

    # -- one batch -------------------------------------------------------------------
    def _jpeg(self, tile: int) -> tuple[int, torch.Tensor | None, int]:
        """(tile, its standalone JPEG file as a CPU tensor or None if sparse, stored bytes)."""
        raw = self.source.raw(tile)
        if not raw:
            return tile, None, 0
        jpeg = bytearray(self.source.jpeg_file(raw))
        return tile, torch.frombuffer(jpeg, dtype=torch.uint8), len(raw)

    def _files(
        self, plan: BatchPlan, pool: ThreadPoolExecutor
    ) -> tuple[list[tuple[int, torch.Tensor | None, int]], float]:
        """The batch's new tiles as JPEG files, read in ``pool``; and the seconds it took."""
        start = time.perf_counter()
        files = list(pool.map(self._jpeg, [int(t) for t in plan.decode]))
        return files, time.perf_counter() - start

    def _decode(
        self,
        files: list[tuple[int, torch.Tensor | None, int]],
        read_s: float,
        tiles: dict[int, torch.Tensor],
    ) -> None:
        from torchvision.io import decode_jpeg

        start = time.perf_counter()
        g = self.source.geometry
        keys = [tile for tile, data, _ in files if data is not None]
        for tile, data, _ in files:
            if data is None:  # sparse: white
                tiles[tile] = torch.full(
                    (3, g.tile_h, g.tile_w), WHITE, dtype=torch.uint8, device=self.device
                )
        if keys:
            try:
                with warnings.catch_warnings():  # torchvision 0.29 points at TorchCodec
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decoded = decode_jpeg(
                        [data for _, data, _ in files if data is not None], device=self.device
                    )
            except Exception as err:
                raise SlideReadError(
                    f"could not decode {len(keys)} JPEG tiles of level {self.source.level} on "
                    f"{self.device} ({' '.join(str(err).split())[:160]}); use --decode cpu",
                    self._path,
                ) from err
            for tile, pixels in zip(keys, decoded, strict=True):
                if tuple(pixels.shape) != (3, g.tile_h, g.tile_w):
                    raise SlideReadError(
                        f"tile {tile} of level {self.source.level} decodes to "
                        f"{tuple(pixels.shape)}, not 3 x {g.tile_h} x {g.tile_w}; use --decode cpu",
                        self._path,
                    )
                tiles[tile] = pixels
        self.stats.add(
            tiles=len(files),
            bytes_read=sum(n for _, _, n in files),
            read_s=read_s,
            decode_s=time.perf_counter() - start,
        )

    def _cut(self, plan: BatchPlan, tiles: dict[int, torch.Tensor]) -> torch.Tensor:
        """The batch's patches, uint8 [batch_size, size, size, 3] channels-last memory."""
        start_t = time.perf_counter()
        out = torch.full(
            (self.batch_size, 3, self.size, self.size), WHITE, dtype=torch.uint8, device=self.device
        )
        for a in range(plan.start, plan.stop, SUB_BATCH):
            b = min(a + SUB_BATCH, plan.stop)
            raw = cut_patches(
                tiles, self._lx[a:b], self._ly[a:b], self.spec.read_size, self.source.geometry
            )
            out[a - plan.start : b - plan.start] = resize_batch(raw, self.size)
        self.stats.add(assemble_s=time.perf_counter() - start_t)
        return out.permute(0, 2, 3, 1).contiguous()

    # -- the producer thread ---------------------------------------------------------
    def _produce(self, out: queue.Queue[Any], stop: threading.Event) -> None:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        tiles: dict[int, torch.Tensor] = {}
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="wsi-ai-pread")
        ahead = ThreadPoolExecutor(1, thread_name_prefix="wsi-ai-read-ahead")
        plans = self.plan.batches
        try:
            ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
            with ctx:
                pending = ahead.submit(self._files, plans[0], pool) if plans else None
                for k, plan in enumerate(plans):
                    if stop.is_set():
                        return
                    assert pending is not None
                    files, read_s = pending.result()
                    if k + 1 < len(plans):  # read batch k + 1 while batch k decodes
                        pending = ahead.submit(self._files, plans[k + 1], pool)
                    self._decode(files, read_s, tiles)
                    pixels = self._cut(plan, tiles)
                    for tile in plan.release:
                        tiles.pop(int(tile), None)
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    _put(out, (plan, pixels, event), stop)
        except BaseException as err:  # handed to the consumer, raised there
            _put(out, err, stop)
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
        _put(out, None, stop)

    def __iter__(self) -> Iterator[DeviceBatch]:
        out: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        producer = threading.Thread(
            target=self._produce, args=(out, stop), name="wsi-ai-device-decode", daemon=True
        )
        producer.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                plan, pixels, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    pixels.record_stream(current)
                yield DeviceBatch(plan.start, plan.stop, pixels)
        finally:
            stop.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    out.get_nowait()
            producer.join(timeout=30)


def _put(out: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def cut_patches(
    tiles: dict[int, torch.Tensor],
    lx: np.ndarray,
    ly: np.ndarray,
    side: int,
    geometry: LevelGeometry,
) -> torch.Tensor:
    """uint8 ``[n, 3, side, side]`` level pixels at ``(lx, ly)`` from decoded ``tiles``.

    Each patch's neighbourhood of tiles (rows ``r0 .. r0 + kr``, columns ``c0 .. c0 + kc``)
    is stacked into a mosaic, the patch is gathered out of it at its offset, and what lies
    outside the level is white, as the CPU readers give it.
    """
    g = geometry
    some = next(iter(tiles.values()), None)
    device = some.device if some is not None else torch.device("cpu")
    n = len(lx)
    kr, kc = -(-side // g.tile_h) + 1, -(-side // g.tile_w) + 1
    r0, c0 = np.floor_divide(ly, g.tile_h), np.floor_divide(lx, g.tile_w)
    rows = r0[:, None] + np.arange(kr)[None, :]  # [n, kr]
    cols = c0[:, None] + np.arange(kc)[None, :]  # [n, kc]
    ids = rows[:, :, None] * g.cols + cols[:, None, :]  # [n, kr, kc]
    # the tiles the patch really touches (the mosaic may hold one more row and column)
    span_r0, span_r1, span_c0, span_c1 = patch_spans(lx, ly, side, g)
    in_rows = (rows >= span_r0[:, None]) & (rows <= span_r1[:, None])
    in_cols = (cols >= span_c0[:, None]) & (cols <= span_c1[:, None])
    inside = in_rows[:, :, None] & in_cols[:, None, :]
    keys = sorted(tiles)
    stack = torch.stack(
        [tiles[k] for k in keys]
        + [torch.full((3, g.tile_h, g.tile_w), WHITE, dtype=torch.uint8, device=device)]
    )
    lookup = {k: i for i, k in enumerate(keys)}
    white = len(keys)
    index = np.full(ids.shape, white, dtype=np.int64)
    flat_ids, flat_in = ids.reshape(-1), inside.reshape(-1)
    flat_index = index.reshape(-1)
    for j in np.flatnonzero(flat_in):
        flat_index[j] = lookup[int(flat_ids[j])]  # a tile the plan did not decode: a bug
    mosaic = stack[torch.from_numpy(flat_index).to(device)]  # [n*kr*kc, 3, th, tw]
    mosaic = mosaic.view(n, kr, kc, 3, g.tile_h, g.tile_w).permute(0, 3, 1, 4, 2, 5)
    mosaic = mosaic.reshape(n, 3, kr * g.tile_h, kc * g.tile_w)
    steps = np.arange(side)
    yy = (ly - r0 * g.tile_h)[:, None] + steps[None, :]  # [n, side] rows inside the mosaic
    xx = (lx - c0 * g.tile_w)[:, None] + steps[None, :]
    b = torch.arange(n, device=device)[:, None, None]
    y_index = torch.from_numpy(yy).to(device)[:, :, None]
    x_index = torch.from_numpy(xx).to(device)[:, None, :]
    patches = mosaic[b, :, y_index, x_index]  # [n, side, side, 3]
    level_y = ly[:, None] + steps[None, :]
    level_x = lx[:, None] + steps[None, :]
    out_y = torch.from_numpy((level_y < 0) | (level_y >= g.height)).to(device)
    out_x = torch.from_numpy((level_x < 0) | (level_x >= g.width)).to(device)
    outside = out_y[:, :, None] | out_x[:, None, :]
    patches = patches.masked_fill(outside[..., None], WHITE)
    return patches.permute(0, 3, 1, 2)
