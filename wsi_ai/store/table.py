"""Reading and writing patch tables as CSV, Parquet or Zarr.

A patch table has one row per patch with ``x, y, width, height`` (level-0 px),
``level`` and ``tissue_fraction``; later stages add score or label columns. Parquet
and Zarr keep the grid's parameters (``GridSpec``: target and effective MPP, read
size) and the slide's identity (:mod:`wsi_ai.slide.identity`) as metadata; a CSV keeps
them in a JSON sidecar, ``grid.csv.json``.

A CSV and its sidecar are one unit: the sidecar records the sha256 of the table's bytes
(:data:`TABLE_HASH`) and is renamed into place before the table, so a run killed between
the two renames leaves either a sidecar without its table (no table: written again on the
next run) or the old table with the new sidecar, which :func:`read_table` refuses. Every
table read is checked (:func:`validate_patch_table`): geometry columns present, numeric,
finite, sizes positive; :func:`check_inside_slide` refuses rectangles outside the slide.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi_ai.errors import InvalidInputError
from wsi_ai.outputs import atomic_output, atomic_outputs

REQUIRED = ("x", "y", "width", "height")
META_KEY = "wsi_ai"
FORMATS = (".csv", ".parquet", ".zarr")
TABLE_HASH = "table_sha256"  # in a CSV's sidecar: the sha256 of the CSV's bytes
EDGE_SLACK = 1.0  # level-0 px a grid's rounded rectangle may pass the slide's edge by


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _orphan_sidecar(sidecar: Path) -> bool:
    """A sidecar of ours whose table never arrived (a killed first run): safe to replace."""
    try:
        return sidecar.is_file() and TABLE_HASH in json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False


def _write_csv(table: pd.DataFrame, out: Path, meta: dict[str, Any], overwrite: bool) -> None:
    """The sidecar is renamed into place before the table: see the module's docstring."""
    sidecar = csv_sidecar(out)
    if not (out.exists() or out.is_symlink()) and _orphan_sidecar(sidecar):
        sidecar.unlink()
    with atomic_outputs([sidecar, out], overwrite) as (sidecar_tmp, table_tmp):
        table.to_csv(table_tmp, index=False)
        meta = {**meta, TABLE_HASH: _sha256(table_tmp)}
        sidecar_tmp.write_text(json.dumps(meta, indent=2))


