"""Patch scores of one slide, as ``wsi-ai stitch`` reads them.

:func:`load_scores` reads a patch table (``x, y, width, height`` in level-0 px plus score
columns; CSV, Parquet or Zarr) or a per-slide features store; :func:`check_for_slide` refuses
one made on another slide or with patches outside the slide; :func:`score_columns` picks the
columns to stitch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from wsi_ai.errors import InvalidInputError
from wsi_ai.slide.identity import check_same_slide
from wsi_ai.store.features import read_features
from wsi_ai.store.table import check_inside_slide, read_table, validate_patch_table

if TYPE_CHECKING:
    from wsi_ai.slide import Slide

log = logging.getLogger(__name__)

RESERVED = ("x", "y", "width", "height", "level", "tissue_fraction")
ATTENTION = "attention"  # `wsi-ai predict`: where the aggregator looked, not a class


def load_scores(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A patch table with score columns: CSV, Parquet or Zarr table, or a features store."""
    if path.is_dir() and (path / "coords").is_dir():
        features = read_features(path, with_embeddings=False)
        table = features.table()
        validate_patch_table(table, path)
        return table, dict(features.attrs)
    return read_table(path)


def _pad_side(meta: Mapping[str, Any]) -> float | None:
    """The level-0 patch side of an ``edge="pad"`` grid (a table's metadata is the grid's
    spec; a features store keeps it under ``grid``), or None for any other table."""
    stored = meta.get("grid")
    grid: Mapping[str, Any] = stored if isinstance(stored, Mapping) else meta
    if grid.get("edge") != "pad":
        return None
    try:
        side = float(grid.get("size", math.nan)) * float(grid.get("downsample", math.nan))
    except (TypeError, ValueError):
        side = math.nan
    # a pad grid we cannot size: its patches may be no larger than the slide
    return side if math.isfinite(side) and side > 0 else 0.0


def check_for_slide(
    table: pd.DataFrame,
    meta: Mapping[str, Any],
    slide: Slide,
    source: Path,
    *,
    allow_other: bool = False,
    what: str = "scores",
    warn: Callable[[str], None] = log.warning,
) -> None:
    """Refuse ``source`` when it was made on another slide (unless ``allow_other``) or any
    patch leaves ``slide``; ``warn`` gets :func:`check_same_slide`'s warning (before any
    error about the patches, which it may explain)."""
    warning = check_same_slide(meta, slide, source, allow_other=allow_other, what=what)
    if warning is not None:
        warn(warning)
    check_inside_slide(
        table, slide.dimensions, source, pad_side=_pad_side(meta), slide_name=slide.path.name
    )


def score_columns(table: pd.DataFrame, wanted: tuple[str, ...], source: Path) -> list[str]:
    """The columns to stitch: ``wanted``, or every numeric column that is not geometry.

    By default a prediction table's ``attention`` column is left out when class columns are
    there (it is not a class, and would take part in the argmax); ``--column attention``
    stitches it."""
    numeric = [str(c) for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    # "Unnamed: 0" is a CSV written with its pandas index: not a score
    available = [c for c in numeric if c not in RESERVED and not c.startswith("Unnamed: ")]
    if wanted:
        missing = [c for c in wanted if c not in table.columns]
        if missing:
            raise InvalidInputError(
                f"the table has no column {', '.join(map(repr, missing))}; its score columns "
                f"are: {', '.join(available) or 'none'}",
                source,
            )
        bad = [c for c in wanted if c not in numeric]
        if bad:
            raise InvalidInputError(f"column(s) {', '.join(bad)} are not numeric", source)
        return list(wanted)
    if not available:
        raise InvalidInputError(
            "the table has no score column besides x, y, width, height, level, "
            "tissue_fraction; run `wsi-ai score-he` or a model first",
            source,
        )
    classes = [c for c in available if c != ATTENTION]
    return classes if classes else available
