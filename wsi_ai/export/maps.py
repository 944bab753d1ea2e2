"""Patch scores of one slide -> heatmap -> every file a pathologist opens (``wsi-ai stitch``).

:func:`write_maps` stitches score columns (:func:`wsi_ai.stitch.stitch`; the columns come from
:func:`wsi_ai.store.score_columns`) and writes, into one fresh folder the caller provides:

* ``heatmap.png``: the first column not in ``ignore_classes``, colormapped at thumbnail size,
  transparent where no patch;
* ``overlay.png``: the same over the slide thumbnail, with a colorbar;
* ``regions.geojson``: QuPath annotations from a threshold (one column) or the per-class argmax
  (several), with ``"Area µm^2"``, ``"Mean score"`` and ``"Max score"``;
* ``heatmap.ome.zarr``: every column, in the slide's µm coordinates;
* ``tiles.geojson`` (optional): one QuPath tile per patch with the scores as measurements.

Every GeoJSON and the OME-Zarr carry the provenance: package version, parameters, the slide's
file name and size, and the scores file's name. The caller makes the folder atomic (the CLI
writes it under a temporary name with :func:`wsi_ai.outputs.atomic_output`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from wsi_ai import __version__
from wsi_ai.export.geojson import write_geojson
from wsi_ai.export.heatmap import (
    colorize,
    overlay,
    resample_to_thumbnail,
    value_range,
    write_heatmap_ome_zarr,
)
from wsi_ai.export.regions import (
    argmax_regions,
    otsu_threshold,
    threshold_regions,
    tile_annotations,
)
from wsi_ai.slide import Slide
from wsi_ai.stitch.canvas import stitch
from wsi_ai.tiling.preview import save_png

FILE_NAMES = {
    "heatmap": "heatmap.png",
    "overlay": "overlay.png",
    "regions": "regions.geojson",
    "ome_zarr": "heatmap.ome.zarr",
    "tiles": "tiles.geojson",
}


@dataclass(frozen=True)
class MapOptions:
    """How scores become maps and regions (what ``wsi-ai stitch``'s flags set)."""

    downsample: float | None = None  # level-0 px per canvas px; None: median patch width / 4
    blend: Literal["mean", "max", "gaussian"] = "mean"
    threshold: float | None = None  # one column: region threshold; None: Otsu on the scores
    min_score: float | None = None  # several columns: the argmax class must reach this
    ignore_classes: tuple[str, ...] = ()  # several columns: classes that give no region
    min_area_um2: float = 0.0  # smaller regions are dropped and smaller holes filled
    merge: bool = False  # one MultiPolygon annotation per class
    tiles: bool = False  # also write tiles.geojson
    gzip: bool = False  # GeoJSON as .geojson.gz
    ngff: Literal["0.4", "0.5"] = "0.4"
    thumbnail_size: int = 1024
    alpha: float = 0.5
    cmap: str = "viridis"


def output_paths(out_dir: Path, options: MapOptions) -> dict[str, Path]:
    """Where :func:`write_maps` writes each output inside ``out_dir``."""
    paths = {key: out_dir / name for key, name in FILE_NAMES.items()}
    if options.gzip:
        paths = {
            k: p.with_name(p.name + ".gz") if p.suffix == ".geojson" else p
            for k, p in paths.items()
        }
    if not options.tiles:
        del paths["tiles"]
    return paths


def provenance(slide_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The FeatureCollection/OME-Zarr provenance member of a slide's outputs."""
    return {
        "wsi_ai_version": __version__,
        "slide": slide_path.name,
        "slide_size_bytes": slide_path.stat().st_size,
        "parameters": params,
    }


def write_maps(
    slide: Slide,
    table: pd.DataFrame,
    columns: list[str],
    out_dir: Path,
    options: MapOptions,
    *,
    source: Path | None = None,
) -> dict[str, Any]:
    """Stitch ``table[columns]`` on ``slide`` and write every output into ``out_dir``.

    ``out_dir`` is a fresh folder (created when missing); the files are named as
    :func:`output_paths` says. Rows must have finite scores. The slide needs an MPP (areas
    in µm², the OME-Zarr in µm). Returns a JSON-able summary, with ``repaired``/``dropped``
    counts of the regions GeoJSON writer; its ``outputs`` are the paths in ``out_dir``.
    """
    paths = output_paths(out_dir, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    slide.require_mpp()
    assert slide.mpp is not None
    mpp = (slide.mpp.x, slide.mpp.y)
    x, y, w, h = (table[c].to_numpy(np.float64) for c in ("x", "y", "width", "height"))
    values = table[columns].to_numpy(np.float32)
    ds = options.downsample or max(1.0, float(np.median(w)) / 4)
    heatmap = stitch(
        x, y, w, h, values, slide_size=slide.dimensions, downsample=ds, blend=options.blend
    )
    shown = next((i for i, c in enumerate(columns) if c not in options.ignore_classes), 0)
    vmin, vmax = value_range(values[:, shown])
    params: dict[str, Any] = asdict(options) | {
        "scores": None if source is None else source.name,
        "columns": columns,
        "downsample": ds,
        "vmin": vmin,
        "vmax": vmax,
    }
    kwargs: dict[str, Any] = {"min_area_um2": options.min_area_um2, "merge": options.merge}
    if len(columns) == 1:
        threshold = options.threshold
        if threshold is None:
            threshold = otsu_threshold(values[:, 0])
        params["threshold"] = threshold
        regions = threshold_regions(
            heatmap, threshold=threshold, mpp=mpp, classification=columns[0], **kwargs
        )
    else:
        kwargs.update(ignore=options.ignore_classes, min_score=options.min_score)
        regions = argmax_regions(heatmap, columns, mpp=mpp, **kwargs)
    record = provenance(slide.path, params)
    report = write_geojson(paths["regions"], regions, provenance=record)
    if "tiles" in paths:
        tiles = tile_annotations(table, columns)
        write_geojson(paths["tiles"], tiles, provenance=record)
    thumb = slide.thumbnail(options.thumbnail_size)
    picture = resample_to_thumbnail(heatmap, thumb.shape[:2], channel=shown)
    save_png(colorize(picture, vmin, vmax, options.cmap), paths["heatmap"])
    blended = overlay(
        thumb, picture, vmin, vmax, alpha=options.alpha, cmap=options.cmap, label=columns[shown]
    )
    save_png(blended, paths["overlay"])
    write_heatmap_ome_zarr(
        heatmap,
        paths["ome_zarr"],
        slide_mpp=mpp,
        channel_names=columns,
        name=f"{slide.path.name} heatmap",
        ngff=options.ngff,
        window=(vmin, vmax) if len(columns) == 1 else None,  # None: range of all channels
        provenance=record,
    )
    return {
        "slide": str(slide.path),
        "scores": None if source is None else str(source),
        "outputs": {k: str(v) for k, v in paths.items()},
        "patches": len(table),
        "columns": columns,
        "canvas": list(heatmap.shape),
        "downsample": ds,
        "regions": report.written,
        "repaired": report.repaired,
        "dropped": report.dropped,
        "threshold": params.get("threshold"),
        "vmin": vmin,
        "vmax": vmax,
    }
