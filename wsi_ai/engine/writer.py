"""Streaming writes of a features store (the format of :mod:`wsi_ai.store.features`).

:class:`FeaturesWriter` creates the store's arrays up front under a temporary name,
takes embeddings and scores batch by batch in table order, and renames the store into
place only when every row was written (a crash leaves no store that looks finished).
Rows are gathered into whole chunks before they reach Zarr, so each chunk is compressed
and written once; memory is one chunk per array, whatever the slide's size.

    with FeaturesWriter(out, table, embed_dim=768, attrs=meta) as writer:
        for start, emb in batches:
            writer.write(start, embeddings=emb)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import zarr
from numpy.typing import NDArray

from wsi_ai.outputs import atomic_output
from wsi_ai.store.features import COORDS, META_KEY

__all__ = ["FeaturesWriter", "chunk_rows"]

CHUNK_BYTES = 8 * 2**20  # target size of one uncompressed chunk of embeddings


def chunk_rows(n: int, width: int, itemsize: int = 2) -> int:
    """Rows per chunk: about ``CHUNK_BYTES`` of ``width`` values, a power of two, <= n."""
    rows = 1 << max(8, min(14, (CHUNK_BYTES // max(1, width * itemsize)).bit_length() - 1))
    return max(1, min(n, rows))


class _Column:
    """One 2-D output array filled in row order through a one-chunk buffer."""

    def __init__(self, array: Any, rows: int, dtype: np.dtype[Any]) -> None:
        self.array = array
        self.rows = rows
        self.buffer = np.empty((rows, int(array.shape[1])), dtype=dtype)
        self.chunk_start = 0  # table row of buffer[0]
        self.filled = 0

    def put(self, values: NDArray[Any]) -> None:
        offset = 0
        while offset < len(values):
            take = min(self.rows - self.filled, len(values) - offset)
            self.buffer[self.filled : self.filled + take] = values[offset : offset + take]
            self.filled += take
            offset += take
            if self.filled == self.rows:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            end = self.chunk_start + self.filled
            self.array[self.chunk_start : end] = self.buffer[: self.filled]
            self.chunk_start = end
            self.filled = 0


class FeaturesWriter:
    """Write one slide's features store row batch by row batch, atomically.

    ``table`` is the patch table (``x, y, width, height`` level-0 px, ``level``,
    ``tissue_fraction``); ``embed_dim`` (float16 embeddings) and ``classes`` (float32
    scores, one column per class) say which outputs the store holds. ``attrs`` go under
    the ``wsi_ai`` attribute key, as :func:`~wsi_ai.store.features.write_features` does.
    """

    def __init__(
        self,
        path: Path,
        table: pd.DataFrame,
        *,
        embed_dim: int | None = None,
        classes: Sequence[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.n = len(table)
        if self.n == 0:
            raise ValueError("a features store needs at least one patch")
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_output(self.path, overwrite))
        try:
            self._group = zarr.open_group(tmp, mode="w", zarr_format=3)
            meta = dict(attrs or {})
            if classes is not None:
                meta["classes"] = list(classes)
            self._group.attrs[META_KEY] = meta
            self._write_table(table)
            self._columns: dict[str, _Column] = {}
            if embed_dim is not None:
                self._columns["embeddings"] = self._column("embeddings", embed_dim, np.float16)
            if classes is not None:
                self._columns["scores"] = self._column("scores", len(classes), np.float32)
        except BaseException:
            self._stack.close()
            raise
        self._next = 0

    def _write_table(self, table: pd.DataFrame) -> None:
        rows = max(1, min(self.n, 16384))
        coords = table[list(COORDS)].to_numpy(dtype=np.int64)
        self._group.create_array("coords", data=coords, chunks=(rows, 4))
        if "level" in table:
            level = table["level"].to_numpy(np.int64)
            self._group.create_array("level", data=level, chunks=(rows,))
        if "tissue_fraction" in table:
            fraction = table["tissue_fraction"].to_numpy(np.float32)
            self._group.create_array("tissue_fraction", data=fraction, chunks=(rows,))

    def _column(self, name: str, width: int, dtype: type[np.floating[Any]]) -> _Column:
        rows = chunk_rows(self.n, width, np.dtype(dtype).itemsize)
        array = self._group.create_array(
            name, shape=(self.n, width), dtype=dtype, chunks=(rows, width)
        )
        return _Column(array, rows, np.dtype(dtype))

    @property
    def rows_written(self) -> int:
        return self._next

    def write(
        self,
        start: int,
        *,
        embeddings: NDArray[Any] | None = None,
        scores: NDArray[Any] | None = None,
    ) -> None:
        """Store rows ``start .. start + B`` (they must follow the previous batch)."""
        if start != self._next:
            raise ValueError(f"rows must be written in order: expected {self._next}, got {start}")
        given = {"embeddings": embeddings, "scores": scores}
        count = None
        for name, column in self._columns.items():
            values = given[name]
            if values is None:
                raise ValueError(f"this store holds {name}; give them for every batch")
            values = np.asarray(values)
            if values.ndim != 2 or values.shape[1] != column.buffer.shape[1]:
                raise ValueError(
                    f"{name}: expected [B, {column.buffer.shape[1]}], got {values.shape}"
                )
            if count is not None and len(values) != count:
                raise ValueError("embeddings and scores differ in length")
            count = len(values)
        if count is None:
            count = len(next(v for v in given.values() if v is not None))
        if start + count > self.n:
            raise ValueError(f"{start + count} rows for a table of {self.n}")
        for name, column in self._columns.items():
            column.put(np.asarray(given[name]))
        self._next += count

    def update_attrs(self, values: Mapping[str, Any]) -> None:
        """Add entries to the store's ``wsi_ai`` attributes (before it is closed)."""
        stored = self._group.attrs.get(META_KEY)
        meta = dict(stored) if isinstance(stored, dict) else {}
        meta.update(values)
        self._group.attrs[META_KEY] = meta

    def close(self) -> Path:
        """Flush the last rows and rename the store into place."""
        if self._next != self.n:
            raise ValueError(f"only {self._next} of {self.n} rows were written")
        for column in self._columns.values():
            column.flush()
        self._stack.close()
        return self.path

    def abort(self) -> None:
        """Drop the temporary store; nothing appears at ``path``."""
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> FeaturesWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
