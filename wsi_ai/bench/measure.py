"""The stages and limits ``wsi-ai bench`` times, on one slide's real patch table.

Limits, each measured in the run that uses it:

- :func:`file_read_limit`: the stored bytes of every tile the table needs, read with
  ``pread`` in one thread per core after asking the kernel to drop the file from its cache
  (``posix_fadvise DONTNEED``; a file held open elsewhere may stay cached);
- :func:`decode_limit`: those tiles decoded with nothing else to do: in one thread per core
  on the CPU, in batches of 256 through nvJPEG on a GPU;
- :func:`model_limit`: the backbone alone on random uint8 patches already on the device,
  the same batch size, patch size, precision and memory format as the slide's run.

Stages: :func:`input_stage` runs the patch reader alone (read, decode, cut, resize, no
model); :func:`end_to_end` the real ``embed`` path into a features store; :func:`stitch_export`
stitches a per-patch value of that store into a heatmap and writes the map outputs.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_ai.engine.batching import open_batches
from wsi_ai.engine.config import EngineConfig
from wsi_ai.engine.embed import PreparedSlide, run_prepared
from wsi_ai.engine.runner import InferenceModel
from wsi_ai.engine.tile_plan import TilePlan
from wsi_ai.engine.tile_reader import TileSource, level_coordinates
from wsi_ai.slide import Slide, open_slide

__all__ = [
    "InputFigures",
    "decode_limit",
    "end_to_end",
    "file_read_limit",
    "input_stage",
    "model_limit",
    "stitch_export",
]

GPU_DECODE_BATCH = 256


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tiles(slide: Slide, prepared: PreparedSlide) -> tuple[TileSource, list[int]]:
    spec = prepared.patches.spec
    source = TileSource(slide, spec.level)
    lx, ly = level_coordinates(prepared.patches.table, slide.levels[spec.level].downsample)
    plan = TilePlan(lx, ly, spec.read_size, source.geometry, max(1, len(lx)))
    return source, [int(t) for t in plan.tiles]


def file_read_limit(slide: Slide, prepared: PreparedSlide) -> dict[str, Any] | None:
    """Seconds and bytes to ``pread`` every needed tile's stored bytes on all cores."""
    source, tiles = _tiles(slide, prepared)
    try:
        if not source.native:
            return None  # tiles come through read_region: no stored bytes to time alone
        fd = os.open(slide.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        start = time.perf_counter()
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            size = sum(len(b) for b in pool.map(source.raw, tiles))
        return {"seconds": time.perf_counter() - start, "bytes": size, "tiles": len(tiles)}
    finally:
        source.close()


def decode_limit(slide: Slide, prepared: PreparedSlide, device: torch.device) -> dict[str, Any]:
    """Seconds to decode every needed tile: all cores, or nvJPEG for a CUDA device."""
    source, tiles = _tiles(slide, prepared)
    try:
        if device.type == "cuda" and source.jpeg:
            from torchvision.io import decode_jpeg

            files = [
                torch.frombuffer(bytearray(source.jpeg_file(raw)), dtype=torch.uint8)
                for raw in map(source.raw, tiles)
                if raw
            ]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                decode_jpeg(files[:8], device=device)  # warm up the decoder
                _sync(device)
                start = time.perf_counter()
                for a in range(0, len(files), GPU_DECODE_BATCH):
                    decode_jpeg(files[a : a + GPU_DECODE_BATCH], device=device)
                _sync(device)
            where = f"nvJPEG on {device}"
        else:
            threads = os.cpu_count() or 1
            raw = list(map(source.raw, tiles)) if source.native else []
            start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                if source.native:
                    list(pool.map(source.decode_raw, tiles, raw))
                else:
                    list(pool.map(source.decode, tiles))
            where = f"{threads} CPU threads"
        return {"seconds": time.perf_counter() - start, "tiles": len(tiles), "where": where}
    finally:
        source.close()


def model_limit(model: InferenceModel, min_seconds: float = 2.0, rounds: int = 3) -> float:
    """Patches/s of the model on random patches on its device (after one warm-up batch)."""
    device, size, batch = model.device, model.size, model.batch_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)
    pixels = pixels.to(device)
    model(pixels)
    _sync(device)
    done, start = 0, time.perf_counter()
    while done < rounds or time.perf_counter() - start < min_seconds:
        model(pixels)
        done += 1
    _sync(device)
    return done * batch / (time.perf_counter() - start)


