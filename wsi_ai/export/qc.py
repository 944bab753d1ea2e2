"""The per-slide QC files of a pipeline run: tissue, QC regions, thumbnail, grid, patches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsi_ai import __version__
from wsi_ai.export.geojson import write_geojson
from wsi_ai.pipeline_config import Pipeline
from wsi_ai.qc import SlideQC, qc_annotations
from wsi_ai.slide import Slide
from wsi_ai.store.table import write_table
from wsi_ai.tiling import PatchGrid
from wsi_ai.tiling.preview import draw_grid, save_png
from wsi_ai.tissue.mask import TissueMask


def provenance(slide: Slide, pipeline: Pipeline, stage: str) -> dict[str, Any]:
    """The provenance member of a pipeline's GeoJSON outputs (no path, no scanner data)."""
    return {
        "wsi_ai_version": __version__,
        "slide": slide.path.name,
        "slide_size_bytes": slide.file_size,
        "pipeline": pipeline.name,
        "stage": stage,
    }


def write_qc_files(
    slide: Slide,
    pipeline: Pipeline,
    found: TissueMask | None,
    patches: PatchGrid,
    out: Path,
    qc: SlideQC | None = None,
) -> None:
    """The per-slide QC files a pipeline's ``[export]`` asks for, written into ``out``:
    tissue annotations and mask, thumbnail, grid preview, patch table, and ``qc.geojson``
    (pen, bubble and blurry-patch regions as QuPath classes of their own; only when the
    slide has any: an empty file would make QuPath say "No objects found")."""
    ex = pipeline.export
    if qc is not None and ex.qc_geojson and qc.annotations:
        record = provenance(slide, pipeline, "qc")
        write_geojson(out / "qc.geojson", qc_annotations(qc), provenance=record)
    if found is not None and ex.tissue_geojson:
        mpp = None if slide.mpp is None else slide.mpp.mean
        record = provenance(slide, pipeline, "tissue")
        write_geojson(out / "tissue.geojson", found.to_annotations(mpp=mpp), provenance=record)
    if found is not None and ex.tissue_mask:
        save_png(found.mask.astype(np.uint8) * 255, out / "tissue-mask.png")
    if ex.thumbnail:
        save_png(slide.thumbnail(ex.thumbnail_size), out / "thumbnail.png")
    if ex.grid_preview:
        save_png(draw_grid(slide, patches, max_size=ex.thumbnail_size), out / "grid.png")
    if ex.patch_table:
        from wsi_ai.slide.identity import IDENTITY_KEY, slide_identity

        meta = {**patches.spec.as_dict(), IDENTITY_KEY: slide_identity(slide)}
        write_table(patches.table, out / "patches.csv", meta=meta)
