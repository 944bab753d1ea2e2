"""Inference engine: patch tables to batches to a backbone to per-slide features stores.

``run_slides(slides, out_dir, EngineConfig(model="uni"))`` embeds every slide into
``out_dir/<slide-stem>.zarr`` (coords, float16 embeddings, scores, attributes with the
card's hash and every parameter), one Dask task per slide, locally or on a cluster.
Modules in order: :mod:`.config` (what to run), :mod:`.loader` (patch batches, read
threads, prefetch), :mod:`.runner` (device, precision, batch size, the batch loop),
:mod:`.writer` (streaming, atomic store writes), :mod:`.embed` (one slide),
:mod:`.graph` (many slides, Dask). The store's format, and reading it back (what training
and the stitcher do, without torch), is :mod:`wsi_ai.store.features`.

The torch-backed names are imported on first use, so ``EngineConfig`` costs no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wsi_ai.engine.config import EngineConfig, SlideResult

if TYPE_CHECKING:
    from wsi_ai.engine.embed import embed_slide
    from wsi_ai.engine.graph import run_slides
    from wsi_ai.engine.loader import PatchBatches, PatchReader
    from wsi_ai.engine.runner import InferenceModel, load_model
    from wsi_ai.engine.writer import FeaturesWriter

_LAZY = {
    "embed_slide": "wsi_ai.engine.embed",
    "run_slides": "wsi_ai.engine.graph",
    "PatchBatches": "wsi_ai.engine.loader",
    "PatchReader": "wsi_ai.engine.loader",
    "InferenceModel": "wsi_ai.engine.runner",
    "load_model": "wsi_ai.engine.runner",
    "FeaturesWriter": "wsi_ai.engine.writer",
}

__all__ = [
    "EngineConfig",
    "FeaturesWriter",
    "InferenceModel",
    "PatchBatches",
    "PatchReader",
    "SlideResult",
    "embed_slide",
    "load_model",
    "run_slides",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_ai.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