def write_table(
    table: pd.DataFrame,
    path: str | Path,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``table`` atomically; ``meta`` is stored in Parquet/Zarr metadata, or in a CSV's
    JSON sidecar (always written, with the table's hash: the pair is one unit)."""
    out = Path(path)
    fmt = table_format(out)
    meta = dict(meta or {})
    if fmt == ".csv":
        _write_csv(table, out, meta, overwrite)
        return out
    with atomic_output(out, overwrite) as tmp:
        if fmt == ".parquet":
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
    """Read a patch table and its metadata, refusing a CSV whose sidecar is not its own and
    any table that fails :func:`validate_patch_table`."""
    src = Path(path)
    fmt = table_format(src)
    if not src.exists():
        raise InvalidInputError("no such table; check the path", src)
    meta: dict[str, Any] = {}
    try:
        if fmt == ".csv":
            meta = _csv_meta(src)
            table = pd.read_csv(src)
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
        why = " ".join(str(err).split())  # one line (pandas' parser errors end in one)
        raise InvalidInputError(
            f"cannot read the table ({type(err).__name__}: {why}); is it a wsi-ai patch table?",
            src,
        ) from err
    validate_patch_table(table, src)
    return table, meta


def _csv_meta(src: Path) -> dict[str, Any]:
    """A CSV's sidecar, checked against the table's bytes; {} when it has none."""
    sidecar = csv_sidecar(src)
    if not sidecar.exists():
        return {}
    meta = json.loads(sidecar.read_text())
    if not isinstance(meta, dict):
        raise InvalidInputError(f"its sidecar {sidecar.name} is not a JSON object", src)
    expected = meta.pop(TABLE_HASH, None)
    if expected is not None and expected != _sha256(src):
        raise InvalidInputError(
            f"table and sidecar ({sidecar.name}) do not belong together (interrupted write?): "
            "rerun the command",
            src,
        )
    return meta


def _row(path: Path, index: int) -> str:
    """Row ``index`` (0-based) as a person finds it: 1-based, and the line in a CSV."""
    line = f" (line {index + 2})" if path.suffix.lower() == ".csv" else ""
    return f"row {index + 1}{line}"


def validate_patch_table(table: pd.DataFrame, path: Path) -> None:
    """Refuse a table whose ``x, y, width, height`` are missing, not numbers (strings,
    booleans), not finite, or whose width or height is not positive: one
    :class:`~wsi_ai.errors.InvalidInputError` naming ``path``, the column and the row."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InvalidInputError(
            f"the table lacks the column(s) {', '.join(missing)}; a patch table needs "
            "x, y, width, height in level-0 pixels (as `wsi-ai tiles` writes)",
            path,
        )
    if table.empty:  # no patches: no value to refuse (a CSV's empty columns are untyped)
        return
    for name in REQUIRED:
        column = table[name]
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            numbers = pd.to_numeric(column, errors="coerce")
            values = column.to_numpy()
            # the first value that is no number at all, else the first string ("12" in Zarr)
            bad = [
                i
                for i, v in enumerate(values)
                if isinstance(v, bool | np.bool_) or (pd.isna(numbers.iloc[i]) and not pd.isna(v))
            ] or [i for i, v in enumerate(values) if isinstance(v, str)]
            i = bad[0] if bad else 0
            value = column.iloc[i]
            shown = repr(value) if isinstance(value, str) else str(value)
            raise InvalidInputError(
                f"column {name!r}, {_row(path, i)}: {shown} is not a number; "
                "x, y, width, height are level-0 pixels",
                path,
            )
        values = column.to_numpy(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            what = "empty" if np.isnan(values[i]) else f"{values[i]}"
            raise InvalidInputError(
                f"column {name!r}, {_row(path, i)}: {what}; x, y, width, height must be finite "
                "level-0 pixels",
                path,
            )
        if name in ("width", "height") and (values <= 0).any():
            i = int(np.flatnonzero(values <= 0)[0])
            raise InvalidInputError(
                f"column {name!r}, {_row(path, i)}: {values[i]:g}; patch sizes must be positive "
                "level-0 pixels",
                path,
            )


def check_inside_slide(
    table: pd.DataFrame,
    dimensions: tuple[int, int],
    path: Path,
    *,
    pad_side: float | None = None,
    slide_name: str = "the slide",
) -> None:
    """Refuse rectangles that leave the level-0 ``(width, height)`` slide (they would be read
    as blank glass) or are larger than it (an absurd heatmap).

    A rectangle may pass the right or bottom edge by :data:`EDGE_SLACK` px (the grid rounds
    to whole pixels). ``pad_side`` is given for a grid's ``edge="pad"`` table (its metadata
    says so): its level-0 patch side; there a partial patch may pass the right and bottom
    edges as long as it starts inside the slide and is no larger than a grid patch.
    """
    x, y, w, h = (table[c].to_numpy(np.float64) for c in REQUIRED)
    width, height = dimensions
    axes = (("x", "width", x, w, width, "right"), ("y", "height", y, h, height, "bottom"))
    for start, size, lo, span, extent, side in axes:
        largest = extent if pad_side is None else max(extent, pad_side)
        checks = [
            (start, lo < 0, f"{start} is negative"),
            (size, span > largest + EDGE_SLACK, f"it is larger than the slide ({extent} px)"),
        ]
        if pad_side is None:
            checks.append((start, lo + span > extent + EDGE_SLACK, f"it passes the {side} edge"))
        else:
            checks.append((start, lo >= extent, f"it starts past the {side} edge"))
        for column, bad, why in checks:
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InvalidInputError(
                    f"column {column!r}, {_row(path, i)}: the patch at ({x[i]:g}, {y[i]:g}), "
                    f"{w[i]:g} x {h[i]:g} px, leaves {slide_name} ({width} x {height} px): "
                    f"{why}; patches must lie inside the slide they were made on",
                    path,
                )
