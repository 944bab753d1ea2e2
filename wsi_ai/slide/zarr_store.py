"""A lazy, read-only Zarr v3 view of a slide: one ``(y, x, c)`` uint8 array per level.

Nothing is converted and nothing is written to disk. Each array's chunks are the
level's own tiles. For tiled TIFF pyramids (SVS, generic and OME-TIFF) a chunk is one
native tile, read and decoded directly (:mod:`.native_tiles`). Elsewhere (NDPI, MRXS,
DICOM, striped TIFF) a chunk is the backend's tile size where it is sensible, else
512 x 512, read through ``read_region``. A chunk is decoded only when zarr asks for
it, and the last decoded chunks stay in a small LRU cache shared by every level, so
neighbouring patches that touch the same tile decode it once.

The group carries the pyramid's metadata (levels, downsamples, MPP) in its
attributes; the on-disk OME-Zarr export is :mod:`wsi_ai.export.ome_zarr`.

Levels whose downsample is not an integer (some SVS files report 2.0005, say) are read
at the level-0 location nearest to the chunk's origin; OpenSlide then resamples by a
fraction of a pixel, so those levels match ``read_region`` to within that shift.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import MemoryStore

from wsi_ai import __version__
from wsi_ai.errors import SlideReadError
from wsi_ai.slide.native_tiles import NativeTiles

if TYPE_CHECKING:
    from wsi_ai.slide.slide import Slide

DEFAULT_CHUNK = 512
MIN_CHUNK, MAX_CHUNK = 64, 2048
FILL = 255  # outside the slide is white, as OpenSlide draws it


def level_chunk_shape(slide: Slide, level: int) -> tuple[int, int]:
    """(height, width) of a chunk: the native tile if it is a sensible size, else 512."""
    props = slide.properties
    try:
        tw = int(props.get(f"openslide.level[{level}].tile-width", "0"))
        th = int(props.get(f"openslide.level[{level}].tile-height", "0"))
    except ValueError:
        tw = th = 0
    if MIN_CHUNK <= tw <= MAX_CHUNK and MIN_CHUNK <= th <= MAX_CHUNK:
        return th, tw
    return DEFAULT_CHUNK, DEFAULT_CHUNK


class _ChunkCache:
    """A thread-safe LRU of decoded chunks, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, int]) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[int, int, int], value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


class LazySlideStore(Store):
    """A read-only zarr ``Store`` whose chunk keys are decoded from the slide on demand."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, slide: Slide, cache_bytes: int = 64 * 2**20) -> None:
        super().__init__(read_only=True)
        self.slide = slide
        self._cache = _ChunkCache(cache_bytes)
        self._native = NativeTiles.open(slide.path, slide.level_dimensions)
        if self._native is not None:
            weakref.finalize(self, self._native.close)
        self._chunks = [self._chunk_shape(lv.index) for lv in slide.levels]
        self._meta = _build_metadata(slide, self._chunks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LazySlideStore) and other.slide is self.slide

    def __reduce__(self) -> tuple[Any, ...]:
        # Dask process workers and distributed clusters rebuild the store from the slide,
        # which itself reopens by path; the cache and file handles stay per process.
        return (LazySlideStore, (self.slide, self._cache.max_bytes))

    def __hash__(self) -> int:
        return id(self.slide)

    @property
    def native(self) -> NativeTiles | None:
        """The file's own tile decoder, when it reads this slide's levels."""
        return self._native

    def chunk_shape(self, level: int) -> tuple[int, int]:
        """(height, width) of the level's chunks."""
        return self._chunks[level]

    def _chunk_shape(self, level: int) -> tuple[int, int]:
        native = None if self._native is None else self._native.tile_shape(level)
        return native if native is not None else level_chunk_shape(self.slide, level)

    # -- chunk decoding ----------------------------------------------------------------
    def _parse_chunk_key(self, key: str) -> tuple[int, int, int] | None:
        parts = key.split("/")
        if len(parts) != 5 or parts[1] != "c" or parts[4] != "0":
            return None
        try:
            level, cy, cx = int(parts[0]), int(parts[2]), int(parts[3])
        except ValueError:
            return None
        if not 0 <= level < len(self._chunks):
            return None
        th, tw = self._chunks[level]
        lv = self.slide.levels[level]
        if not (0 <= cy * th < lv.height and 0 <= cx * tw < lv.width):
            return None
        return level, cy, cx

    def chunk_bytes(self, level: int, cy: int, cx: int) -> bytes:
        """The chunk's C-order (th, tw, 3) uint8 bytes, padded with white at the edges."""
        key = (level, cy, cx)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        th, tw = self._chunks[level]
        if self._native is not None and self._native.tile_shape(level) is not None:
            try:
                data = np.ascontiguousarray(self._native.decode(level, cy, cx)).tobytes()
            except Exception as err:
                raise SlideReadError(
                    f"could not decode tile ({cy}, {cx}) of level {level} ({err}); the file "
                    "may be truncated or corrupt: copy it again from the scanner",
                    self.slide.path,
                ) from err
            self._cache.put(key, data)
            return data
        lv = self.slide.levels[level]
        x, y = cx * tw, cy * th
        w, h = min(tw, lv.width - x), min(th, lv.height - y)
        location = (round(x * lv.downsample), round(y * lv.downsample))
        pixels = self.slide.read_region(location, level, (w, h))
        if (h, w) != (th, tw):
            padded = np.full((th, tw, 3), FILL, dtype=np.uint8)
            padded[:h, :w] = pixels
            pixels = padded
        data = pixels.tobytes()
        self._cache.put(key, data)
        return data

    # -- Store API -------------------------------------------------------------------
    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        if key in self._meta:
            data: bytes | None = self._meta[key]
        else:
            parsed = self._parse_chunk_key(key)
            if parsed is None:
                return None
            data = self._cache.get(parsed)
            if data is None:  # decode off the event loop so threads read in parallel
                data = await asyncio.to_thread(self.chunk_bytes, *parsed)
        if data is None:
            return None
        if byte_range is not None:
            data = _slice_range(data, byte_range)
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        return key in self._meta or self._parse_chunk_key(key) is not None

    async def set(self, key: str, value: Buffer) -> None:
        raise PermissionError("the lazy slide pyramid is read-only")

    async def delete(self, key: str) -> None:
        raise PermissionError("the lazy slide pyramid is read-only")

    async def list(self) -> AsyncIterator[str]:
        for key in self._meta:
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._meta:
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        seen: set[str] = set()
        for key in self._meta:
            rest = key[len(prefix) + 1 :] if prefix else key
            if prefix and not key.startswith(prefix + "/"):
                continue
            head = rest.split("/", 1)[0]
            if head not in seen:
                seen.add(head)
                yield head


