"""One bench run: build the model once, then measure every slide's stages and limits."""

from __future__ import annotations

import resource
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from wsi_ai.bench.measure import (
    decode_limit,
    end_to_end,
    file_read_limit,
    input_stage,
    model_limit,
    stitch_export,
    timed,
)
from wsi_ai.bench.monitor import Monitor
from wsi_ai.bench.report import SlideBench
from wsi_ai.engine.config import EngineConfig
from wsi_ai.engine.embed import PreparedSlide, prepare_slide
from wsi_ai.engine.runner import InferenceModel, load_model
from wsi_ai.errors import InvalidInputError, WsiAiError, failure_message
from wsi_ai.slide import open_slide
from wsi_ai.tiling import PatchGrid

__all__ = ["bench_slides", "capped"]

Say = Callable[[str], None]


def capped(prepared: PreparedSlide, max_patches: int | None) -> PreparedSlide:
    """The slide's first ``max_patches`` patches (table order), or all of them."""
    table = prepared.patches.table
    if max_patches is None or len(table) <= max_patches:
        return prepared
    grid = PatchGrid(table.iloc[:max_patches].reset_index(drop=True), prepared.patches.spec)
    return replace(prepared, patches=grid)


def bench_slides(
    slides: Sequence[Path],
    config: EngineConfig,
    *,
    max_patches: int | None = None,
    say: Say = lambda line: None,
) -> tuple[list[SlideBench], dict[str, object]]:
    """Measure every slide; returns the per-slide figures and the run's shared ones.

    A slide that fails is reported through ``say`` and in the run's ``errors`` (one line
    each); the others are still measured.
    """
    say(f"building {config.model} ...")
    model, model_s = timed(lambda: load_model(config))
    say(f"model alone on random patches ({model.batch_size} x {model.size} px) ...")
    model_rate = model_limit(model)
    run = {
        "model": model.card.name,
        "model_build_s": round(model_s, 3),
        "model_rate": round(model_rate, 2),
        "settings": model.settings(),
        "random_init": model.backbone.random_init,
    }
    results: list[SlideBench] = []
    errors: list[str] = []
    for path in slides:
        try:
            results.append(_one(path, config, model, model_s, model_rate, max_patches, say))
        except (WsiAiError, OSError) as err:  # this slide: reported, the others still run
            errors.append(failure_message(path, err))
            say(f"error: {errors[-1]}")
    run["errors"] = errors
    run["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return results, run


def _one(
    path: Path,
    config: EngineConfig,
    model: InferenceModel,
    model_s: float,
    model_rate: float,
    max_patches: int | None,
    say: Say,
) -> SlideBench:
    device = model.device
    say(f"{path.name}: tissue and grid ...")
    mpp = config.mpp or model.card.mpp
    prepared, prepare_s = timed(lambda: prepare_slide(path, config, mpp, model.size))
    prepared = capped(prepared, max_patches)
    if len(prepared.patches) == 0:
        raise InvalidInputError("no patches to bench on this slide", path)
    with open_slide(path, mpp_override=config.slide_mpp) as slide:
        say(f"{path.name}: limits (file read, raw decode) on {len(prepared.patches):,} patches ...")
        file_read = file_read_limit(slide, prepared)
        decode = decode_limit(slide, prepared, device)
        say(f"{path.name}: the reader alone ...")
        inputs = input_stage(slide, prepared, model, config)
    with tempfile.TemporaryDirectory(prefix="wsi-ai-bench-") as tmp:
        store = Path(tmp) / "bench.zarr"
        say(f"{path.name}: end to end ...")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        gpu = (device.index or 0) if device.type == "cuda" else None
        with Monitor(gpu) as monitor:
            e2e = end_to_end(prepared, config, model, store)
        usage = monitor.usage.as_dict()
        if device.type == "cuda":
            usage["torch_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        say(f"{path.name}: stitch and export ...")
        stitch_s, export_s = stitch_export(prepared, store, Path(tmp) / "maps", config.slide_mpp)
    return SlideBench(
        slide=path.name,
        patches=len(prepared.patches),
        reader=inputs.reader,
        model_s=model_s,
        prepare_s=prepare_s,
        first_batch_s=inputs.first_batch_s,
        input_s=inputs.seconds,
        parallel=inputs.parallel,
        read_stats=inputs.stats,
        model_rate=model_rate,
        end_to_end_s=e2e,
        stitch_s=stitch_s,
        export_s=export_s,
        file_read=file_read,
        decode=decode,
        usage=usage,
        settings={"mpp": mpp, "size": model.size, "batch_size": model.batch_size},
    )
