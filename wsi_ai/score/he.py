"""A real per-patch score without a model: hematoxylin density by colour deconvolution.

Hematoxylin stains nuclei blue-purple, so the mean hematoxylin optical density of a patch is
high where nuclei are dense (epithelium, lymphocytes, tumour) and low on stroma, fat and
glass. It works on any H&E slide, needs no weights and no download, and gives the stitcher
and the exports a meaningful map to show.

The deconvolution is scikit-image's :func:`skimage.color.rgb2hed` (Ruifrok and Johnston's H&E
stain matrix, ``skimage.color.hed_from_rgb``) evaluated exactly, pixel by pixel: for uint8 RGB
``v`` the per-channel term ``log(max(v / 255, 1e-6)) / log(1e-6)`` takes only 256 values, so
it is a lookup table, and the hematoxylin value is ``max(0, sum_c lut[v_c] * M[c, 0])``. The
per-patch mean runs in a Numba kernel that releases the GIL, so patches are read and scored in
parallel threads.

Units: the score is rgb2hed's hematoxylin channel (dimensionless optical density scaled by
``1 / -ln(1e-6)``), averaged over the patch's pixels (or over its tissue pixels only).
Patch rectangles are level-0 px, as in every patch table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from skimage.color import hed_from_rgb

from wsi_ai.errors import InvalidInputError
from wsi_ai.slide.slide import MPP_RTOL, Slide, resize
from wsi_ai.store.table import REQUIRED

COLUMN = "hematoxylin"
TISSUE_OD = 0.04
"""A pixel counts as tissue when the sum of its three per-channel optical densities (rgb2hed
units) exceeds this: about a mean RGB intensity below 210, which leaves glass out."""

_LOG_ADJUST = math.log(1e-6)
_BATCH = 1024  # patches submitted to the thread pool at once
_MAX_PATCH_PX = 4096  # refuse absurd reads (a mis-scaled table) instead of exhausting memory


def _luts() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(h_lut [3, 256], od_lut [256])``: each channel's contribution to H, and its OD."""
    values = np.maximum(np.arange(256, dtype=np.float64) / 255.0, 1e-6)
    od = np.log(values) / _LOG_ADJUST
    h_lut = np.stack([od * float(hed_from_rgb[c, 0]) for c in range(3)])
    return np.ascontiguousarray(h_lut), od


_H_LUT, _OD_LUT = _luts()


@numba.njit(cache=True, nogil=True)
def _h_sums(
    pixels: NDArray[np.uint8], h_lut: NDArray[np.float64], od_lut: NDArray[np.float64], od: float
) -> tuple[float, float, int, int]:
    """(sum of H over all pixels, sum over tissue pixels, tissue pixel count, pixel count)."""
    total = 0.0
    tissue = 0.0
    n_tissue = 0
    rows, cols = pixels.shape[0], pixels.shape[1]
    for i in range(rows):
        for j in range(cols):
            r, g, b = pixels[i, j, 0], pixels[i, j, 1], pixels[i, j, 2]
            h = h_lut[0, r] + h_lut[1, g] + h_lut[2, b]
            if h < 0.0:
                h = 0.0
            total += h
            if od_lut[r] + od_lut[g] + od_lut[b] > od:
                tissue += h
                n_tissue += 1
    return total, tissue, n_tissue, rows * cols


