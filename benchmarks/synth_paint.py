"""Where tissue lies on a synthetic slide, and painting level-0 bands of it.

The layout is a smooth random field on the mask grid (downsample ``MASK_DOWNSAMPLE`` = 64;
mask pixel (i, j) covers level-0 x in [64 j, 64 j + 64), y in [64 i, 64 i + 64)): tissue where
it is above a threshold. ``BandPainter`` turns it into level-0 pixels: glass, islands of
source crops with soft wobbly edges, planted regions, and optional pen and border artefacts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from benchmarks.synth_sources import TissueSource
from wsi_ai.errors import InvalidInputError

MASK_DOWNSAMPLE = 64
DS = MASK_DOWNSAMPLE
GLASS = 240  # background grey level
_PERIOD = 1024  # period in px of the glass and edge-noise textures (seamless across cells)
_EDGE_PX = 16.0  # width of the soft tissue edge, level-0 px
_WOBBLE_PX = 10.0  # amplitude of fine edge wobble, level-0 px


@dataclass(frozen=True, eq=False)
class Layout:
    """Where tissue lies: ``field >= threshold``, sampled at the centres of mask pixels."""

    field: np.ndarray  # float32 (ceil(H/64), ceil(W/64))
    threshold: float
    per_px: float  # typical change of the field per level-0 px across an island edge
    labels: np.ndarray  # int32, id of the nearest island per mask pixel

    @property
    def mask(self) -> np.ndarray:
        return self.field >= self.threshold


def check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) in level-0 px from N (square) or (width, height)."""
    w, h = (size, size) if isinstance(size, int) else size
    if min(w, h) < 256:
        raise InvalidInputError(f"slide size {w}x{h} too small; give at least 256 px a side")
    return int(w), int(h)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Periodic Gaussian-filtered white noise (filter std ``sigma`` px), zero mean, unit std."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    gain = np.exp(-2 * (np.pi * sigma) ** 2 * (ky**2 + kx**2))
    a = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * gain, s=shape)
    return ((a - a.mean()) / max(float(a.std()), 1e-9)).astype(np.float32)


