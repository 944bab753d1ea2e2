"""Reading and writing patch tables as CSV, Parquet or Zarr.

A patch table has one row per patch with ``x, y, width, height`` (level-0 px),
``level`` and ``tissue_fraction``; later stages add score or label columns. Parquet
and Zarr keep the grid's parameters (``GridSpec``: target and effective MPP, read
size) as metadata; a CSV keeps them in a JSON sidecar, ``grid.csv.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi_ai.errors import InvalidInputError
from wsi_ai.outputs import atomic_output, prepare_outputs

REQUIRED = ("x", "y", "width", "height")
META_KEY = "wsi_ai"
FORMATS = (".csv", ".parquet", ".zarr")


def table_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInputError(
            f"unknown table format {suffix!r}; use a name ending in .csv, .parquet or .zarr",
            path,
        )
    return suffix


def csv_sidecar(path: Path) -> Path:
    """Where a CSV table's metadata lives: ``grid.csv`` -> ``grid.csv.json``."""
    return path.with_name(path.name + ".json")


def write_table(
    table: pd.DataFrame,
    path: str | Path,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``table`` atomically; ``meta`` is stored in Parquet/Zarr metadata."""
    out = Path(path)
    fmt = table_format(out)
    meta = dict(meta or {})
    sidecar = csv_sidecar(out) if fmt == ".csv" and meta else None
    prepare_outputs([out, sidecar], overwrite)
    if sidecar is not None:
        with atomic_output(sidecar, overwrite) as tmp:
            tmp.write_text(json.dumps(meta, indent=2))
    with atomic_output(out, overwrite) as tmp:
        if fmt == ".csv":
            table.to_csv(tmp, index=False)
        elif fmt == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            arrow = pa.Table.from_pandas(table, preserve_index=False)
            schema_meta = dict(arrow.schema.metadata or {})
            schema_meta[META_KEY.encode()] = json.dumps(meta).encode()
            pq.write_table(arrow.replace_schema_metadata(schema_meta), tmp)
        else:
            import zarr

            group = zarr.open_group(tmp, mode="w", zarr_format=3)
            group.attrs[META_KEY] = meta
            group.attrs["columns"] = list(table.columns)
            for name in table.columns:
                values = table[name].to_numpy()
                if values.dtype == object:
                    values = values.astype(str)
                group.create_array(name, data=values, chunks=(max(1, min(len(values), 65536)),))
    return out


def _column(group: Any, name: str) -> np.ndarray:
    return np.asarray(group[name][...])


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a patch table and its metadata; check the level-0 columns are there."""
    src = Path(path)
    fmt = table_format(src)
    if not src.exists():
        raise InvalidInputError("no such table; check the path", src)
    meta: dict[str, Any] = {}
    try:
        if fmt == ".csv":
            table = pd.read_csv(src)
            sidecar = csv_sidecar(src)
            meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        elif fmt == ".parquet":
            import pyarrow.parquet as pq

            arrow = pq.read_table(src)
            raw = (arrow.schema.metadata or {}).get(META_KEY.encode())
            meta = json.loads(raw) if raw else {}
            table = arrow.to_pandas()
        else:
            import zarr

            group = zarr.open_group(src, mode="r")
            stored_meta = group.attrs.get(META_KEY)
            meta = dict(stored_meta) if isinstance(stored_meta, dict) else {}
            stored = group.attrs.get("columns")
            columns = (
                [str(c) for c in stored] if isinstance(stored, list) else sorted(group.array_keys())
            )
            table = pd.DataFrame({name: _column(group, name) for name in columns})
    except InvalidInputError:
        raise
    except Exception as err:
        raise InvalidInputError(
            f"cannot read the table ({type(err).__name__}: {err}); is it a wsi-ai patch table?",
            src,
        ) from err
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InvalidInputError(
            f"the table lacks the column(s) {', '.join(missing)}; a patch table needs "
            "x, y, width, height in level-0 pixels (as `wsi-ai tiles` writes)",
            src,
        )
    return table, meta
