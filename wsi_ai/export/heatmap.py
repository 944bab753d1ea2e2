"""Heatmap pictures and the heatmap OME-Zarr: what a pathologist opens next to the slide.

* :func:`resample_to_thumbnail`: one canvas channel on the thumbnail's pixel grid, NaN where
  no patch covers. Canvas pixel ``(r, c)`` covers level-0 ``[c * ds, (c + 1) * ds) x
  [r * ds, (r + 1) * ds)``; thumbnail pixel ``(i, j)`` takes the canvas pixel under its centre
  ``((j + 0.5) * W / w, (i + 0.5) * H / h)`` in level-0 px, after a NaN-aware box average when
  the canvas is finer than the thumbnail.
* :func:`colorize`: values to RGBA through a perceptual colormap (viridis by default, built by
  linear interpolation between its published anchor colours; no matplotlib), fully
  transparent where there is no value.
* :func:`overlay`: the colormapped values blended onto the slide thumbnail with ``alpha``,
  plus a colorbar panel with the min and max values written on it.
* :func:`write_heatmap_ome_zarr`: the stitched canvas as an OME-Zarr pyramid whose pixel size is
  the slide's MPP times the canvas downsample (µm), so it lies exactly on the slide in viewers;
  same NGFF rules and writer as ``wsi-ai convert``; NaN where no patch covers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import dask.array as da
import numpy as np
from numpy.typing import NDArray

from wsi_ai.errors import InvalidInputError, MissingMppError
from wsi_ai.export.ome_zarr import NgffVersion, write_ome_zarr
from wsi_ai.stitch import Heatmap

RGB = tuple[int, int, int]

# Published anchor colours (11 evenly spaced stops) of perceptually uniform colormaps.
COLORMAPS: dict[str, tuple[str, ...]] = {
    "viridis": (
        "#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c",
        "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725",
    ),
    "magma": (
        "#000004", "#140e36", "#3b0f70", "#641a80", "#8c2981", "#b73779",
        "#de4968", "#f7705c", "#fe9f6d", "#fecf92", "#fcfdbf",
    ),
}  # fmt: skip
BAND_ROWS = 1024  # canvas rows read at once from a large (e.g. zarr) canvas
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def colormap_lut(name: str = "viridis", n: int = 256) -> NDArray[np.uint8]:
    """``[n, 3]`` RGB uint8 lookup table, linear interpolation between the anchor colours."""
    if name not in COLORMAPS:
        raise InvalidInputError(f"unknown colormap {name!r}; choose one of {sorted(COLORMAPS)}")
    anchors = np.array(
        [[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in COLORMAPS[name]], dtype=np.float64
    )
    stops = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    lut = np.stack([np.interp(t, stops, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


def value_range(
    values: NDArray[Any], vmin: float | None = None, vmax: float | None = None
) -> tuple[float, float]:
    """``(vmin, vmax)`` for the colour scale: given values win, else the finite min and max."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    lo = float(vmin) if vmin is not None else float(finite.min()) if finite.size else 0.0
    hi = float(vmax) if vmax is not None else float(finite.max()) if finite.size else 1.0
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InvalidInputError(f"colour scale limits must be finite, got {lo}, {hi}")
    if hi < lo:
        raise InvalidInputError(f"vmax={hi} is below vmin={lo}")
    return lo, hi