def _slice_range(data: bytes, byte_range: ByteRequest) -> bytes:
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix :]
    raise TypeError(f"unsupported byte range {byte_range!r}")


def pyramid_attributes(slide: Slide) -> dict[str, Any]:
    """Multiscale metadata shared by the lazy group: levels, downsamples, MPP."""
    mpp = slide.mpp
    datasets = []
    for lv in slide.levels:
        entry: dict[str, Any] = {"path": str(lv.index), "downsample": lv.downsample}
        if mpp is not None:
            entry["mpp"] = [mpp.y * lv.downsample, mpp.x * lv.downsample]
        datasets.append(entry)
    return {
        "multiscales": [
            {
                "name": slide.path.name,
                "axes": ["y", "x", "c"],
                "datasets": datasets,
                "units": "micrometer" if mpp is not None else None,
            }
        ],
        "wsi_ai": {
            "version": __version__,
            "source": slide.path.name,
            "backend": slide.backend,
            "vendor": slide.vendor,
            "level_dimensions": [list(lv.dimensions) for lv in slide.levels],
            "level_downsamples": list(slide.level_downsamples),
            "mpp": None if mpp is None else [mpp.x, mpp.y],
            "mpp_source": None if mpp is None else mpp.source,
        },
    }


def _build_metadata(slide: Slide, chunks: list[tuple[int, int]]) -> dict[str, bytes]:
    """Let zarr itself write the v3 metadata documents, then keep only those."""
    memory = MemoryStore()
    group = zarr.open_group(memory, mode="w", zarr_format=3)
    group.attrs.update(pyramid_attributes(slide))
    for lv, (th, tw) in zip(slide.levels, chunks, strict=True):
        group.create_array(
            str(lv.index),
            shape=(lv.height, lv.width, 3),
            chunks=(th, tw, 3),
            dtype="uint8",
            fill_value=FILL,
            compressors=None,
            filters=None,
            dimension_names=("y", "x", "c"),
            attributes={"downsample": lv.downsample},
        )
    docs = {key: bytes(value.to_bytes()) for key, value in memory._store_dict.items()}
    for key, value in docs.items():  # fail early if zarr wrote anything unexpected
        if key.endswith("zarr.json"):
            json.loads(value)
    return docs


def open_lazy_pyramid(slide: Slide, cache_bytes: int = 64 * 2**20) -> zarr.Group:
    """The slide as a read-only zarr group; use ``dask.array.from_zarr(group["0"])``."""
    store = LazySlideStore(slide, cache_bytes=cache_bytes)
    return zarr.open_group(store, mode="r", zarr_format=3)
