"""One slide through a pipeline, in order: open, tissue, grid, score, stitch and exports.

:func:`run_slide` writes every output of one slide into ``out_dir`` (a fresh folder that
:mod:`wsi_ai.batch` renames into ``OUT/slides/<name>/`` when the slide is complete) and returns
its record: the slide's identity, what each stage found and how long it took. The stages are
the library's own functions; models come from ``models`` (built once per worker, see
:class:`wsi_ai.batch.WorkerModels`) so many slides share them.

Per-slide files: ``tissue.geojson``, ``tissue-mask.png``, ``thumbnail.png``, ``grid.png``,
``patches.csv``, ``qc.geojson`` (the record's ``qc``: blur, pen, bubbles, stain vectors); the
score stage's ``scores.csv`` (he), ``features.zarr`` (embed, classify, mil) and
``prediction.json`` + ``patch_scores.csv`` (mil); the stitcher's ``heatmap.png``,
``overlay.png``, ``regions.geojson`` and ``heatmap.ome.zarr``; :mod:`wsi_ai.batch` adds
``report.html`` and ``slide.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from wsi_ai.errors import InvalidInputError
from wsi_ai.export.qc import write_qc_files
from wsi_ai.pipeline_config import Pipeline
from wsi_ai.qc import slide_qc
from wsi_ai.slide import Slide, open_slide
from wsi_ai.tiling import GridConfig, PatchGrid, plan_patches
from wsi_ai.tissue import TissueConfig, detect_tissue

Progress = Callable[[int, int], None]


class Models(Protocol):
    """Where a worker's models come from (built once, kept for the slides that follow)."""

    def backbone(self, pipeline: Pipeline) -> Any: ...

    def aggregator(self, pipeline: Pipeline) -> Any: ...


@dataclass
class _Job:
    """One slide's run: what every stage reads, and the record they fill in."""

    slide: Slide
    pipeline: Pipeline
    out: Path
    slide_mpp: float | None
    models: Models | None
    progress: Progress | None
    record: dict[str, Any] = field(default_factory=lambda: {"warnings": [], "stages": {}})
    model: Any = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record["stages"][name] = round(time.perf_counter() - start, 4)


def _grid(pipeline: Pipeline, model: Any) -> GridConfig:
    g = pipeline.grid
    mpp = g.mpp or (model.card.mpp if model is not None else 0.5)
    size = g.size or (model.size if model is not None else 224)
    return GridConfig(mpp=mpp, size=size, overlap=g.overlap, min_tissue=g.min_tissue, edge=g.edge)


def _score_he(job: _Job, patches: PatchGrid) -> tuple[pd.DataFrame, list[str]]:
    from wsi_ai.score.he import COLUMN, score_to_table

    sc = job.pipeline.score
    table = score_to_table(
        job.slide,
        patches.table,
        patches.spec.as_dict(),
        job.out / "scores.csv",
        mpp=sc.read_mpp,
        tissue_only=sc.tissue_only,
        workers=sc.workers,
        progress=job.progress,
    )
    return table, [COLUMN]


def _score_model(job: _Job, patches: PatchGrid) -> tuple[pd.DataFrame | None, list[str]]:
    """Embed (classify, mil): the features store, then the classes or the aggregator."""
    from wsi_ai.engine.embed import PreparedSlide, run_prepared
    from wsi_ai.store.features import read_features

    store, kind = job.out / "features.zarr", job.pipeline.score.kind
    config = job.pipeline.engine_config(job.slide_mpp)
    prepared = PreparedSlide(job.slide.path, patches, 0.0)
    run_prepared(prepared, store, config, job.model, progress=job.progress)
    if kind == "embed":
        return None, []
    if kind == "classify":
        return read_features(store, with_embeddings=False).table(), list(job.model.card.classes)
    from wsi_ai.nn.predict import check_compatible, predict_bag
    from wsi_ai.store.bags import load_bag

    assert job.models is not None
    run = job.models.aggregator(job.pipeline)
    bag, ident = load_bag(store)
    check_compatible(run, bag, ident, store)
    prediction, table = predict_bag(run, bag)
    prediction["slide"] = job.slide.path.name
    prediction["pipeline"] = {"name": job.pipeline.name, "config_hash": job.pipeline.config_hash()}
    table.to_csv(job.out / "patch_scores.csv", index=False)
    (job.out / "prediction.json").write_text(json.dumps(prediction, indent=2) + "\n")
    job.record["prediction"] = {k: prediction[k] for k in ("class", "probability", "confidence")}
    job.record["random_init"] = prediction["random_init"]
    return table, ["attention"]