def colorize(
    values: NDArray[Any], vmin: float, vmax: float, cmap: str = "viridis"
) -> NDArray[np.uint8]:
    """RGBA uint8 ``(h, w, 4)`` of a 2-D float array; NaN (no coverage) is transparent.

    Values are clipped to ``[vmin, vmax]``; a flat range maps everything to the middle colour.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise InvalidInputError(f"expected a 2-D array of values, got shape {v.shape}")
    lut = colormap_lut(cmap)
    valid = np.isfinite(v)
    span = vmax - vmin
    t = np.full(v.shape, 0.5) if span <= 0 else (np.where(valid, v, vmin) - vmin) / span
    index = np.clip(np.round(t * (len(lut) - 1)), 0, len(lut) - 1).astype(np.intp)
    rgba = np.zeros((*v.shape, 4), dtype=np.uint8)
    rgba[..., :3] = lut[index]
    rgba[..., 3] = np.where(valid, 255, 0)
    rgba[~valid, :3] = 0
    return rgba


def _masked_channel(heatmap: Heatmap, channel: int, r0: int, r1: int) -> NDArray[np.float64]:
    rows = np.asarray(heatmap.canvas[r0:r1, :, channel], dtype=np.float64)
    covered = np.asarray(heatmap.coverage[r0:r1], dtype=bool)
    return np.where(covered, rows, np.nan)


def _box_mean(block: NDArray[np.float64], factor: int) -> NDArray[np.float64]:
    """NaN-aware ``factor x factor`` mean; the ragged last row/column blocks average what exists."""
    h, w = block.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(block, ((0, ph), (0, pw)), constant_values=np.nan)
    cells = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    valid = np.isfinite(cells)
    total = np.where(valid, cells, 0.0).sum(axis=(1, 3))
    count = valid.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def resample_to_thumbnail(
    heatmap: Heatmap, shape: tuple[int, int], channel: int = 0
) -> NDArray[np.float32]:
    """Channel ``channel`` of the canvas on a ``(height, width)`` thumbnail grid of the slide.

    NaN where no patch covers. When one thumbnail pixel spans several canvas pixels the canvas
    is first box-averaged (NaN-aware) by that integer factor, so the picture does not alias.
    """
    th, tw = int(shape[0]), int(shape[1])
    if th <= 0 or tw <= 0:
        raise InvalidInputError(f"thumbnail shape {shape} must be positive")
    if not 0 <= channel < heatmap.channels:
        raise InvalidInputError(f"channel {channel} out of range 0..{heatmap.channels - 1}")
    width0, height0 = heatmap.slide_size
    ch = heatmap.shape[0]
    factor = max(1, int(min(width0 / tw, height0 / th) / heatmap.downsample))
    band = max(factor, BAND_ROWS // factor * factor)
    pieces = []
    for r0 in range(0, ch, band):
        block = _masked_channel(heatmap, channel, r0, min(ch, r0 + band))
        pieces.append(_box_mean(block, factor) if factor > 1 else block)
    reduced = np.concatenate(pieces, axis=0)
    ds = heatmap.downsample * factor
    cols = np.floor((np.arange(tw) + 0.5) * (width0 / tw) / ds).astype(np.intp)
    rows = np.floor((np.arange(th) + 0.5) * (height0 / th) / ds).astype(np.intp)
    cols = np.clip(cols, 0, reduced.shape[1] - 1)
    rows = np.clip(rows, 0, reduced.shape[0] - 1)
    return reduced[np.ix_(rows, cols)].astype(np.float32)


def _text(image: NDArray[np.uint8], text: str, org: tuple[int, int], scale: float) -> None:
    cv2.putText(image, text, org, _FONT, scale, (0, 0, 0), max(1, round(scale * 2)), cv2.LINE_AA)


def format_value(value: float) -> str:
    """Short label of a colour-scale limit: 3 significant digits."""
    return f"{value:.3g}"


def colorbar(
    height: int, vmin: float, vmax: float, *, cmap: str = "viridis", label: str = ""
) -> NDArray[np.uint8]:
    """RGB uint8 panel ``(height, w, 3)``: a vertical bar (``vmax`` at the top) with the max,
    min and ``label`` written beside it on white."""
    scale = max(0.35, min(1.0, height / 900))
    pad = max(4, round(12 * scale))
    lines = [format_value(vmax), format_value(vmin), label]
    (tw, th), base = max(
        (cv2.getTextSize(s, _FONT, scale, max(1, round(scale * 2))) for s in lines if s),
        key=lambda size: size[0][0],
    )
    bar_w = max(8, round(24 * scale))
    top = pad + (th + base + pad if label else 0)
    bottom = height - pad
    panel = np.full((height, pad * 3 + bar_w + tw, 3), 255, dtype=np.uint8)
    if bottom - top >= 2:
        lut = colormap_lut(cmap)
        ramp = np.linspace(len(lut) - 1, 0, bottom - top).round().astype(np.intp)
        panel[top:bottom, pad : pad + bar_w] = lut[ramp][:, None, :]
        cv2.rectangle(panel, (pad, top), (pad + bar_w - 1, bottom - 1), (0, 0, 0), 1)
    x_text = pad * 2 + bar_w
    _text(panel, lines[0], (x_text, min(height - base, top + th)), scale)
    _text(panel, lines[1], (x_text, max(th, bottom - base)), scale)
    if label:
        _text(panel, label, (pad, pad + th), scale)
    return panel


def overlay(
    thumbnail: NDArray[np.uint8],
    values: NDArray[Any],
    vmin: float,
    vmax: float,
    *,
    alpha: float = 0.5,
    cmap: str = "viridis",
    label: str = "",
) -> NDArray[np.uint8]:
    """The thumbnail (RGB uint8) with ``values`` (same height and width, NaN = no coverage)
    blended on with ``alpha``, and a colorbar panel appended on the right."""
    thumb = np.asarray(thumbnail, dtype=np.uint8)
    if thumb.ndim != 3 or thumb.shape[2] != 3 or np.shape(values) != thumb.shape[:2]:
        raise InvalidInputError(
            f"thumbnail {thumb.shape} and values {np.shape(values)} must share height and width"
        )
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha={alpha} must be between 0 and 1")
    rgba = colorize(values, vmin, vmax, cmap)
    weight = (rgba[..., 3:4].astype(np.float32) / 255.0) * alpha
    blended = thumb.astype(np.float32) * (1 - weight) + rgba[..., :3].astype(np.float32) * weight
    image = np.round(blended).astype(np.uint8)
    bar = colorbar(thumb.shape[0], vmin, vmax, cmap=cmap, label=label)
    return np.ascontiguousarray(np.concatenate([image, bar], axis=1))


def write_heatmap_ome_zarr(
    heatmap: Heatmap,
    out: str | Path,
    *,
    slide_mpp: tuple[float, float] | None,
    channel_names: Sequence[str],
    name: str,
    ngff: NgffVersion = "0.4",
    window: tuple[float, float] | None = None,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    min_size: int = 256,
) -> Path:
    """Write the canvas as a float32 OME-Zarr pyramid ``(c, y, x)`` at ``out``.

    ``slide_mpp`` is the slide's level-0 ``(x, y)`` µm/px; level 0 of the store has pixel
    size ``downsample * mpp`` per axis, so the heatmap's origin and extent match the slide's
    physical coordinates (the canvas may reach up to one canvas pixel past the slide's edge).
    Pixels no patch covers are NaN; coarser levels are NaN-aware 2 x 2 means down to
    ``min_size`` px. ``window`` sets the viewers' display range (default: the data's range).
    """
    if slide_mpp is None:
        raise MissingMppError(
            "the heatmap OME-Zarr is in µm and needs the slide's MPP; pass --slide-mpp"
        )
    mpp_x, mpp_y = (float(v) for v in slide_mpp)
    if len(channel_names) != heatmap.channels:
        raise InvalidInputError(
            f"{len(channel_names)} channel names for a {heatmap.channels}-channel heatmap"
        )
    canvas = da.from_array(heatmap.canvas, chunks=(BAND_ROWS, BAND_ROWS, heatmap.channels))
    coverage = da.from_array(heatmap.coverage, chunks=(BAND_ROWS, BAND_ROWS))
    masked = da.where(coverage[..., None], canvas, np.float32(np.nan)).astype(np.float32)
    if window is None:
        with warnings.catch_warnings():  # an all-NaN canvas warns; it gets (0, 1) below
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = da.compute(da.nanmin(masked), da.nanmax(masked))
        window = (float(lo), float(hi)) if np.isfinite([lo, hi]).all() else (0.0, 1.0)
    ds = heatmap.downsample
    return write_ome_zarr(
        [masked.transpose(2, 0, 1)],
        out,
        scales_um=[(ds * mpp_y, ds * mpp_x)],
        name=name,
        ngff=ngff,
        channel_names=[str(c) for c in channel_names],
        channel_colours=["FFFFFF"] * heatmap.channels,
        window=window,
        min_size=min_size,
        overwrite=overwrite,
        fill_value=float("nan"),
        extra_attrs={"wsi_ai": {"heatmap": True, "downsample": ds, **dict(provenance or {})}},
    )
