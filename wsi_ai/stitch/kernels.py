"""Numba kernels of the stitcher: bucket patches by canvas rows, then blend them band by band.

Everything here works in *canvas* pixels: the caller (``wsi_ai.stitch.canvas``) has already
turned level-0 rectangles into half-open, clipped canvas spans ``[r0, r1) x [c0, c1)``.

Parallelism never races: the canvas rows of a tile are cut into bands, each band is owned by
exactly one worker (worker ``t`` takes bands ``t, t + n_workers, ...``) and every write a worker
makes lands in its own band. A patch that crosses a band boundary is listed in every band it
touches and each band only applies the rows it owns. Within a band, patches are applied in
ascending patch index, so the floating-point sum of each pixel does not depend on how the canvas
was cut into tiles and bands.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Blend codes understood by :func:`blend_tile`.
MEAN = 0
MAX = 1
GAUSSIAN = 2


@njit(cache=True)
def bucket_by_rows(
    items: np.ndarray,
    r0: np.ndarray,
    r1: np.ndarray,
    origin: int,
    bin_rows: int,
    n_bins: int,
    limit: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Counting sort of ``items`` into row bins, stable (ascending ``items`` order kept).

    Bin ``k`` holds the canvas rows ``origin + k * bin_rows`` up to ``origin + limit``
    (exclusive, whichever comes first). An item spanning rows ``[r0[i], r1[i])`` is put in every
    bin it intersects. Returns ``(starts, members)`` in CSR form: bin ``k`` lists
    ``members[starts[k]:starts[k + 1]]``.
    """
    counts = np.zeros(n_bins + 1, np.int64)
    for j in range(items.shape[0]):
        i = items[j]
        a = max(r0[i] - origin, 0)
        b = min(r1[i] - origin, limit)
        if a >= b:
            continue
        for k in range(a // bin_rows, (b - 1) // bin_rows + 1):
            counts[k + 1] += 1
    for k in range(n_bins):
        counts[k + 1] += counts[k]
    members = np.empty(counts[n_bins], np.int64)
    fill = counts[:n_bins].copy()
    for j in range(items.shape[0]):
        i = items[j]
        a = max(r0[i] - origin, 0)
        b = min(r1[i] - origin, limit)
        if a >= b:
            continue
        for k in range(a // bin_rows, (b - 1) // bin_rows + 1):
            members[fill[k]] = i
            fill[k] += 1
    return counts, members


@njit(cache=True)
def _apply_patch(
    i: int,
    mode: int,
    ra: int,
    rb: int,
    row_base: int,
    c0: np.ndarray,
    c1: np.ndarray,
    values: np.ndarray,
    cu: np.ndarray,
    cv: np.ndarray,
    su: np.ndarray,
    sv: np.ndarray,
    acc: np.ndarray,
    wsum: np.ndarray,
    wx: np.ndarray,
) -> None:
    """Blend patch ``i`` into band rows ``[ra, rb)`` (band-relative) of ``acc``/``wsum``.

    ``row_base`` is the canvas row of band row 0 (needed for the Gaussian weights).
    """
    n_ch = values.shape[1]
    ca = c0[i]
    cb = c1[i]
    if mode == MEAN and n_ch == 1:  # the common case, kept free of the channel loop
        v0 = values[i, 0]
        for r in range(ra, rb):
            for c in range(ca, cb):
                wsum[r, c] += 1.0
                acc[r, c, 0] += v0
    elif mode == MEAN:
        for r in range(ra, rb):
            for c in range(ca, cb):
                wsum[r, c] += 1.0
                for ch in range(n_ch):
                    acc[r, c, ch] += values[i, ch]
    elif mode == MAX:
        for r in range(ra, rb):
            for c in range(ca, cb):
                wsum[r, c] += 1.0
                for ch in range(n_ch):
                    v = values[i, ch]
                    if v > acc[r, c, ch]:
                        acc[r, c, ch] = v
    else:
        for c in range(ca, cb):
            d = (c - cu[i]) / su[i]
            wx[c] = np.exp(-0.5 * d * d)
        for r in range(ra, rb):
            d = (row_base + r - cv[i]) / sv[i]
            wy = np.exp(-0.5 * d * d)
            for c in range(ca, cb):
                w = wy * wx[c]
                wsum[r, c] += w
                for ch in range(n_ch):
                    acc[r, c, ch] += w * values[i, ch]


@njit(parallel=True, cache=True)
def blend_tile(
    band_starts: np.ndarray,
    band_members: np.ndarray,
    tile_r0: int,
    band_rows: int,
    r0: np.ndarray,
    r1: np.ndarray,
    c0: np.ndarray,
    c1: np.ndarray,
    values: np.ndarray,
    mode: int,
    cu: np.ndarray,
    cv: np.ndarray,
    su: np.ndarray,
    sv: np.ndarray,
    fill_value: float,
    out: np.ndarray,
    cover: np.ndarray,
    n_workers: int,
) -> None:
    """Blend the patches listed per band into one tile of the canvas.

    ``out`` (float32 ``[tile_h, W, C]``) and ``cover`` (bool ``[tile_h, W]``) are the tile's
    rows, starting at canvas row ``tile_r0``; every pixel of both is written. ``values`` is
    float32 ``[N, C]``; ``cu, cv`` (patch centre, canvas px) and ``su, sv`` (Gaussian sigma,
    canvas px) are only read for ``mode == GAUSSIAN``. Uncovered pixels get ``fill_value``.
    """
    tile_h = out.shape[0]
    width = out.shape[1]
    n_ch = out.shape[2]
    n_bands = band_starts.shape[0] - 1
    init = -np.inf if mode == MAX else 0.0
    for t in prange(n_workers):
        acc = np.empty((band_rows, width, n_ch), np.float64)
        wsum = np.empty((band_rows, width), np.float64)
        wx = np.empty(width, np.float64)
        for b in range(t, n_bands, n_workers):
            b0 = b * band_rows
            b1 = min(b0 + band_rows, tile_h)
            h = b1 - b0
            acc[:h] = init
            wsum[:h] = 0.0
            for k in range(band_starts[b], band_starts[b + 1]):
                i = band_members[k]
                ra = max(r0[i] - tile_r0, b0) - b0
                rb = min(r1[i] - tile_r0, b1) - b0
                _apply_patch(
                    i, mode, ra, rb, tile_r0 + b0, c0, c1, values, cu, cv, su, sv, acc, wsum, wx
                )
            for r in range(h):
                for c in range(width):
                    w = wsum[r, c]
                    if w > 0.0:
                        cover[b0 + r, c] = True
                        for ch in range(n_ch):
                            if mode == MAX:
                                out[b0 + r, c, ch] = acc[r, c, ch]
                            else:
                                out[b0 + r, c, ch] = acc[r, c, ch] / w
                    else:
                        cover[b0 + r, c] = False
                        for ch in range(n_ch):
                            out[b0 + r, c, ch] = fill_value
