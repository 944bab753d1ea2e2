"""One slide through the model: tissue, patch grid, batches, model, features store.

:func:`embed_slide` is the unit of work for one slide, in two steps that the Dask graph
also schedules separately (so one slide's tissue detection overlaps another's inference):
:func:`prepare_slide` opens the slide, finds the tissue and lays the card's patch grid over
it (``mpp`` µm/px, ``size`` px); :func:`run_prepared` streams the patches through an
:class:`~wsi_ai.engine.runner.InferenceModel` and writes ``OUT/<slide-stem>.zarr``
(:mod:`wsi_ai.store.features` format) under a temporary name, renamed into place when
complete. Its attributes record the card's name and hash, the weights (or
``random_init``), the grid, every parameter (files by name, never by path) and whether the
run was deterministic (:func:`torch_determinism`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsi_ai import __version__
from wsi_ai.engine.batching import open_batches
from wsi_ai.engine.config import EngineConfig, SlideResult
from wsi_ai.engine.runner import InferenceModel, load_model, run_batches
from wsi_ai.engine.writer import FeaturesWriter
from wsi_ai.errors import failure_message
from wsi_ai.nn.backbone import Backbone
from wsi_ai.outputs import check_output
from wsi_ai.tiling import PatchGrid

__all__ = [
    "PreparedSlide",
    "embed_slide",
    "prepare_slide",
    "run_prepared",
    "store_attributes",
    "torch_determinism",
]

log = logging.getLogger(__name__)


def store_attributes(
    slide: Path,
    config: EngineConfig,
    model: InferenceModel,
    patches: PatchGrid,
    reader: str | None = None,
) -> dict[str, Any]:
    """What a features store records about how it was made (JSON-ready): the slide by file
    name and identity (:func:`~wsi_ai.slide.identity.slide_identity`), never by its absolute
    path (a store is copied between machines; data files hold no machine's paths).
    ``reader`` is the patch reader :func:`~wsi_ai.engine.batching.open_batches` chose."""
    from wsi_ai.slide.identity import IDENTITY_KEY, slide_identity

    card = model.card
    provenance = model.backbone.provenance()
    provenance["weights"] = _file_name(provenance["weights"])
    parameters = config.as_dict()
    parameters.update(model.settings())
    parameters["mpp"] = patches.spec.mpp
    parameters["model"] = _file_name(parameters["model"])  # a card's path, or its name
    parameters["weights"] = _file_name(parameters["weights"])
    if reader is not None:
        parameters["reader"] = reader
    return {
        "slide": slide.name,
        "slide_path": slide.name,
        IDENTITY_KEY: slide_identity(slide),
        "model": {"name": card.name, "sha256": card.card_hash},
        "model_name": card.name,
        "card_hash": card.card_hash,
        "random_init": bool(provenance["random_init"]),
        "backbone": provenance,
        "embed_dim": card.embed_dim,
        "outputs": list(config.outputs),
        "parameters": parameters,
        "grid": patches.spec.as_dict(),
        "patches": len(patches),
        "wsi_ai_version": __version__,
        **torch_determinism(model.device),
    }


def _file_name(path: str | None) -> str | None:
    """A path as its file name (the sha256 beside it says which file it was)."""
    return None if path is None else Path(path).name


def torch_determinism(device: torch.device) -> dict[str, Any]:
    """Which nondeterminism the model's run allowed, for the store's attributes.

    On a CPU the same inputs give the same bytes: ``{"deterministic": True}``. On a GPU
    ``deterministic`` is true only with torch's deterministic algorithms on and cuDNN's
    autotuner off (the engine turns ``cudnn.benchmark`` on for speed, so by default it is
    false), and ``torch_determinism`` records the settings used: embeddings may then differ
    in their last bits from run to run.
    """
    if device.type == "cpu":
        return {"deterministic": True}
    cudnn = torch.backends.cudnn
    settings = {
        "device": device.type,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": bool(cudnn.benchmark),
        "cudnn_deterministic": bool(cudnn.deterministic),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(cudnn.allow_tf32),
    }
    deterministic = (
        settings["deterministic_algorithms"]
        and settings["cudnn_deterministic"]
        and not settings["cudnn_benchmark"]
    )
    return {"deterministic": bool(deterministic), "torch_determinism": settings}


@dataclass(frozen=True)
class PreparedSlide:
    """A slide's patch grid (tissue found, table made), ready for the model."""

    slide: Path
    patches: PatchGrid
    seconds: float  # spent preparing


def prepare_slide(slide_path: Path, config: EngineConfig, mpp: float, size: int) -> PreparedSlide:
    """Open the slide, find the tissue and lay ``size`` px patches at ``mpp`` µm/px over it.

    Raises :class:`~wsi_ai.errors.InvalidInputError` when no patch is left (no tissue, or a
    slide smaller than one patch; :func:`~wsi_ai.tiling.plan_patches` says which). The slide
    is closed again: the grid is all that travels.
    """
    from wsi_ai.slide import open_slide
    from wsi_ai.tiling import GridConfig, plan_patches
    from wsi_ai.tissue import TissueConfig

    start = time.perf_counter()
    tissue = TissueConfig(enabled=config.tissue)
    grid = GridConfig(mpp=mpp, size=size, min_tissue=config.min_tissue)
    with open_slide(slide_path, mpp_override=config.slide_mpp) as slide:
        patches = plan_patches(slide, tissue, grid)
    log.info("%s: %d patches of %d px at %g µm/px", slide_path.name, len(patches), size, mpp)
    return PreparedSlide(slide_path, patches, time.perf_counter() - start)


def run_prepared(
    prepared: PreparedSlide,
    out: Path,
    config: EngineConfig,
    model: InferenceModel,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Stream a prepared slide's patches through ``model`` into the store ``out``."""
    from wsi_ai.slide import open_slide

    card, patches = model.card, prepared.patches
    with open_slide(prepared.slide, mpp_override=config.slide_mpp) as slide:
        batches, reader = open_batches(
            slide,
            patches.spec,
            patches.table,
            model.batch_size,
            device=model.device,
            decode=config.decode,
            threads=config.read_threads,
        )
        with FeaturesWriter(
            out,
            patches.table,
            embed_dim=card.embed_dim if model.embeddings else None,
            classes=card.classes if model.scores else None,
            attrs=store_attributes(prepared.slide, config, model, patches, reader),
            overwrite=overwrite,
        ) as writer:
            run_batches(
                model, batches, writer.write, progress, total=len(patches), slide=prepared.slide
            )
    return len(patches)


def embed_slide(
    slide: Path,
    out: Path,
    config: EngineConfig,
    backbone: Backbone | InferenceModel | None = None,
    overwrite: bool = False,
    *,
    progress: Callable[[int, int], None] | None = None,
    raise_errors: bool = False,
) -> SlideResult:
    """Embed (and score) one slide into the features store ``out``.

    ``backbone``: a built :class:`Backbone` or a prepared :class:`InferenceModel`
    (reused across slides); ``None`` builds the config's. ``progress(done, total)``
    counts patches. Errors come back in :attr:`SlideResult.error` as one line (raised
    instead with ``raise_errors``); ``out`` then does not exist.
    """
    slide = Path(slide)
    start = time.perf_counter()
    try:
        check_output(out, overwrite)
        model = backbone if isinstance(backbone, InferenceModel) else load_model(config, backbone)
        prepared = prepare_slide(slide, config, config.mpp or model.card.mpp, model.size)
        count = run_prepared(prepared, out, config, model, overwrite, progress)
    except Exception as err:
        if raise_errors:
            raise
        log.debug("%s failed", slide, exc_info=True)
        return SlideResult(slide, None, 0, time.perf_counter() - start, failure_message(slide, err))
    return SlideResult(slide, out, count, time.perf_counter() - start, None)