def hematoxylin_map(pixels: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Per-pixel hematoxylin of an RGB uint8 ``(h, w, 3)`` image: ``rgb2hed(pixels)[..., 0]``."""
    rgb = np.asarray(pixels)
    h = _H_LUT[0][rgb[..., 0]] + _H_LUT[1][rgb[..., 1]] + _H_LUT[2][rgb[..., 2]]
    return np.maximum(h, 0.0)


def patch_hematoxylin(
    pixels: NDArray[np.uint8], *, tissue_only: bool = False, tissue_od: float = TISSUE_OD
) -> float:
    """Mean hematoxylin of one RGB uint8 patch, over all pixels or over tissue pixels only.

    A patch without tissue pixels scores 0.0 when ``tissue_only`` (no nuclei there).
    """
    rgb = np.ascontiguousarray(pixels, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidInputError(f"expected an RGB (h, w, 3) patch, got shape {rgb.shape}")
    total, tissue, n_tissue, n = _h_sums(rgb, _H_LUT, _OD_LUT, float(tissue_od))
    if tissue_only:
        return tissue / n_tissue if n_tissue else 0.0
    return total / n if n else 0.0


def _read_plan(
    slide: Slide, table: pd.DataFrame, mpp: float | None
) -> tuple[NDArray[np.int64], float | None]:
    """Per-patch slide level to read from, and the level-0 px per output px (None: as read)."""
    n = len(table)
    if mpp is not None:
        downsample = mpp / slide.require_mpp()
        level = slide.best_level_for_downsample(downsample)
        return np.full(n, level, dtype=np.int64), downsample
    if "level" in table.columns:
        levels = pd.to_numeric(table["level"], errors="coerce").to_numpy()
        if np.isnan(levels).any() or ((levels < 0) | (levels >= slide.level_count)).any():
            raise InvalidInputError(
                f"the table's 'level' column holds levels outside 0..{slide.level_count - 1}; "
                "is it this slide's patch table?"
            )
        return levels.astype(np.int64), None
    return np.zeros(n, dtype=np.int64), None


def hematoxylin_density(
    slide: Slide,
    table: pd.DataFrame,
    *,
    mpp: float | None = None,
    tissue_only: bool = False,
    tissue_od: float = TISSUE_OD,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Score every patch of ``table`` with its mean hematoxylin density.

    Args:
        slide: the slide the table was made on.
        table: a patch table (``x, y, width, height`` in level-0 px; other columns kept).
        mpp: resolution (µm/px) to read the patches at: the coarsest level at least as fine,
            resized to the patch's size at ``mpp``. ``None`` reads each patch at the table's
            ``level`` column (the level its grid reads from), else at level 0, without resizing.
            A coarser ``mpp`` (e.g. 2.0) is much faster on big slides; the score changes little.
        tissue_only: average over tissue pixels only (see :data:`TISSUE_OD`), not all pixels.
        workers: threads reading and scoring patches.
        progress: ``progress(done, total)`` after each patch.

    Returns:
        A copy of ``table`` with a float32 ``hematoxylin`` column.
    """
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InvalidInputError(
            f"the patch table lacks the column(s) {', '.join(missing)} (level-0 px)"
        )
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise InvalidInputError(f"mpp={mpp} must be a positive number of µm per pixel")
    geometry = table[list(REQUIRED)].to_numpy(dtype=np.float64)
    if not np.isfinite(geometry).all() or (geometry[:, 2:] <= 0).any():
        raise InvalidInputError("patch rectangles must be finite with width and height > 0")
    levels, downsample = _read_plan(slide, table, mpp)
    level_ds = np.asarray(slide.level_downsamples)

    def score(i: int) -> float:
        x, y, w, h = geometry[i]
        ds = level_ds[levels[i]]
        size = (max(1, round(w / ds)), max(1, round(h / ds)))
        if max(size) > _MAX_PATCH_PX:
            raise InvalidInputError(
                f"patch {i} reads {size[0]} x {size[1]} px from level {levels[i]}; "
                "pass a coarser mpp (e.g. --read-mpp 2)"
            )
        pixels = slide.read_region((round(x), round(y)), int(levels[i]), size)
        if downsample is not None and abs(downsample / ds - 1) > MPP_RTOL:
            pixels = resize(pixels, (max(1, round(w / downsample)), max(1, round(h / downsample))))
        return patch_hematoxylin(pixels, tissue_only=tissue_only, tissue_od=tissue_od)

    n = len(table)
    values = np.zeros(n, dtype=np.float32)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            for start in range(0, n, _BATCH):  # bounded number of pending futures
                stop = min(n, start + _BATCH)
                values[start:stop] = list(pool.map(score, range(start, stop)))
                if progress is not None:
                    progress(stop, n)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    out = table.copy()
    out[COLUMN] = values
    return out


def score_params(
    mpp: float | None, tissue_only: bool, tissue_od: float = TISSUE_OD
) -> dict[str, Any]:
    """The parameters of a hematoxylin scoring run, for provenance."""
    return {
        "score": COLUMN,
        "method": "skimage.color.rgb2hed (Ruifrok-Johnston H&E matrix), per-patch mean of H",
        "read_mpp": mpp,
        "tissue_only": tissue_only,
        "tissue_od": tissue_od,
    }


def score_to_table(
    slide: Slide,
    table: pd.DataFrame,
    meta: dict[str, Any],
    out: Path,
    *,
    mpp: float | None = None,
    tissue_only: bool = False,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Score ``table`` (:func:`hematoxylin_density`) and write it to ``out`` (CSV, Parquet or
    Zarr) with the grid's ``meta``, the scoring parameters and the identity of ``slide`` (the
    slide whose pixels were scored); return the scored table."""
    from wsi_ai.slide.identity import IDENTITY_KEY, slide_identity
    from wsi_ai.store.table import write_table

    scored = hematoxylin_density(
        slide, table, mpp=mpp, tissue_only=tissue_only, workers=workers, progress=progress
    )
    meta = {**meta, IDENTITY_KEY: slide_identity(slide), "score": score_params(mpp, tissue_only)}
    write_table(scored, out, meta=meta, overwrite=overwrite)
    return scored