def _stitch(job: _Job, table: pd.DataFrame, columns: list[str]) -> None:
    from wsi_ai.export.maps import write_maps

    wanted = list(job.pipeline.stitch.columns) or columns
    finite = np.isfinite(table[wanted].to_numpy(np.float64)).all(axis=1)
    if not finite.all():
        raise InvalidInputError(
            f"{int((~finite).sum())} patch(es) have non-finite scores; nothing was stitched",
            job.slide.path,
        )
    maps = write_maps(job.slide, table, wanted, job.out, job.pipeline.stitch.map_options())
    job.record["regions"] = maps["regions"]
    if maps["regions"] == 0:
        job.record["warnings"].append(
            f"no region above the threshold ({maps['threshold']}) in {', '.join(wanted)}"
        )


def run_slide(
    path: Path,
    pipeline: Pipeline,
    out_dir: Path,
    *,
    slide_mpp: float | None = None,
    default_mpp: float | None = None,
    models: Models | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run ``pipeline`` on the slide at ``path``, writing into ``out_dir``; return its record.

    ``slide_mpp`` wins over the file's own MPP; ``default_mpp`` is used only when it has none."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source = "manifest" if slide_mpp is not None else "file"
    if slide_mpp is None and default_mpp is not None:
        with open_slide(path) as probe:
            slide_mpp, source = (
                (default_mpp, "--slide-mpp") if probe.mpp is None else (None, source)
            )
    with open_slide(path, mpp_override=slide_mpp) as slide:
        job = _Job(slide, pipeline, out_dir, slide_mpp, models, progress)
        mpp, (width, height) = slide.require_mpp(), slide.dimensions
        job.record["slide"] = {"name": path.name, "path": str(Path(path).absolute()),  # run
                               "dimensions": [width, height], "mpp": mpp, "mpp_source": source,
                               "vendor": slide.vendor, "backend": slide.backend}  # fmt: skip
        found = None
        if pipeline.tissue.enabled:
            with job.stage("tissue"):
                found = detect_tissue(slide, target_mpp=pipeline.tissue.target_mpp)
            fraction = float(found.mask.mean())
            job.record["tissue_fraction"] = round(fraction, 4)
            job.record["tissue_area_mm2"] = round(fraction * width * height * mpp**2 / 1e6, 4)
        if models is not None and pipeline.uses_model:
            job.model = models.backbone(pipeline)
        tissue = TissueConfig(pipeline.tissue.enabled, pipeline.tissue.target_mpp)
        with job.stage("grid"):
            patches = plan_patches(slide, tissue, _grid(pipeline, job.model), found)
        job.record["patches"] = len(patches)
        qc = None
        if found is not None and pipeline.export.qc:
            with job.stage("qc"):
                qc = slide_qc(slide, found, patches)
            job.record["qc"] = qc.as_dict()
        with job.stage("qc_exports"):
            write_qc_files(slide, pipeline, found, patches, out_dir, qc)
        table: pd.DataFrame | None = None
        columns: list[str] = []
        with job.stage("score"):
            if pipeline.score.kind == "he":
                table, columns = _score_he(job, patches)
            elif pipeline.uses_model:
                table, columns = _score_model(job, patches)
        if table is not None and pipeline.stitch.enabled:
            with job.stage("stitch"):
                _stitch(job, table, columns)
    return job.record