@dataclass
class InputFigures:
    """The patch reader alone: wall seconds, the reader chosen, its summed stage times."""

    seconds: float
    first_batch_s: float
    reader: str
    parallel: int  # threads the summed stage times ran in (1: wall times of one thread)
    stats: dict[str, float] = field(default_factory=dict)


def input_stage(
    slide: Slide, prepared: PreparedSlide, model: InferenceModel, config: EngineConfig
) -> InputFigures:
    """Read every patch of the table into batches on the model's device, with no model."""
    patches = prepared.patches
    start = time.perf_counter()
    batches, reader = open_batches(
        slide,
        patches.spec,
        patches.table,
        model.batch_size,
        device=model.device,
        decode=config.decode,
        threads=config.read_threads,
    )
    first = None
    for batch in batches:
        pixels = batch.pixels
        if pixels.device != model.device:
            pixels = pixels.to(model.device, non_blocking=True)
        _sync(model.device)
        batch.release()
        if first is None:
            first = time.perf_counter() - start
    _sync(model.device)
    seconds = time.perf_counter() - start
    stats = getattr(batches, "stats", None)
    figures = {} if stats is None else stats.as_dict()
    parallel = 1 if reader == "gpu" else config.read_threads
    return InputFigures(seconds, first or seconds, reader, parallel, figures)


def end_to_end(
    prepared: PreparedSlide, config: EngineConfig, model: InferenceModel, out: Path
) -> float:
    """Seconds of the real embed path (read, model, features store) for the prepared slide."""
    start = time.perf_counter()
    run_prepared(prepared, out, config, model, overwrite=True)
    _sync(model.device)
    return time.perf_counter() - start


def stitch_export(
    prepared: PreparedSlide, store: Path, out: Path, slide_mpp: float | None
) -> tuple[float, float]:
    """Seconds to stitch, and then to write the map outputs, of a per-patch value.

    The value is each patch's cosine similarity to the slide's mean embedding, scaled to
    [0, 1]: a real, spatially varying signal from the store just written.
    """
    from wsi_ai.export.maps import MapOptions, write_maps
    from wsi_ai.stitch import stitch
    from wsi_ai.store.features import read_features

    features = read_features(store)
    emb = np.asarray(features.embeddings, dtype=np.float32)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-6)
    mean = unit.mean(axis=0)
    cosine = unit @ (mean / max(float(np.linalg.norm(mean)), 1e-6))
    low, high = float(cosine.min()), float(cosine.max())
    table = prepared.patches.table.copy()
    table["similarity"] = (cosine - low) / (high - low) if high > low else 0.5
    with open_slide(prepared.slide, mpp_override=slide_mpp) as slide:
        x, y, w, h = (table[c].to_numpy(np.float64) for c in ("x", "y", "width", "height"))
        values = table[["similarity"]].to_numpy(np.float32)
        ds = max(1.0, float(np.median(w)) / 4)
        stitch(x[:1], y[:1], w[:1], h[:1], values[:1], slide_size=slide.dimensions, downsample=ds)
        start = time.perf_counter()  # after the first call, which compiles the kernels
        stitch(x, y, w, h, values, slide_size=slide.dimensions, downsample=ds)
        stitched = time.perf_counter() - start
        start = time.perf_counter()
        write_maps(slide, table, ["similarity"], out, MapOptions())
        written = time.perf_counter() - start
    return stitched, max(0.0, written - stitched)


def timed(func: Callable[[], Any]) -> tuple[Any, float]:
    """``func()`` and the seconds it took."""
    start = time.perf_counter()
    value = func()
    return value, time.perf_counter() - start