def tissue_layout(
    size: int | tuple[int, int], seed: int = 0, tissue_fraction: float = 0.3
) -> Layout:
    """Islands of tissue covering about ``tissue_fraction`` of a (width, height) slide."""
    if not 0.0 < tissue_fraction < 0.9:
        raise InvalidInputError(f"tissue_fraction {tissue_fraction} outside (0, 0.9)")
    w, h = check_size(size)
    nh, nw = -(-h // DS), -(-w // DS)
    rng = np.random.default_rng([seed, 0])
    sigma = max(nh, nw) / 10
    f = _smooth_noise(rng, (nh, nw), sigma) + 0.35 * _smooth_noise(rng, (nh, nw), sigma / 4)
    edge_y = np.minimum(np.arange(nh) + 0.5, nh - np.arange(nh) - 0.5)
    edge_x = np.minimum(np.arange(nw) + 0.5, nw - np.arange(nw) - 0.5)
    margin = max(1.5, 0.06 * min(nh, nw))
    f -= 4 * np.clip(1 - np.minimum.outer(edge_y, edge_x) / margin, 0, 1) ** 2
    f = f.astype(np.float32)
    t = float(np.quantile(f, 1 - tissue_fraction))
    gy, gx = np.gradient(f)
    near = np.abs(f - t) < 0.25
    grad = float(np.median(np.hypot(gy, gx)[near])) if near.any() else 0.3
    # island id per mask pixel: its own island, or on glass the nearest one
    glass = (f < t).astype(np.uint8)
    _, labels = cv2.distanceTransformWithLabels(
        glass, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_CCOMP
    )
    return Layout(f, t, grad / DS, labels.astype(np.int32))


def _axis(a0: int, a1: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear neighbours and weights, on a mask grid of ``n``, of level-0 px a0..a1-1."""
    u = (np.arange(a0, a1) + 0.5) / DS - 0.5
    i = np.floor(u).astype(np.intp)
    return np.clip(i, 0, n - 1), np.clip(i + 1, 0, n - 1), (u - i).astype(np.float32)


def _upsample(f: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Field ``f`` (mask grid) bilinearly interpolated at level-0 pixels [y0:y1, x0:x1]."""
    iy0, iy1, wy = _axis(y0, y1, f.shape[0])
    ix0, ix1, wx = _axis(x0, x1, f.shape[1])
    rows = f[iy0] * (1 - wy)[:, None] + f[iy1] * wy[:, None]
    return rows[:, ix0] * (1 - wx) + rows[:, ix1] * wx


@dataclass(frozen=True)
class Pen:
    """A pen stroke: level-0 polyline points (N, 2) as (x, y), width in px, RGB colour."""

    points: np.ndarray
    width: int
    color: tuple[int, int, int]


def pen_stroke(layout: Layout, rng: np.random.Generator, w: int, h: int) -> Pen:
    """An open arc drawn around the largest island, as a pathologist circles tissue."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(layout.mask.astype(np.uint8))
    bx, by, bw, bh = stats[1 + int(np.argmax(stats[1:, 4]))][:4] if n > 1 else (0, 0, 1, 1)
    width = max(8, round(0.006 * min(w, h)))
    cx, cy = (bx + bw / 2) * DS, (by + bh / 2) * DS
    theta = rng.uniform(0, 2 * np.pi) + np.linspace(0, rng.uniform(1.0, 1.6) * np.pi, 80)
    wobble = 1 + 0.05 * np.sin(3 * theta + rng.uniform(0, 6))
    x = cx + (bw / 2 * DS * 1.2 + 2 * width) * np.cos(theta) * wobble
    y = cy + (bh / 2 * DS * 1.2 + 2 * width) * np.sin(theta) * wobble
    pts = np.stack([np.clip(x, width, w - width), np.clip(y, width, h - width)], axis=1)
    colors = ((35, 55, 120), (30, 85, 55), (40, 40, 45))
    return Pen(pts.round().astype(np.int32), width, colors[int(rng.integers(3))])


class BandPainter:
    """Paints level-0 bands of ``cell`` rows: glass, islands of source crops, plants, artefacts.

    ``plants`` are (field on the mask grid in [0, 1], source): inside islands, where the field
    is above 0.5, cells take that source instead of the island's own. Every cell draws from its
    own random stream, so bands can be painted in any order with the same result.
    """

    def __init__(
        self,
        layout: Layout,
        sources: Sequence[TissueSource],
        *,
        seed: int,
        cell: int,
        width: int,
        plants: Sequence[tuple[np.ndarray, TissueSource]] = (),
        pen: Pen | None = None,
        dark_border: bool = False,
    ) -> None:
        self.layout, self.sources, self.seed, self.cell = layout, list(sources), seed, cell
        for src in [*self.sources, *(s for _, s in plants)]:
            src.prepare(cell)
        self.width, self.plants, self.pen = width, list(plants), pen
        rng = np.random.default_rng([seed, 1])
        glass = GLASS + 1.5 * _smooth_noise(rng, (_PERIOD, _PERIOD), 1.2)
        glass += 1.0 * _smooth_noise(rng, (_PERIOD, _PERIOD), 60.0)
        glass = np.clip(glass[..., None] + np.array([0.0, -0.5, 1.0]), 0, 255).astype(np.uint8)
        self._glass = np.pad(glass, ((0, cell), (0, cell), (0, 0)), "wrap")
        wob = _smooth_noise(rng, (_PERIOD, _PERIOD), 8.0)
        self._wobble = np.pad(wob, ((0, cell), (0, cell)), "wrap")
        self._wobble_max = float(np.abs(wob).max())
        n_islands = int(layout.labels.max()) + 1
        self._island_source = rng.integers(len(self.sources), size=n_islands)
        self._island_variant = rng.integers(1 << 30, size=n_islands)
        self.border_px = round(0.015 * width) if dark_border else 0

    def band(self, row: int) -> np.ndarray:
        """Band ``row`` of cells: level-0 rows [row*cell, (row+1)*cell), all cell columns."""
        c, lay = self.cell, self.layout
        y0 = row * c
        out = np.empty((c, -(-self.width // c) * c, 3), np.uint8)
        half = 0.5 * _EDGE_PX * lay.per_px
        wobble = _WOBBLE_PX * lay.per_px
        reach = wobble * self._wobble_max  # how far fine wobble can move the field
        for col in range(out.shape[1] // c):
            x0 = col * c
            iy0, iy1, _ = _axis(y0, y0 + c, lay.field.shape[0])
            ix0, ix1, _ = _axis(x0, x0 + c, lay.field.shape[1])
            win = lay.field[iy0[0] : iy1[-1] + 1, ix0[0] : ix1[-1] + 1]
            gy, gx = y0 % _PERIOD, x0 % _PERIOD
            glass = self._glass[gy : gy + c, gx : gx + c]
            dst = out[:, x0 : x0 + c]
            if win.max() + reach <= lay.threshold - half:
                dst[:] = glass
                continue
            tex = self._texture(row, col, y0, x0, win, (iy0[0], ix0[0]))
            if win.min() - reach >= lay.threshold + half:
                dst[:] = tex
                continue
            f = _upsample(lay.field, y0, y0 + c, x0, x0 + c)
            f += wobble * self._wobble[gy : gy + c, gx : gx + c]
            alpha = np.clip((f - lay.threshold) / (2 * half) + 0.5, 0, 1)
            dst[:] = cv2.blendLinear(np.ascontiguousarray(tex), glass, alpha, 1 - alpha)
        self._artefacts(out, y0)
        return out

    def _texture(
        self, row: int, col: int, y0: int, x0: int, win: np.ndarray, origin: tuple[int, int]
    ) -> np.ndarray:
        c, lay = self.cell, self.layout
        iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
        island = lay.labels[origin[0] + iy, origin[1] + ix]
        rng = np.random.default_rng([self.seed, 2, row, col])
        src = self.sources[self._island_source[island]]
        tex = src.crop(rng, c, int(self._island_variant[island]))
        rows, cols = (
            slice(origin[0], origin[0] + win.shape[0]),
            slice(origin[1], origin[1] + win.shape[1]),
        )
        for k, (pfield, psrc) in enumerate(self.plants):
            if pfield[rows, cols].max() <= 0.25:  # the region does not reach this cell
                continue
            ptex = psrc.crop(np.random.default_rng([self.seed, 3 + k, row, col]), c, k)
            pa = np.clip((_upsample(pfield, y0, y0 + c, x0, x0 + c) - 0.5) * 2 + 0.5, 0, 1)
            tex = cv2.blendLinear(np.ascontiguousarray(ptex), np.ascontiguousarray(tex), pa, 1 - pa)
        return tex

    def _artefacts(self, out: np.ndarray, y0: int) -> None:
        c = self.cell
        if self.border_px:
            ramp = np.clip(
                (np.arange(self.border_px) - 0.6 * self.border_px) / (0.4 * self.border_px), 0, 1
            )
            shade = (25 + (GLASS - 25) * ramp * ramp * (3 - 2 * ramp)).astype(np.int16)
            sub = out[:, : self.border_px]
            sub[:] = np.clip(sub.astype(np.int16) - GLASS + shade[None, :, None], 0, 255)
        pen = self.pen
        if pen is not None:
            lo, hi = pen.points.min(0) - pen.width, pen.points.max(0) + pen.width
            if hi[1] < y0 or lo[1] >= y0 + c:
                return
            x_lo, x_hi = max(0, int(lo[0])), min(out.shape[1], int(hi[0]) + 1)
            ink = np.zeros((c, x_hi - x_lo), np.uint8)
            pts = (pen.points - [x_lo, y0]).astype(np.int32)
            cv2.polylines(ink, [pts], False, 255, pen.width, cv2.LINE_AA)
            ys, xs = np.nonzero(ink)  # blend only the inked pixels
            a = (ink[ys, xs].astype(np.float32) * (0.9 / 255))[:, None]
            sub = out[:, x_lo:x_hi]
            inked = sub[ys, xs] * (1 - a) + np.array(pen.color, np.float32) * a
            sub[ys, xs] = inked.astype(np.uint8)


def artefact_mask(shape: tuple[int, int], pen: Pen | None, border: int) -> np.ndarray:
    """Mask grid (downsample 64) of the pen stroke and of a ``border`` px dark left edge."""
    mask = np.zeros(shape, np.uint8)
    if pen is not None:
        pts = ((pen.points + 0.5) / DS - 0.5).round().astype(np.int32)
        cv2.polylines(mask, [pts], False, 1, max(1, round(pen.width / DS)))
    if border:
        mask[:, : int(np.ceil(0.8 * border / DS - 0.5))] = 1
    return mask.astype(bool)
