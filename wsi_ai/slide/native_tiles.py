"""Decode a TIFF-based slide's own tiles directly, without going through ``read_region``.

For SVS, generic tiled TIFF and OME-TIFF, every pyramid level is a tiled TIFF page:
reading one tile is a ``pread`` of its bytes and one codec call (libjpeg-turbo,
OpenJPEG, ... through tifffile/imagecodecs). That is about ten times cheaper than a
``read_region`` call, which composes tiles through an RGBA canvas. The lazy Zarr
pyramid uses this where it applies and falls back to ``read_region`` elsewhere (NDPI,
MRXS, DICOM, striped TIFF).

A level is used only when tifffile's pyramid level has exactly the dimensions the
slide's backend reports for it, so both always describe the same pixels.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)


# (compression, photometric) pairs whose tiles tifffile decodes to the same RGB as OpenSlide.
# Aperio's 33003/33004 JPEG 2000 store YCbCr that OpenSlide converts itself: not listed.
_SAFE = {
    (1, 2),  # none, RGB
    (5, 2),  # LZW, RGB
    (8, 2),  # deflate, RGB
    (32946, 2),  # old deflate, RGB
    (7, 2),  # JPEG, RGB (Aperio)
    (7, 6),  # JPEG, YCbCr (libjpeg converts)
    (33005, 2),  # Aperio JPEG 2000, RGB
}


def _safe_codec(page: Any) -> bool:
    return (int(page.compression), int(page.photometric)) in _SAFE


# APP14 "Adobe", version 100, no flags, transform 0: the three components are R, G, B.
ADOBE_NO_TRANSFORM = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


class _Level:
    __slots__ = ("grid", "page", "tile")

    def __init__(self, page: Any) -> None:
        self.page = page
        self.tile = (int(page.tilelength), int(page.tilewidth))
        rows = -(-int(page.imagelength) // self.tile[0])
        cols = -(-int(page.imagewidth) // self.tile[1])
        self.grid = (rows, cols)


class NativeTiles:
    """Tile decoding for the levels of a TIFF pyramid that match the slide's levels."""

    def __init__(self, path: Path, tiff: Any, levels: dict[int, _Level]) -> None:
        self.path = path
        self._tiff = tiff
        self._levels = levels
        self._fd = os.open(path, os.O_RDONLY)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, level_dimensions: tuple[tuple[int, int], ...]) -> NativeTiles | None:
        """Native tiles for ``path``, or ``None`` when it is not a tiled TIFF pyramid."""
        try:
            import tifffile

            with open(path, "rb") as fh:
                if fh.read(4) not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                    return None
            tiff = tifffile.TiffFile(path)
        except Exception:
            return None
        try:
            series = tiff.series[0]
            if series.kind in ("ndpi", "scn", "bif"):  # vendor layouts OpenSlide maps itself
                tiff.close()
                return None
            levels: dict[int, _Level] = {}
            for index, (width, height) in enumerate(level_dimensions):
                if index >= len(series.levels):
                    break
                page = series.levels[index].keyframe
                if (
                    page.is_tiled
                    and (int(page.imagewidth), int(page.imagelength)) == (width, height)
                    and int(page.imagedepth) == 1
                    and page.dtype == np.uint8
                    and page.samplesperpixel in (3, 4)
                    and _safe_codec(page)
                    and len(series.levels[index].pages) == 1
                ):
                    levels[index] = _Level(page)
            if not levels:
                tiff.close()
                return None
            return cls(path, tiff, levels)
        except Exception as err:  # an odd file: fall back to read_region
            log.debug("%s: native tiles unavailable (%s)", path.name, err)
            tiff.close()
            return None

    def tile_shape(self, level: int) -> tuple[int, int] | None:
        """(height, width) of the level's tiles, or ``None`` if the level is not native."""
        entry = self._levels.get(level)
        return None if entry is None else entry.tile

    def is_jpeg(self, level: int) -> bool:
        """Whether the level's tiles are baseline JPEG streams (GPU-decodable)."""
        entry = self._levels.get(level)
        return entry is not None and int(entry.page.compression) == 7

    def grid(self, level: int) -> tuple[int, int]:
        """(rows, columns) of the level's tile grid."""
        return self._levels[level].grid

    def raw(self, level: int, row: int, col: int) -> bytes:
        """The tile's bytes as stored in the file (``b""`` for a sparse tile)."""
        entry = self._levels[level]
        rows, cols = entry.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"tile ({row}, {col}) outside the {rows} x {cols} grid")
        index = row * cols + col
        offset, count = int(entry.page.dataoffsets[index]), int(entry.page.databytecounts[index])
        if count == 0:  # a sparse tile: nothing was scanned there
            return b""
        data = os.pread(self._fd, count, offset)
        if len(data) != count:
            raise OSError(f"tile {index} of level {level} is cut short: the file is truncated")
        return data

    def decode(self, level: int, row: int, col: int) -> NDArray[np.uint8]:
        """The tile at (row, col) of ``level`` as RGB uint8 (tile height, tile width, 3)."""
        return self.decode_raw(level, row, col, self.raw(level, row, col))

    def decode_raw(self, level: int, row: int, col: int, data: bytes) -> NDArray[np.uint8]:
        """Decode bytes read by :meth:`raw` (white for a sparse tile)."""
        entry = self._levels[level]
        page = entry.page
        th, tw = entry.tile
        if not data:
            return np.full((th, tw, 3), 255, dtype=np.uint8)
        index = row * entry.grid[1] + col
        decoded, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        tile = np.asarray(decoded).reshape(th, tw, -1)
        if tile.shape[2] == 4:  # RGBA: composite on white like OpenSlide
            from wsi_ai.slide.backends import to_rgb

            return to_rgb(tile)
        return tile[:, :, :3]

    def jpeg_stream(self, level: int, data: bytes) -> bytes:
        """A self-contained JPEG file of a tile's stored bytes (any decoder reads it).

        TIFF keeps the quantisation and Huffman tables shared by all tiles in the
        JPEGTables tag; they are put back in front of the tile's frame. A tile stored as
        RGB (Photometric 2) whose JPEG says nothing about its colours would be taken for
        YCbCr by a plain decoder (Aperio's name their components 0, 1, 2), so they get an
        Adobe marker saying "no transform": OpenSlide and libtiff decode them as RGB too.
        """
        page = self._levels[level].page
        if not data.startswith(b"\xff\xd8"):
            raise ValueError("not a JPEG stream")
        tables = page.jpegtables
        head = bytes(tables[:-2]) if tables and bytes(tables[:2]) == b"\xff\xd8" else b"\xff\xd8"
        body = data[2:]
        if int(page.photometric) == 2:
            head = head + ADOBE_NO_TRANSFORM
        return head + body

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                self._tiff.close()
