"""The two readers behind :class:`~wsi_ai.slide.Slide`: OpenSlide first, tiffslide second.

OpenSlide (from the ``openslide-bin`` wheel) reads the vendor formats (SVS, NDPI, MRXS,
SCN, BIF, DICOM, tiled TIFF). It rejects plain striped TIFFs and OME-TIFF, which
tiffslide reads. Both are wrapped in :class:`Backend`, which hides their differences:
pixels come back as RGB uint8 with alpha composited on white, errors become
:mod:`wsi_ai.errors` types, and reads are safe from many threads (OpenSlide handles are
thread-safe; tiffslide gets one handle per thread). When ``auto`` falls back to
tiffslide, :attr:`Backend.fallback_reason` keeps why OpenSlide refused the file.
"""

from __future__ import annotations

import itertools
import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from wsi_ai.errors import ParameterError, SlideReadError, UnsupportedSlideError

BackendName = Literal["openslide", "tiffslide"]
RGBArray = NDArray[np.uint8]


class _Reader(Protocol):
    @property
    def level_count(self) -> int: ...

    @property
    def level_dimensions(self) -> Any: ...

    @property
    def level_downsamples(self) -> Any: ...

    @property
    def properties(self) -> Any: ...

    @property
    def associated_images(self) -> Any: ...

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Any: ...

    def close(self) -> None: ...


