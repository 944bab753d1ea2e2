"""Stitch per-patch values into a heatmap canvas: placement rule, memory plan, tile loop.

Coordinates come in level-0 pixels (``x, y, width, height`` of each patch, as in the patch
table); the canvas is a grid of ``downsample`` level-0 px per canvas px, so canvas pixel
``(row, col)`` covers level-0 ``[col * ds, (col + 1) * ds) x [row * ds, (row + 1) * ds)`` and
its centre sits at level-0 ``((col + 0.5) * ds, (row + 0.5) * ds)``.

Placement rule: a patch covers the canvas pixels whose centres fall inside its half-open
level-0 rectangle ``[x, x + width) x [y, y + height)``, i.e. columns
``ceil(x / ds - 0.5)`` to ``ceil((x + width) / ds - 0.5) - 1`` (rows likewise). Spans are
clipped to the canvas; a patch that covers no pixel centre is ignored.

Blending of overlapping patches: ``"mean"`` (sum / count), ``"max"``, or ``"gaussian"``
(weights ``exp(-d^2 / (2 sigma^2))`` separable in x and y, centred on the patch, with sigma a
fraction of the patch size in canvas px; result ``sum(w v) / sum(w)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numba
import numpy as np
from numpy.typing import ArrayLike

from wsi_ai.errors import InvalidInputError, MissingMppError
from wsi_ai.stitch import kernels

Blend = Literal["mean", "max", "gaussian"]
_BLEND_CODES = {"mean": kernels.MEAN, "max": kernels.MAX, "gaussian": kernels.GAUSSIAN}
_MIN_SIGMA = 0.05  # keeps every Gaussian weight inside a patch far above float64 underflow
_BAND_BYTES = 4 * 2**20  # target size of one worker's band accumulators
_MAX_BAND_ROWS = 256


class SliceWritable(Protocol):
    """Anything with a ``shape`` and numpy-style slicing (ndarray, np.memmap, zarr array)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> Any: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...


@dataclass(frozen=True, eq=False)
class Heatmap:
    """A stitched canvas and how it maps to the slide.

    ``canvas`` is float32 ``[H, W, C]`` (an ndarray, or the caller's ``out`` array such as a
    zarr array or memmap); pixels no patch covers hold ``fill_value``. ``coverage`` is bool
    ``[H, W]``. One canvas pixel is ``downsample`` level-0 px wide; ``mpp`` is the canvas's
    µm per pixel when the slide's MPP was given, else ``None``.
    """

    canvas: Any
    coverage: Any
    downsample: float
    mpp: float | None
    slide_size: tuple[int, int]
    blend: Blend
    sigma: float | None
    fill_value: float
    n_patches: int
    n_placed: int

    @property
    def shape(self) -> tuple[int, int]:
        """Canvas ``(height, width)`` in canvas px."""
        return (int(self.canvas.shape[0]), int(self.canvas.shape[1]))

    @property
    def channels(self) -> int:
        """Number of value channels ``C``."""
        return int(self.canvas.shape[2])


def resolve_downsample(
    downsample: float | None, mpp: float | None, slide_mpp: float | None
) -> float:
    """Level-0 px per canvas px, from ``downsample`` or from ``mpp`` / ``slide_mpp`` (µm/px)."""
    if (downsample is None) == (mpp is None):
        raise InvalidInputError("give exactly one of downsample= or mpp= for the heatmap canvas")
    if mpp is not None:
        if slide_mpp is None:
            raise MissingMppError(
                "a heatmap at mpp= needs the slide's own MPP; pass slide_mpp= (or use downsample=)"
            )
        if not (math.isfinite(mpp) and math.isfinite(slide_mpp) and mpp > 0 and slide_mpp > 0):
            raise InvalidInputError(f"mpp={mpp} and slide_mpp={slide_mpp} must be positive")
        downsample = mpp / slide_mpp
    assert downsample is not None
    if not (math.isfinite(downsample) and downsample > 0):
        raise InvalidInputError(f"downsample={downsample} must be a positive number")
    return float(downsample)


def canvas_shape(slide_size: tuple[int, int], downsample: float) -> tuple[int, int]:
    """Canvas ``(height, width)`` covering a level-0 ``(width, height)`` slide."""
    width, height = slide_size
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"slide_size={slide_size} must be a positive (width, height)")
    return (max(1, math.ceil(height / downsample)), max(1, math.ceil(width / downsample)))


