"""Writing an Aperio-style pyramidal SVS band by band, with bounded memory.

Page order as Aperio writes it: level 0 (tiled JPEG, BigTIFF), a strip thumbnail, reduced
levels at downsample 4, 16 and 64 (tiled), then label (LZW) and macro (JPEG) images. Level 0 is
never held whole: each band is encoded as it comes and reduced into level 1 (kept as JPEG tile
rows) and level 2 (kept raw, 1/256 of level 0); level 3 and the thumbnail come from level 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import imagecodecs
import numpy as np
import tifffile

LEVEL_DOWNSAMPLES = (4, 16, 64)
_HEAD = "Aperio Image Library v12.0.0 \r\n"


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks, k a power of 2 (the last partial blocks dropped)."""
    h, w = a.shape[0] // k, a.shape[1] // k
    if not (h and w):
        return np.zeros((h, w, 3), np.uint8)
    a = a[: h * k, : w * k]
    for _ in range(k.bit_length() - 1):  # halving twice is 2.5x faster than one 4x INTER_AREA
        a = cv2.resize(a, (a.shape[1] // 2, a.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return a


def _tile_grid(img: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """Tiles in row-major order; right and bottom ones padded with edge pixels."""
    h, w = img.shape[:2]
    img = np.pad(img, ((0, -h % tile), (0, -w % tile), (0, 0)), mode="edge")
    for y in range(0, img.shape[0], tile):
        for x in range(0, img.shape[1], tile):
            yield img[y : y + tile, x : x + tile]


class _Jpeg:
    """Encodes tiles as tifffile would write them: YCbCr 4:2:0, or Aperio's plain RGB."""

    def __init__(self, quality: int, rgb: bool) -> None:
        self.quality, self.rgb = quality, rgb

    def __call__(self, tile: np.ndarray) -> bytes:
        t = np.ascontiguousarray(tile)
        if self.rgb:
            return bytes(
                imagecodecs.jpeg8_encode(
                    t, level=self.quality, colorspace="RGB", outcolorspace="RGB"
                )
            )
        return bytes(imagecodecs.jpeg8_encode(t, level=self.quality, subsampling=(2, 2)))

    def page_kwargs(self) -> dict[str, Any]:
        args: dict[str, object] = {"level": self.quality}
        if self.rgb:
            args["outcolorspace"] = "RGB"
        return {
            "photometric": "rgb",
            "compression": "jpeg",
            "compressionargs": args,
            "subsampling": (1, 1) if self.rgb else (2, 2),
            "metadata": None,
        }


class _TileRows:
    """A reduced level that arrives in bands of rows and is encoded a tile row at a time."""

    def __init__(self, tile: int, jpeg: _Jpeg, pool: ThreadPoolExecutor) -> None:
        self.tile, self.jpeg, self.pool = tile, jpeg, pool
        self.pending: np.ndarray | None = None
        self.tiles: list[bytes] = []

    def add(self, rows: np.ndarray) -> None:
        self.pending = rows if self.pending is None else np.concatenate([self.pending, rows])
        while len(self.pending) >= self.tile:
            self.tiles.extend(
                self.pool.map(self.jpeg, _tile_grid(self.pending[: self.tile], self.tile))
            )
            self.pending = self.pending[self.tile :]

    def finish(self) -> list[bytes]:
        if self.pending is not None and len(self.pending):
            self.tiles.extend(self.pool.map(self.jpeg, _tile_grid(self.pending, self.tile)))
        return self.tiles


def label_image(seed: int, w: int, h: int) -> np.ndarray:
    """A 400x400 slide label: what the slide is, and a fake barcode."""
    img = np.full((400, 400, 3), 255, np.uint8)
    x, bars = 30, np.random.default_rng([seed, 5]).integers(2, 9, size=80)
    for i, bar in enumerate(bars):  # a fake 1-D barcode
        if x + bar > 370:
            break
        if i % 2 == 0:
            img[230:370, x : x + bar] = 0
        x += int(bar)
    for i, text in enumerate(("wsi-ai synthetic", f"seed {seed}", f"{w}x{h}")):
        cv2.putText(
            img, text, (20, 60 + 50 * i), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2, cv2.LINE_AA
        )
    return img


def _macro_image(label: np.ndarray, thumb: np.ndarray) -> np.ndarray:
    """A 1280x432 photo of the whole glass slide: label on the left, tissue on the right."""
    img = np.full((432, 1280, 3), 225, np.uint8)
    img[16:416, 16:416] = label
    s = min(400 / thumb.shape[0], 830 / thumb.shape[1])
    t = cv2.resize(thumb, (max(1, round(thumb.shape[1] * s)), max(1, round(thumb.shape[0] * s))))
    img[16 : 16 + t.shape[0], 432 : 432 + t.shape[1]] = t
    return img


def _level0_tiles(
    paint_band: Callable[[int], np.ndarray],
    w: int,
    h: int,
    band_height: int,
    tile: int,
    jpeg: _Jpeg,
    pool: ThreadPoolExecutor,
    reduce: Callable[[int, np.ndarray], None],
    workers: int,
) -> Iterator[bytes]:
    """Level-0 JPEG tiles in row-major order; bands are painted ahead and encoded in ``pool``.

    ``reduce(y0, band)`` sees each band's valid pixels (rows from level-0 ``y0``) in order.
    """
    n_rows, n_cols, n_bands = -(-h // tile), -(-w // tile), -(-h // band_height)
    pending: list[Future[bytes]] = []
    with ThreadPoolExecutor(workers) as render:  # bands are independent: paint ahead
        bands = [render.submit(paint_band, row) for row in range(min(n_bands, workers))]
        for row in range(n_bands):
            y0, band = row * band_height, bands.pop(0).result()
            if row + workers < n_bands:
                bands.append(render.submit(paint_band, row + workers))
            futures = [
                pool.submit(
                    jpeg, band[r * tile - y0 : (r + 1) * tile - y0, c * tile : (c + 1) * tile]
                )
                for r in range(y0 // tile, min(n_rows, (y0 + band_height) // tile))
                for c in range(n_cols)
            ]
            reduce(y0, band[: min(band_height, h - y0), :w])
            for f in pending:  # the previous band's tiles, while this band encodes
                yield f.result()
            pending = futures
    for f in pending:
        yield f.result()


def write_svs(
    path: Path,
    paint_band: Callable[[int], np.ndarray],
    size: tuple[int, int],
    *,
    band_height: int,
    tile: int,
    quality: int,
    jpeg_rgb: bool,
    properties: str,
    label: np.ndarray | None,
    workers: int,
) -> list[tuple[int, int]]:
    """Write an Aperio SVS of ``size`` (width, height) level-0 px; return the level sizes.

    ``paint_band(row)`` gives level-0 rows [row * band_height, (row + 1) * band_height) as
    (band_height, W', 3) uint8 with W' >= width rounded up to ``tile``; it is called from
    ``workers`` threads, a few bands ahead. ``band_height`` is a multiple of ``tile`` and 16.
    ``properties`` is the ``key = value|...`` part of the Aperio ImageDescription.
    """
    w, h = size
    dims = [(w, h)] + [(w // d, h // d) for d in LEVEL_DOWNSAMPLES]
    jpeg = _Jpeg(quality, jpeg_rgb)
    page = jpeg.page_kwargs()
    size0 = f"{w}x{h} [0,0 {w}x{h}] ({tile}x{tile})"
    level2 = np.empty((h // 16, w // 16, 3), np.uint8)  # 1/256 of level 0, kept raw

    with ThreadPoolExecutor(workers) as pool, tifffile.TiffWriter(path, bigtiff=True) as tw:
        level1 = _TileRows(tile, jpeg, pool)

        def reduce(y0: int, band: np.ndarray) -> None:
            reduced = _block_mean(band, 4)
            level1.add(reduced)
            reduced = _block_mean(reduced, 4)
            level2[y0 // 16 : y0 // 16 + len(reduced)] = reduced

        tiles0 = _level0_tiles(paint_band, w, h, band_height, tile, jpeg, pool, reduce, workers)
        desc = f"{_HEAD}{size0} JPEG/RGB Q={quality}|{properties}"
        tw.write(
            tiles0, shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), description=desc, **page
        )

        s = min(1.0, 1024 / max(level2.shape[:2]))
        thumb_size = (max(1, round(level2.shape[1] * s)), max(1, round(level2.shape[0] * s)))
        thumb = cv2.resize(level2, thumb_size, interpolation=cv2.INTER_AREA)
        desc = f"{_HEAD}{w}x{h} -> {thumb_size[0]}x{thumb_size[1]} - |{properties}"
        tw.write(thumb, rowsperstrip=16, description=desc, **page)

        lower = (
            level1.finish(),
            list(pool.map(jpeg, _tile_grid(level2, tile))),
            list(pool.map(jpeg, _tile_grid(_block_mean(level2, 4), tile))),
        )
        for (lw, lh), tiles in zip(dims[1:], lower, strict=True):
            desc = f"{_HEAD}{size0} -> {lw}x{lh} JPEG/RGB Q={quality}"
            tw.write(
                iter(tiles),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                description=desc,
                **page,
            )

        if label is not None:
            desc = f"{_HEAD}label {label.shape[1]}x{label.shape[0]}"
            tw.write(
                label,
                subfiletype=1,
                rowsperstrip=16,
                compression="lzw",
                predictor=True,
                photometric="rgb",
                metadata=None,
                description=desc,
            )
            macro = _macro_image(label, thumb)
            desc = f"{_HEAD}macro {macro.shape[1]}x{macro.shape[0]}"
            tw.write(macro, subfiletype=9, rowsperstrip=16, description=desc, **page)
    return dims
