"""Which reader feeds the model: tiles decoded on the GPU, planned on the CPU, or cached.

:func:`open_batches` picks, for one slide and patch grid, the fastest reader that applies:

- ``gpu``: :class:`~wsi_ai.engine.device_reader.DeviceBatches`, nvJPEG on the model's GPU,
  for levels stored as JPEG tiles (SVS, generic tiled TIFF) when torchvision decodes on it;
- ``cpu``: :class:`~wsi_ai.engine.tile_reader.PlannedBatches`, each tile decoded once on the
  CPU (natively for TIFF pyramids, through ``read_region`` chunks for other formats);
- ``cache``: :class:`~wsi_ai.engine.loader.PatchBatches`, the LRU tile cache, used when the
  planned reader would hold more decoded tiles at once than its budget (a table in an order
  that revisits tiles far apart) — never chosen by hand.

``decode="auto"`` takes ``gpu`` on a CUDA model where it applies, else ``cpu``. Asking for
``gpu`` where it does not apply falls back to ``cpu`` and says why in the log: the patches
are the same within JPEG-decoder tolerance either way.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from wsi_ai.engine.config import DECODES
from wsi_ai.engine.loader import PatchBatches
from wsi_ai.engine.tile_plan import TilePlan
from wsi_ai.engine.tile_reader import PlannedBatches, TileSource, level_coordinates
from wsi_ai.slide import Slide
from wsi_ai.tiling import GridSpec

__all__ = ["DECODES", "HOST_TILE_BUDGET", "open_batches"]

log = logging.getLogger(__name__)

HOST_TILE_BUDGET = 2 * 2**30  # decoded tiles held at once by the planned CPU reader
DEVICE_TILE_FRACTION = 0.25  # of the GPU's free memory, for decoded tiles


def _device_budget(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return int(DEVICE_TILE_FRACTION * free)


def open_batches(
    slide: Slide,
    spec: GridSpec,
    table: pd.DataFrame,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    decode: str = "auto",
    threads: int = 2,
) -> tuple[Any, str]:
    """The batches of ``table`` for a model on ``device``, and which reader reads them."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    device = torch.device(device)
    source = TileSource(slide, spec.level)
    lx, ly = level_coordinates(table, slide.levels[spec.level].downsample)
    plan = TilePlan(lx, ly, spec.read_size, source.geometry, batch_size)
    want_gpu = decode == "gpu" or (decode == "auto" and device.type == "cuda")
    if want_gpu:
        reason = _gpu_refusal(source, device, plan)
        if reason is None:
            from wsi_ai.engine.device_reader import DeviceBatches

            batches = DeviceBatches(
                slide, spec, table, batch_size, device, threads=threads, source=source, plan=plan
            )
            return batches, "gpu"
        (log.warning if decode == "gpu" else log.info)(
            "%s: decoding on the CPU: %s", slide.path.name, reason
        )
    if plan.peak_bytes() <= HOST_TILE_BUDGET:
        pinned = device.type == "cuda"
        planned = PlannedBatches(
            slide,
            spec,
            table,
            batch_size,
            threads=threads,
            pin_memory=pinned,
            source=source,
            plan=plan,
        )
        return planned, "cpu"
    log.info(
        "%s: the table's order would hold %.1f GiB of decoded tiles; using the tile cache",
        slide.path.name,
        plan.peak_bytes() / 2**30,
    )
    source.close()
    pinned = device.type == "cuda"
    return PatchBatches(slide, spec, table, batch_size, threads=threads, pin_memory=pinned), "cache"


def _gpu_refusal(source: TileSource, device: torch.device, plan: TilePlan) -> str | None:
    """Why the GPU reader cannot read this level on ``device`` (``None``: it can)."""
    from wsi_ai.engine.device_reader import device_decode_available

    if device.type != "cuda":
        return f"the model runs on {device}, not a GPU"
    if not source.jpeg:
        return "the level is not stored as JPEG tiles"
    if not device_decode_available(device):
        return "this torchvision cannot decode JPEG on the GPU"
    if plan.peak_bytes() > _device_budget(device):
        return "its decoded tiles would not fit in a quarter of the free GPU memory"
    return None