def canvas_spans(
    start: np.ndarray, length: np.ndarray, downsample: float, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Half-open canvas index spans ``[lo, hi)`` of level-0 intervals, clipped to ``[0, limit]``.

    ``start`` and ``length`` are level-0 px along one axis; see the module's placement rule.
    Empty spans come back with ``lo >= hi``.
    """
    lo = np.ceil(start / downsample - 0.5)
    hi = np.ceil((start + length) / downsample - 0.5)
    lo = np.clip(lo, 0, limit).astype(np.int64)
    hi = np.clip(hi, 0, limit).astype(np.int64)
    return lo, hi


def _patch_arrays(
    x: ArrayLike, y: ArrayLike, width: ArrayLike, height: ArrayLike, values: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    vals = np.asarray(values, dtype=np.float32)
    if vals.ndim == 1:
        vals = vals[:, None]
    if vals.ndim != 2:
        raise InvalidInputError(f"values must be [N] or [N, C]; got shape {vals.shape}")
    n = vals.shape[0]
    geo = []
    for name, arr in (("x", x), ("y", y), ("width", width), ("height", height)):
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim == 0:
            a = np.full(n, float(a))
        if a.shape != (n,):
            raise InvalidInputError(f"{name} has shape {a.shape}; expected ({n},) like values")
        if not np.isfinite(a).all():
            raise InvalidInputError(f"{name} holds NaN or infinite level-0 coordinates")
        geo.append(a)
    if (geo[2] < 0).any() or (geo[3] < 0).any():
        raise InvalidInputError("patch width and height must be >= 0 (level-0 px)")
    if not np.isfinite(vals).all():
        raise InvalidInputError("values hold NaN or infinite numbers; drop or fill them first")
    return geo[0], geo[1], geo[2], geo[3], np.ascontiguousarray(vals)


def _plan(
    height: int, width: int, n_ch: int, max_memory: int, n_workers: int, chunk_rows: int | None
) -> tuple[int, int]:
    """Choose ``(band_rows, tile_rows)`` so the working memory stays within ``max_memory``.

    A quarter of the budget goes to the workers' float64 band accumulators, half to a
    float32 + bool tile buffer (used when the output is not a plain ndarray).
    """
    acc_row = width * (8 * n_ch + 8)
    band_budget = min(_BAND_BYTES, max_memory // (4 * n_workers))
    band_rows = int(np.clip(band_budget // acc_row, 1, min(_MAX_BAND_ROWS, height)))
    tile_row = width * (4 * n_ch + 1)
    tile_rows = max(band_rows, (max_memory // 2) // tile_row)
    tile_rows = min(height, tile_rows // band_rows * band_rows)
    if chunk_rows and chunk_rows <= tile_rows < height:
        tile_rows = tile_rows // chunk_rows * chunk_rows
    return band_rows, tile_rows


def _check_out(arr: Any, shape: tuple[int, ...], name: str) -> None:
    if tuple(arr.shape) != shape:
        raise InvalidInputError(f"{name} has shape {tuple(arr.shape)}; the canvas needs {shape}")


def _direct(arr: Any, dtype: type) -> bool:
    return isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.flags.c_contiguous


def stitch(
    x: ArrayLike,
    y: ArrayLike,
    width: ArrayLike,
    height: ArrayLike,
    values: ArrayLike,
    *,
    slide_size: tuple[int, int],
    downsample: float | None = None,
    mpp: float | None = None,
    slide_mpp: float | None = None,
    blend: Blend = "mean",
    sigma: float = 0.25,
    fill_value: float = float("nan"),
    out: SliceWritable | None = None,
    coverage_out: SliceWritable | None = None,
    max_memory: int = 2 * 2**30,
) -> Heatmap:
    """Stitch ``N`` patch values into a heatmap canvas.

    Args:
        x, y, width, height: patch rectangles in level-0 px, ``[N]`` each (scalars broadcast).
        values: float ``[N]`` or ``[N, C]``; stored as float32 ``[H, W, C]``.
        slide_size: the slide's level-0 ``(width, height)`` in px; sets the canvas size,
            ``ceil(size / downsample)``.
        downsample: level-0 px per canvas px; or give ``mpp`` (µm per canvas px) together
            with ``slide_mpp`` (the slide's level-0 µm per px).
        blend: ``"mean"``, ``"max"`` or ``"gaussian"`` for overlapping patches.
        sigma: Gaussian sigma as a fraction of the patch's size in canvas px (>= 0.05).
        fill_value: written where no patch covers (NaN by default).
        out: optional float32 ``[H, W, C]`` target with slice assignment (ndarray, np.memmap,
            zarr array); required when the canvas would not fit in ``max_memory``.
        coverage_out: optional bool ``[H, W]`` target for the coverage mask, likewise.
        max_memory: bytes of RAM the stitcher may allocate for canvases and working buffers
            (besides O(N) index arrays; each worker needs at least one float64 canvas row).
            Canvases whose buffers would not fit are processed in row tiles written to
            ``out``; an output that must be allocated here and does not fit is refused.

    Returns:
        A :class:`Heatmap` whose ``canvas``/``coverage`` are ``out``/``coverage_out`` when
        given, else new ndarrays.
    """
    if blend not in _BLEND_CODES:
        raise InvalidInputError(f"blend={blend!r}; expected one of {sorted(_BLEND_CODES)}")
    if blend == "gaussian" and not (math.isfinite(sigma) and sigma >= _MIN_SIGMA):
        raise InvalidInputError(f"sigma={sigma} must be >= {_MIN_SIGMA} (fraction of patch size)")
    if max_memory <= 0:
        raise InvalidInputError(f"max_memory={max_memory} must be a positive number of bytes")
    ds = resolve_downsample(downsample, mpp, slide_mpp)
    canvas_h, canvas_w = canvas_shape(slide_size, ds)
    px, py, pw, ph, vals = _patch_arrays(x, y, width, height, values)
    n_ch = vals.shape[1]

    own_bytes = (out is None) * canvas_h * canvas_w * n_ch * 4
    own_bytes += (coverage_out is None) * canvas_h * canvas_w
    if own_bytes > max_memory:
        raise InvalidInputError(
            f"a {canvas_h} x {canvas_w} x {n_ch} canvas needs {own_bytes / 2**20:.1f} MiB, "
            f"above max_memory={max_memory / 2**20:.1f} MiB; pass out= and coverage_out= "
            "(e.g. zarr arrays or np.memmap), raise max_memory, or use a coarser downsample"
        )
    if out is None:
        out = np.empty((canvas_h, canvas_w, n_ch), np.float32)
    if coverage_out is None:
        coverage_out = np.empty((canvas_h, canvas_w), np.bool_)
    _check_out(out, (canvas_h, canvas_w, n_ch), "out")
    _check_out(coverage_out, (canvas_h, canvas_w), "coverage_out")

    c0, c1 = canvas_spans(px, pw, ds, canvas_w)
    r0, r1 = canvas_spans(py, ph, ds, canvas_h)
    placed = np.flatnonzero((c0 < c1) & (r0 < r1))
    if blend == "gaussian":
        cu = (px + pw / 2) / ds - 0.5
        cv = (py + ph / 2) / ds - 0.5
        su = sigma * pw / ds
        sv = sigma * ph / ds
    else:
        cu = cv = su = sv = np.empty(0, np.float64)

    n_workers = max(1, numba.get_num_threads())
    chunks = getattr(out, "chunks", None)
    band_rows, tile_rows = _plan(
        canvas_h, canvas_w, n_ch, max_memory, n_workers, chunks[0] if chunks else None
    )
    n_tiles = -(-canvas_h // tile_rows)
    if n_tiles == 1:
        tile_starts, tile_members = np.array([0, placed.size]), placed
    else:
        tile_starts, tile_members = kernels.bucket_by_rows(
            placed, r0, r1, 0, tile_rows, n_tiles, canvas_h
        )
    direct = _direct(out, np.float32) and _direct(coverage_out, np.bool_)
    if not direct:
        buf = np.empty((tile_rows, canvas_w, n_ch), np.float32)
        cbuf = np.empty((tile_rows, canvas_w), np.bool_)
    for t in range(n_tiles):
        t0 = t * tile_rows
        t1 = min(t0 + tile_rows, canvas_h)
        n_bands = -(-(t1 - t0) // band_rows)
        members = tile_members[tile_starts[t] : tile_starts[t + 1]]
        band_starts, band_members = kernels.bucket_by_rows(
            members, r0, r1, t0, band_rows, n_bands, t1 - t0
        )
        if direct:
            tile_out = np.asarray(out[t0:t1])
            tile_cov = np.asarray(coverage_out[t0:t1])
        else:
            tile_out, tile_cov = buf[: t1 - t0], cbuf[: t1 - t0]
        kernels.blend_tile(
            band_starts, band_members, t0, band_rows, r0, r1, c0, c1, vals,
            _BLEND_CODES[blend], cu, cv, su, sv, float(fill_value), tile_out, tile_cov,
            min(n_workers, n_bands),
        )  # fmt: skip
        if not direct:
            out[t0:t1] = tile_out
            coverage_out[t0:t1] = tile_cov

    return Heatmap(
        canvas=out,
        coverage=coverage_out,
        downsample=ds,
        mpp=mpp if mpp is not None else (None if slide_mpp is None else ds * slide_mpp),
        slide_size=(int(slide_size[0]), int(slide_size[1])),
        blend=blend,
        sigma=sigma if blend == "gaussian" else None,
        fill_value=float(fill_value),
        n_patches=int(vals.shape[0]),
        n_placed=int(placed.size),
    )
