"""Patch grids at a physical resolution: the patch table every later stage extends.

A grid of ``size`` x ``size`` patches at ``mpp`` µm/px covers the slide with a stride of
``size - overlap`` target pixels. Each row of the table gives the patch's level-0
rectangle (``x, y, width, height``), the slide ``level`` to read it from (the coarsest
level at least as fine as the target) and the ``tissue_fraction`` of the rectangle.
:func:`read_patch` reads ``read_width x read_height`` pixels at that level and resizes
them a little to ``size``.

Edges are explicit: ``edge="inside"`` keeps only patches that lie wholly inside the
slide; ``edge="pad"`` adds the partial patches along the right and bottom edges, whose
outside part reads as white (and counts as non-tissue).

Where no level is as fine as the target (the CAMELYON DICOM's only level is 29 µm/px,
say) the grid upsamples the finest level, warns, and records the effective MPP.

Level-0 geometry is whole pixels: starts are rounded multiples of the exact stride and
``width``/``height`` are the rounded patch extent. Under strong upsampling a patch spans
only a few level-0 pixels (3.87 on the CAMELYON DICOM at 0.5 µm/px, stored as 4), so
neighbouring patches may overlap by a pixel; ``GridSpec.downsample`` keeps the exact scale.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from wsi_ai.errors import ParameterError
from wsi_ai.slide.slide import MPP_RTOL, Slide, resize

if TYPE_CHECKING:
    from wsi_ai.slide.backends import RGBArray
    from wsi_ai.tissue import TissueMask

log = logging.getLogger(__name__)

EdgeMode = Literal["inside", "pad"]
COLUMNS = ("x", "y", "width", "height", "level", "tissue_fraction")
# A guard against typos such as --mpp 0.0005: more patches than any real slide needs.
MAX_PATCHES = 50_000_000


@dataclass(frozen=True)
class GridSpec:
    """How a grid was made; stored beside the table (Parquet/Zarr metadata, JSON output)."""

    slide: str
    mpp: float  # the requested target resolution, µm/px
    effective_mpp: float  # the finest real resolution behind the pixels (> mpp if upsampled)
    size: int  # patch side in target pixels
    overlap: int  # target pixels shared by neighbours
    level: int  # the slide level patches are read from
    read_size: int  # patch side in pixels of that level, resized to ``size`` after reading
    downsample: float  # level-0 px per target px
    edge: EdgeMode
    min_tissue: float
    slide_mpp: float
    slide_mpp_source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PatchGrid:
    """The patch table (one row per patch, level-0 pixels) and how it was made."""

    table: pd.DataFrame
    spec: GridSpec

    def __len__(self) -> int:
        return len(self.table)


def _axis_starts(extent: int, patch: float, stride: float, edge: EdgeMode) -> np.ndarray:
    """Level-0 starts along one axis: every ``stride`` px, inside the slide or padded."""
    if edge == "inside":
        count = math.floor((extent - patch) / stride + 1e-9) + 1 if extent >= patch else 0
    else:
        count = math.ceil(max(extent - patch, 0) / stride - 1e-9) + 1
    return np.round(np.arange(max(count, 0)) * stride).astype(np.int64)


def grid(
    slide: Slide,
    mpp: float = 0.5,
    size: int = 224,
    overlap: int = 0,
    tissue: TissueMask | None = None,
    min_tissue: float = 0.5,
    edge: EdgeMode = "inside",
) -> PatchGrid:
    """Tile ``slide`` into ``size``-px patches at ``mpp`` µm/px.

    With ``tissue``, each patch's ``tissue_fraction`` is measured on the mask and
    patches under ``min_tissue`` are dropped; without it the fraction is NaN and no
    patch is dropped. Raises :class:`~wsi_ai.errors.MissingMppError` when the slide
    has no MPP (pass ``mpp_override``/``--slide-mpp`` when opening it).
    """
    if size <= 0:
        raise ValueError(f"patch size must be positive, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size), got {overlap} for size {size}")
    if mpp <= 0:
        raise ValueError(f"target mpp must be positive, got {mpp}")
    if edge not in ("inside", "pad"):
        raise ValueError(f"edge must be 'inside' or 'pad', got {edge!r}")
    slide_mpp = slide.require_mpp()
    downsample = mpp / slide_mpp
    level = slide.best_level_for_downsample(downsample)
    level_ds = slide.levels[level].downsample
    effective = mpp
    if downsample < level_ds * (1 - MPP_RTOL):
        effective = slide_mpp * level_ds
        log.warning(
            "%s: no level is as fine as %.4g µm/px; patches are upsampled from level %d "
            "(effective resolution %.4g µm/px)",
            slide.path.name,
            mpp,
            level,
            effective,
        )
    patch0 = size * downsample
    stride0 = (size - overlap) * downsample
    if patch0 < 1:
        raise ParameterError(
            f"a {size} px patch at {mpp:g} µm/px covers {patch0:.3g} level-0 px, less than "
            f"one pixel of the slide ({slide_mpp:.4g} µm/px); raise --mpp or --size",
            slide.path,
        )
    width, height = slide.dimensions
    xs = _axis_starts(width, patch0, stride0, edge)
    ys = _axis_starts(height, patch0, stride0, edge)
    if len(xs) * len(ys) > MAX_PATCHES:
        raise ParameterError(
            f"{len(xs) * len(ys):,} patches of {size} px at {mpp:g} µm/px is more than "
            f"{MAX_PATCHES:,}; raise --mpp, --size, or lower --overlap",
            slide.path,
        )
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    x, y = gx.ravel(), gy.ravel()
    side = max(1, round(patch0))
    w = np.full(x.shape, side, dtype=np.int64)
    h = np.full(x.shape, side, dtype=np.int64)
    if tissue is not None:
        fraction = np.asarray(tissue.fraction(x, y, w, h), dtype=np.float32)
        keep = fraction >= min_tissue
        x, y, w, h, fraction = x[keep], y[keep], w[keep], h[keep], fraction[keep]
    else:
        fraction = np.full(x.shape, np.nan, dtype=np.float32)
    table = pd.DataFrame(
        {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "level": np.full(x.shape, level, dtype=np.int64),
            "tissue_fraction": fraction,
        }
    )
    assert slide.mpp is not None  # require_mpp() above
    spec = GridSpec(
        slide=slide.path.name,
        mpp=mpp,
        effective_mpp=effective,
        size=size,
        overlap=overlap,
        level=level,
        read_size=max(1, round(size * downsample / level_ds)),
        downsample=downsample,
        edge=edge,
        min_tissue=min_tissue if tissue is not None else 0.0,
        slide_mpp=slide_mpp,
        slide_mpp_source=slide.mpp.source,
    )
    return PatchGrid(table=table, spec=spec)


def read_patch(slide: Slide, spec: GridSpec, x: int, y: int) -> RGBArray:
    """The patch at level-0 ``(x, y)``: ``read_size`` px at ``spec.level``, resized to ``size``."""
    pixels = slide.read_region((x, y), spec.level, (spec.read_size, spec.read_size))
    return resize(pixels, (spec.size, spec.size))
