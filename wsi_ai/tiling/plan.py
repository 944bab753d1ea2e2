"""One patch planner: tissue, then the grid, then "no patch" as one clear error.

:class:`GridConfig` is what the grid is asked (frozen, validated); :func:`plan_patches` finds
the tissue (unless a mask is given or tissue is off), lays the grid over the slide and refuses
an empty result with one :class:`~wsi_ai.errors.InvalidInputError` that names the slide and
the reason. ``wsi-ai tiles``, ``wsi-ai score-he`` and the inference engine all plan through it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import Any

from wsi_ai.errors import InvalidInputError, ParameterError
from wsi_ai.slide.slide import Slide
from wsi_ai.tiling.grid import EdgeMode, PatchGrid
from wsi_ai.tiling.grid import grid as lay_grid
from wsi_ai.tissue import TissueConfig, TissueMask, detect_tissue

EDGES = ("inside", "pad")


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GridConfig:
    """A patch grid: ``size`` px patches at ``mpp`` µm/px sharing ``overlap`` px.

    Patches with less than ``min_tissue`` tissue are dropped (when tissue is found);
    ``edge="inside"`` keeps whole patches only, ``"pad"`` adds partial edge patches.
    """

    mpp: float = 0.5
    size: int = 224
    overlap: int = 0
    min_tissue: float = 0.5
    edge: EdgeMode = "inside"

    def __post_init__(self) -> None:
        if not _is_finite(self.mpp) or self.mpp <= 0:
            raise ParameterError(
                f"grid mpp must be a positive finite number of µm/px, got {self.mpp!r}"
            )
        if not _is_int(self.size) or self.size < 1:
            raise ParameterError(
                f"grid size must be a whole number of pixels, at least 1, got {self.size!r}"
            )
        if not _is_int(self.overlap) or not 0 <= self.overlap < self.size:
            raise ParameterError(
                f"grid overlap must be a whole number of pixels from 0 to size - 1 "
                f"({self.size - 1}), got {self.overlap!r}"
            )
        if not _is_finite(self.min_tissue) or not 0 <= self.min_tissue <= 1:
            raise ParameterError(
                f"grid min_tissue must be a fraction from 0 to 1, got {self.min_tissue!r}"
            )
        if self.edge not in EDGES:
            raise ParameterError(f"grid edge must be 'inside' or 'pad', got {self.edge!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_patches(
    slide: Slide,
    tissue: TissueConfig,
    grid: GridConfig,
    mask: TissueMask | None = None,
) -> PatchGrid:
    """The patch grid of ``slide``: tissue found (or ``mask`` used), grid laid, none empty.

    Needs the slide's MPP (:class:`~wsi_ai.errors.MissingMppError` asks for ``--slide-mpp``).
    With ``tissue.enabled`` and no ``mask``, tissue is detected at ``tissue.target_mpp``;
    with tissue off, ``mask`` is ignored and every patch is kept. Raises
    :class:`~wsi_ai.errors.InvalidInputError` naming the slide when no patch is left.
    """
    slide_mpp = slide.require_mpp()
    if not tissue.enabled:
        mask = None
    elif mask is None:
        mask = detect_tissue(slide, target_mpp=tissue.target_mpp)
    patches = lay_grid(
        slide,
        mpp=grid.mpp,
        size=grid.size,
        overlap=grid.overlap,
        tissue=mask,
        min_tissue=grid.min_tissue,
        edge=grid.edge,
    )
    if len(patches) == 0:
        raise InvalidInputError(_why_empty(slide, slide_mpp, grid, mask is not None), slide.path)
    return patches


def _why_empty(slide: Slide, slide_mpp: float, grid: GridConfig, filtered: bool) -> str:
    """Why a grid came out empty: a slide smaller than one patch, or too little tissue."""
    width, height = slide.dimensions
    side = grid.size * grid.mpp / slide_mpp  # level-0 px
    if not filtered or (grid.edge == "inside" and side > min(width, height)):
        return (
            f"no patch left: the slide ({width} x {height} px) is smaller than one patch of "
            f"{grid.size} px at {grid.mpp:g} µm/px ({round(side)} px at level 0); "
            "lower --size or --mpp"
        )
    return (
        f"no patch left: no patch of {grid.size} px at {grid.mpp:g} µm/px has at least "
        f"{grid.min_tissue:.0%} tissue; lower --min-tissue or pass --no-tissue"
    )
