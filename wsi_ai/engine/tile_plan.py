"""Which stored tiles each batch of patches needs, so every tile is decoded exactly once.

A patch table lists patches in order; batches are consecutive runs of ``batch_size`` rows.
:class:`TilePlan` works out, before anything is read, which tiles of the level each patch
touches, and from that for every batch the tiles it is the *first* to need (decode them
then) and those it is the *last* to need (drop them after it). Decoded tiles are thus held
from their first batch to their last, never decoded twice, whatever the order of the table,
and the plan knows in advance how many are held at once (:attr:`TilePlan.peak_tiles`): for
the row-major tables the tiler writes, about one band of tiles across the slide.

Geometry: patch ``i`` covers level pixels ``[lx, lx + side) x [ly, ly + side)``, clipped to
the level (outside is white); tiles are ``tile_h x tile_w`` on a ``rows x cols`` grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["BatchPlan", "LevelGeometry", "TilePlan", "patch_spans"]

IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class LevelGeometry:
    """A level's size and its tile grid (level pixels)."""

    width: int
    height: int
    tile_w: int
    tile_h: int

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_h)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile_w)


@dataclass(frozen=True)
class BatchPlan:
    """Rows ``start`` to ``stop`` of the table; tile ids are ``row * cols + col``."""

    start: int
    stop: int
    decode: IntArray  # tiles first needed here, in increasing id order
    release: IntArray  # tiles last needed here: drop them once the batch is assembled

    def __len__(self) -> int:
        return self.stop - self.start


def patch_spans(
    lx: IntArray, ly: IntArray, side: int, geometry: LevelGeometry
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """First and last tile row and column each patch touches (``r1 < r0`` when none)."""
    x0, y0 = np.maximum(lx, 0), np.maximum(ly, 0)
    x1 = np.minimum(lx + side, geometry.width)
    y1 = np.minimum(ly + side, geometry.height)
    inside = (x0 < x1) & (y0 < y1)
    r0, c0 = y0 // geometry.tile_h, x0 // geometry.tile_w
    r1 = np.where(inside, (y1 - 1) // geometry.tile_h, r0 - 1)
    c1 = np.where(inside, (x1 - 1) // geometry.tile_w, c0 - 1)
    return r0, r1, c0, c1


class TilePlan:
    """The decode/release schedule of a patch table read in batches (module docstring)."""

    def __init__(
        self, lx: IntArray, ly: IntArray, side: int, geometry: LevelGeometry, batch_size: int
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        lx, ly = np.asarray(lx, dtype=np.int64), np.asarray(ly, dtype=np.int64)
        self.geometry, self.side, self.batch_size = geometry, side, batch_size
        self.patches = len(lx)
        r0, r1, c0, c1 = patch_spans(lx, ly, side, geometry)
        span_r = int((r1 - r0 + 1).max(initial=0))
        span_c = int((c1 - c0 + 1).max(initial=0))
        batch = np.arange(self.patches, dtype=np.int64) // batch_size
        # every (patch, tile) pair, as offsets from the patch's first tile row and column
        dr, dc = np.meshgrid(np.arange(span_r), np.arange(span_c), indexing="ij")
        rows = r0[:, None] + dr.ravel()[None, :]
        cols = c0[:, None] + dc.ravel()[None, :]
        used = (rows <= r1[:, None]) & (cols <= c1[:, None])
        ids = (rows * geometry.cols + cols)[used]
        batches = np.broadcast_to(batch[:, None], used.shape)[used]
        self.touches = int(ids.size)  # tile reads a per-patch reader would make
        n_batches = -(-self.patches // batch_size)
        self.tiles, first = np.unique(ids, return_inverse=True)
        first_batch = np.full(self.tiles.size, n_batches, dtype=np.int64)
        last_batch = np.full(self.tiles.size, -1, dtype=np.int64)
        np.minimum.at(first_batch, first, batches)
        np.maximum.at(last_batch, first, batches)
        order_first = np.argsort(first_batch, kind="stable")
        order_last = np.argsort(last_batch, kind="stable")
        split_first = np.searchsorted(first_batch[order_first], np.arange(n_batches + 1))
        split_last = np.searchsorted(last_batch[order_last], np.arange(n_batches + 1))
        self.batches: list[BatchPlan] = []
        for b in range(n_batches):
            start = b * batch_size
            decode = self.tiles[order_first[split_first[b] : split_first[b + 1]]]
            release = self.tiles[order_last[split_last[b] : split_last[b + 1]]]
            stop = min(start + batch_size, self.patches)
            self.batches.append(BatchPlan(start, stop, np.sort(decode), np.sort(release)))
        held = np.cumsum(np.bincount(first_batch, minlength=n_batches)[:n_batches])
        dropped = np.concatenate([[0], np.cumsum(np.bincount(last_batch, minlength=n_batches))])
        self.peak_tiles = int((held - dropped[:n_batches]).max(initial=0))

    @property
    def unique_tiles(self) -> int:
        """How many distinct tiles the whole table needs (each decoded once)."""
        return int(self.tiles.size)

    def peak_bytes(self, channels: int = 3) -> int:
        """Decoded bytes held at most at once (tiles held between first and last use)."""
        g = self.geometry
        return self.peak_tiles * g.tile_h * g.tile_w * channels

    def tile_position(self, tile: int) -> tuple[int, int]:
        """(row, col) of a tile id."""
        return divmod(int(tile), self.geometry.cols)
