"""Patch scores of one slide, as ``wsi-ai stitch`` reads them.

:func:`load_scores` reads a patch table (``x, y, width, height`` in level-0 px plus score
columns; CSV, Parquet or Zarr) or a per-slide features store; :func:`score_columns` picks the
columns to stitch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from wsi_ai.errors import InvalidInputError
from wsi_ai.store.features import read_features
from wsi_ai.store.table import read_table

RESERVED = ("x", "y", "width", "height", "level", "tissue_fraction")
ATTENTION = "attention"  # `wsi-ai predict`: where the aggregator looked, not a class


def load_scores(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A patch table with score columns: CSV, Parquet or Zarr table, or a features store."""
    if path.is_dir() and (path / "coords").is_dir():
        features = read_features(path, with_embeddings=False)
        return features.table(), dict(features.attrs)
    return read_table(path)


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