def to_rgb(pixels: Any) -> RGBArray:
    """Any backend image (PIL or array; L, LA, RGB, RGBA) as RGB uint8, alpha on white."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        arr = _to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels in (2, 4):  # with alpha
        color, alpha = arr[:, :, :-1], arr[:, :, -1:]
        if alpha.min() < 255:
            a = alpha.astype(np.uint16)
            color = ((color.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
        arr = color
        channels -= 1
    if channels == 1:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
    return np.ascontiguousarray(arr[:, :, :3])


def _to_uint8(arr: NDArray[Any]) -> RGBArray:
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        shift = max(int(arr.dtype.itemsize * 8) - 8, 0)
        return (arr.astype(np.uint64) >> shift).astype(np.uint8)
    return np.clip(np.nan_to_num(arr) * 255.0, 0, 255).astype(np.uint8)


class Backend:
    """A thread-safe reader over OpenSlide or tiffslide with one error vocabulary."""

    def __init__(self, path: Path, name: BackendName) -> None:
        self.path = path
        self.name: BackendName = name
        self._local = threading.local()
        self._handles: list[_Reader] = []
        self._lock = threading.Lock()
        self._closed = False
        # Why the backend tried first refused the file, when ``auto`` fell back to this one.
        self.fallback_reason: str | None = None
        self.primary = self._open_handle()

    def _open_handle(self) -> _Reader:
        reader: _Reader
        if self.name == "openslide":
            import openslide

            reader = openslide.OpenSlide(str(self.path))
        else:
            import tiffslide

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reader = tiffslide.TiffSlide(str(self.path))
        with self._lock:
            self._handles.append(reader)
        return reader

    def _thread_reader(self) -> _Reader:
        if self._closed:
            raise SlideReadError("the slide was closed; open it again", self.path)
        if self.name == "openslide":  # the OpenSlide C library is thread-safe
            return self.primary
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self.primary if threading.current_thread() is threading.main_thread() else None
            if reader is None:
                reader = self._open_handle()
            self._local.reader = reader
        return reader

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> RGBArray:
        """RGB uint8 (height, width, 3) at ``level``; (x, y) in level-0 pixels."""
        with self._read_errors():
            reader = self._thread_reader()
            if self.name == "tiffslide":
                return self._tiffslide_region(reader, x, y, level, width, height)
            return to_rgb(reader.read_region((x, y), level, (width, height)))

    @staticmethod
    def _tiffslide_region(
        reader: Any, x: int, y: int, level: int, width: int, height: int
    ) -> RGBArray:
        """tiffslide pads outside the image with black; read the inside, paint the rest white."""
        lw, lh = reader.level_dimensions[level]
        ds = reader.level_downsamples[level]
        rx0, ry0 = reader._read_region_loc_transform((x, y), level)
        cx0, cy0 = max(rx0, 0), max(ry0, 0)
        cx1, cy1 = min(rx0 + width, lw), min(ry0 + height, lh)
        if (cx0, cy0, cx1, cy1) == (rx0, ry0, rx0 + width, ry0 + height):
            raw = reader.read_region((x, y), level, (width, height), as_array=True, padding=False)
            return to_rgb(raw)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            # ceil() maps back onto exactly (cx0, cy0) under tiffslide's floor(loc / ds)
            location = (math.ceil(cx0 * ds), math.ceil(cy0 * ds))
            raw = reader.read_region(
                location, level, (cx1 - cx0, cy1 - cy0), as_array=True, padding=False
            )
            out[cy0 - ry0 : cy1 - ry0, cx0 - rx0 : cx1 - rx0] = to_rgb(raw)
        return out

    def associated_image(self, name: str) -> RGBArray:
        with self._read_errors():
            return to_rgb(self.primary.associated_images[name])

    @contextmanager
    def _read_errors(self) -> Iterator[None]:
        try:
            yield
        except SlideReadError:
            raise
        except Exception as err:  # backend errors have no common base class
            raise SlideReadError(
                f"could not read pixels ({type(err).__name__}: {err}); the file may be "
                "truncated or corrupt: copy it again from the scanner",
                self.path,
            ) from err

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close()


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def open_backend(path: Path, backend: str = "auto") -> Backend:
    """Open ``path`` with the named backend, or OpenSlide then tiffslide for ``auto``."""
    order: tuple[BackendName, ...]
    if backend == "auto":
        order = ("openslide", "tiffslide")
    elif backend in ("openslide", "tiffslide"):
        order = (backend,)  # type: ignore[assignment]
    else:
        raise ParameterError(f"unknown backend {backend!r}: use auto, openslide or tiffslide")
    reasons: list[tuple[BackendName, str]] = []  # (backend, why it refused the file)
    chunks = _tiff_chunk_counts(path)
    for name in order:
        try:
            opened = Backend(path, name)
        except Exception as err:
            reasons.append((name, _short(err)))
            continue
        try:
            dims = opened.primary.level_dimensions
            if len(dims) == 0 or min(min(d) for d in dims) <= 0:
                # Caught just below and reported as UnsupportedSlideError with the file.
                raise ValueError("no image levels in the file")
            _check_chunks(dims, chunks)
            if reasons:  # an earlier backend refused the file
                opened.fallback_reason = reasons[0][1]
            return opened
        except Exception as err:
            opened.close()
            reasons.append((name, _short(err)))
    hint = "is it a whole-slide image? if it is, the file may be truncated: copy it again"
    if _is_dicom(path):
        hint = (
            "a DICOM file needs a VL Whole Slide Microscopy pyramid image with its ImageType; "
            "label-only or malformed DICOM files cannot be read: export the slide again"
        )
    why = "; ".join(f"{name}: {reason}" for name, reason in reasons)
    raise UnsupportedSlideError(f"cannot read this file as a slide ({why}); {hint}", path)


def _tiff_chunk_counts(path: Path) -> dict[tuple[int, int], tuple[int, int]]:
    """For a TIFF file, each page's (width, height) -> (tiles or strips its size needs, tile
    offsets the file holds); ``{}`` for a file tifffile does not parse (DICOM, MRXS...)."""
    import tifffile

    found: dict[tuple[int, int], tuple[int, int]] = {}
    try:
        with tifffile.TiffFile(path) as tif:
            for page in itertools.islice(tif.pages, 64):  # pyramids come first
                if isinstance(page, tifffile.TiffPage) and len(page.shape) >= 2:
                    size = (int(page.imagewidth), int(page.imagelength))
                    found[size] = (math.prod(page.chunked), len(page.dataoffsets))
    except Exception:  # not a TIFF tifffile reads: the backends decide alone
        return {}
    return found


def _check_chunks(dims: Any, chunks: dict[tuple[int, int], tuple[int, int]]) -> None:
    """Refuse a level whose TIFF page holds fewer tiles than its size needs: a damaged size
    or offsets tag. (Else a header claiming 65535 x 65535 px reads 4 gigapixels of blank.)"""
    for index, (w, h) in enumerate(dims):
        needed, held = chunks.get((int(w), int(h)), (0, 0))
        if held < needed:
            raise ValueError(
                f"level {index} is {w} x {h} px in {needed} tiles but the file holds "
                f"{held}: a damaged size or tile offsets tag"
            )


def _short(err: Exception) -> str:
    if isinstance(err, IndexError):
        return "no readable image pages"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.replace("Reading ", "").split(": ", 1)[-1] if "Reading " in text else text
