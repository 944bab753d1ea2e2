"""``open_slide`` and the one :class:`Slide` type every later stage reads from.

Coordinates are level-0 pixels (origin top-left, x right, y down); pixels come back as
RGB uint8 ``(height, width, 3)`` whatever the backend, alpha composited on white.
"""

from __future__ import annotations

import logging
import math
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from wsi_ai.errors import (
    MissingMppError,
    ParameterError,
    SlideNotFoundError,
    UnsupportedSlideError,
)
from wsi_ai.slide.backends import Backend, BackendName, RGBArray, open_backend
from wsi_ai.slide.metadata import (
    PROP_VENDOR,
    Level,
    Modality,
    Mpp,
    normalise_properties,
    objective_power,
    resolve_mpp,
)

if TYPE_CHECKING:
    import zarr

log = logging.getLogger(__name__)

# Relative tolerance when comparing a level's MPP with a target MPP.
MPP_RTOL = 1e-3
# Pixels read at once when a whole level has to be downscaled (bounded memory: 64 MiB RGBA).
BAND_PIXELS = 2**24


def open_slide(
    path: str | Path,
    backend: str = "auto",
    mpp_override: float | tuple[float, float] | None = None,
) -> Slide:
    """Open a whole-slide image; raise a :class:`~wsi_ai.errors.WsiAiError` naming the file.

    ``backend`` is ``auto`` (OpenSlide, then tiffslide for what OpenSlide rejects),
    ``openslide`` or ``tiffslide``. ``mpp_override`` sets the slide's own level-0 MPP
    (the CLI's ``--slide-mpp``) and wins over the file's metadata.
    """
    p = Path(path)
    if not p.exists():
        raise SlideNotFoundError("no such file; check the path", p)
    if p.is_dir():
        raise SlideNotFoundError("is a directory, not a slide file; give the slide's file", p)
    try:
        with p.open("rb"):
            pass
    except OSError as err:
        raise UnsupportedSlideError(
            f"cannot open the file ({err.strerror or err}); check its permissions", p
        ) from err
    opened = open_backend(p, backend)
    try:
        slide = Slide(p, opened, mpp_override)
    except Exception:
        opened.close()
        raise
    if slide.fallback_reason is not None:
        _report_fallback(slide)
    return slide


_REPORTED: set[tuple[str, int, int]] = set()
_REPORTED_LOCK = threading.Lock()


def _report_fallback(slide: Slide) -> None:
    """Say once per file and process that tiffslide read a slide OpenSlide refused.

    A vendor format that OpenSlide reads (tiffslide recognised Aperio, Hamamatsu, Leica...)
    refused by it is a warning: the file may be damaged (a truncated copy, say). A format
    OpenSlide does not read (a striped or an OME TIFF) is a note shown with -v only. Either
    way :attr:`Slide.fallback_reason` and ``wsi-ai info --json`` say why.
    """
    try:
        stat = slide.path.stat()
        key = (str(slide.path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = (str(slide.path), -1, -1)
    with _REPORTED_LOCK:
        if key in _REPORTED:
            return
        _REPORTED.add(key)
    if slide.vendor != "generic-tiff":
        log.warning(
            "%s: read with %s because OpenSlide refused it (%s); the file may be damaged",
            slide.path,
            slide.backend,
            slide.fallback_reason,
        )
    else:
        log.info(
            "%s: read with %s; OpenSlide does not read this file (%s)",
            slide.path,
            slide.backend,
            slide.fallback_reason,
        )


def choose_level(downsamples: tuple[float, ...], target_downsample: float) -> int:
    """The coarsest level at least as fine as ``target_downsample`` (level 0 if none is)."""
    best = 0
    for index, ds in enumerate(downsamples):
        if ds <= target_downsample * (1 + MPP_RTOL) and ds > downsamples[best]:
            best = index
    return best


class Slide:
    """A whole-slide image opened by OpenSlide or tiffslide, behind one typed API."""

    def __init__(
        self,
        path: Path,
        backend: Backend,
        mpp_override: float | tuple[float, float] | None = None,
    ) -> None:
        self.path = path
        self._backend = backend
        self._mpp_override = mpp_override
        raw = backend.primary
        self.properties: dict[str, str] = normalise_properties(dict(raw.properties))
        self.levels: tuple[Level, ...] = tuple(
            Level(i, int(w), int(h), float(ds))
            for i, ((w, h), ds) in enumerate(
                zip(raw.level_dimensions, raw.level_downsamples, strict=True)
            )
        )
        self.associated_image_names: tuple[str, ...] = tuple(sorted(raw.associated_images.keys()))
        self.mpp: Mpp | None = resolve_mpp(
            self.properties, mpp_override, path.name, calibrated=backend.name == "openslide"
        )

    # -- identity and metadata -------------------------------------------------------
    @property
    def backend(self) -> BackendName:
        """The library that reads the file: ``openslide`` or ``tiffslide``."""
        return self._backend.name

    @property
    def fallback_reason(self) -> str | None:
        """Why OpenSlide refused the file when ``auto`` fell back to tiffslide, else None."""
        return self._backend.fallback_reason

    @property
    def vendor(self) -> str:
        return self.properties.get(PROP_VENDOR) or "generic-tiff"

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.levels[0].dimensions

    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(level.dimensions for level in self.levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(level.downsample for level in self.levels)

    @property
    def objective_power(self) -> float | None:
        return objective_power(self.properties)

    @property
    def file_size(self) -> int:
        return self.path.stat().st_size

    def require_mpp(self) -> float:
        """The level-0 MPP (mean of x and y), or a :class:`MissingMppError` asking for one."""
        if self.mpp is None:
            raise MissingMppError(
                "the slide has no microns-per-pixel in its metadata and no objective power; "
                "pass --slide-mpp (e.g. --slide-mpp 0.25 for a 40x scan)",
                self.path,
            )
        return self.mpp.mean

    def level_mpp(self, level: int) -> float:
        return self.require_mpp() * self.levels[level].downsample

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level at least as fine as ``downsample`` (level-0 px per output px)."""
        return choose_level(self.level_downsamples, downsample)

    # -- pixels ----------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RGBArray:
        """RGB uint8 ``(h, w, 3)``: ``size`` pixels of ``level`` from level-0 ``location``.

        Pixels outside the slide come back white, as OpenSlide draws them.
        """
        if not 0 <= level < self.level_count:
            raise ParameterError(
                f"level {level} out of range: the slide has levels 0..{self.level_count - 1}",
                self.path,
            )
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ParameterError(f"region size must be positive (width, height), got {size}")
        return self._backend.read_region(int(location[0]), int(location[1]), level, w, h)

    def read_region_at_mpp(
        self, location: tuple[int, int], size: tuple[int, int], mpp: float
    ) -> RGBArray:
        """``size`` pixels at target resolution ``mpp`` (µm/px) from level-0 ``location``.

        Reads the coarsest level at least as fine as ``mpp`` and resizes a little
        (area interpolation when shrinking). Where no level is fine enough it
        upsamples the finest level with a warning.
        """
        downsample = mpp / self.require_mpp()
        level = self.best_level_for_downsample(downsample)
        scale = downsample / self.levels[level].downsample  # level px per output px
        if scale < 1 - MPP_RTOL:
            log.warning(
                "%s: no level is as fine as %.4g µm/px; upsampling level %d (%.4g µm/px)",
                self.path.name,
                mpp,
                level,
                self.level_mpp(level),
            )
        w, h = int(size[0]), int(size[1])
        read_w, read_h = max(1, round(w * scale)), max(1, round(h * scale))
        pixels = self.read_region(location, level, (read_w, read_h))
        return resize(pixels, (w, h))

    def read_level(self, level: int, max_size: int | None = None) -> RGBArray:
        """A whole level, optionally shrunk to fit ``max_size`` px, read in bounded memory."""
        width, height = self.levels[level].dimensions
        factor = 1.0 if max_size is None else min(1.0, max_size / max(width, height))
        out_w = max(1, round(width * factor))
        if factor == 1.0:
            return self.read_region((0, 0), level, (width, height))
        ds = self.levels[level].downsample
        out_h = max(1, round(height * factor))
        # Shrink each band by a whole factor k (bands are multiples of k rows, so every
        # band maps onto whole output rows), then resize the small result once.
        k = max(1, math.floor(1 / factor))
        band = max(BAND_PIXELS // (width * k), 1) * k
        inter_w = max(1, round(width / k))
        bands = []
        for top in range(0, height, band):
            rows = min(band, height - top)
            pixels = self.read_region((0, round(top * ds)), level, (width, rows))
            bands.append(resize(pixels, (inter_w, max(1, round(rows / k)))))
        return resize(np.concatenate(bands, axis=0), (out_w, out_h))

    def thumbnail(self, max_size: int = 1024) -> RGBArray:
        """The whole slide shrunk so its longer side is at most ``max_size`` px.

        Kept per size for the life of this handle (the tissue, QC, grid preview, overlay and
        report stages all ask for one): each call returns its own copy."""
        cache: dict[int, RGBArray] = self.__dict__.setdefault("_thumbnails", {})
        if max_size not in cache:
            longest = max(self.dimensions)
            target_ds = max(1.0, longest / max_size)
            level = self.best_level_for_downsample(target_ds)
            if len(cache) >= 4:
                cache.clear()
            cache[max_size] = self.read_level(level, max_size)
        return cache[max_size].copy()

    def associated_image(self, name: str) -> RGBArray:
        """An associated image (label, macro, thumbnail) by name, as RGB uint8."""
        if name not in self.associated_image_names:
            raise KeyError(f"{self.path.name} has no associated image {name!r}")
        return self._backend.associated_image(name)

    @cached_property
    def modality(self) -> Modality:
        """Brightfield (bright glass) or fluorescence (dark background), from the thumbnail."""
        return detect_modality(self.thumbnail(512))

    def as_zarr(self, cache_bytes: int = 64 * 2**20) -> zarr.Group:
        """A read-only lazy Zarr group, one (y, x, c) array per level; see :mod:`.zarr_store`."""
        from wsi_ai.slide.zarr_store import open_lazy_pyramid

        return open_lazy_pyramid(self, cache_bytes=cache_bytes)

    # -- lifecycle -------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What ``wsi-ai info`` prints: metadata only, never label or macro pixels."""
        return {
            "path": str(self.path),
            "file": self.path.name,
            "file_size": self.file_size,
            "backend": self.backend,
            "fallback_reason": self.fallback_reason,
            "vendor": self.vendor,
            "width": self.dimensions[0],
            "height": self.dimensions[1],
            "levels": [
                {"width": lv.width, "height": lv.height, "downsample": round(lv.downsample, 4)}
                for lv in self.levels
            ],
            "mpp_x": None if self.mpp is None else self.mpp.x,
            "mpp_y": None if self.mpp is None else self.mpp.y,
            "mpp_source": None if self.mpp is None else self.mpp.source,
            "objective_power": self.objective_power,
            "modality": self.modality,
            "associated_images": list(self.associated_image_names),
        }

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # Dask process workers and distributed clusters reopen the file by path.
        return (open_slide, (str(self.path), self.backend, self._mpp_override))

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({self.path.name!r}, {w}x{h}, levels={self.level_count}, {self.backend})"


def resize(pixels: RGBArray, size: tuple[int, int]) -> RGBArray:
    """Resize to ``size`` (width, height): area interpolation down, linear up."""
    w, h = size
    if pixels.shape[1] == w and pixels.shape[0] == h:
        return pixels
    shrink = w < pixels.shape[1] or h < pixels.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(pixels, (w, h), interpolation=interp))


def detect_modality(thumbnail: RGBArray) -> Modality:
    """Fluorescence slides are mostly dark background; brightfield ones mostly bright glass.

    Scanners pad brightfield slides with black, so a fair share of bright, colourless
    glass decides for brightfield however much dark padding surrounds it.
    """
    pixels = thumbnail.astype(np.int16)
    gray = pixels.mean(axis=2)
    chroma = pixels.max(axis=2) - pixels.min(axis=2)
    glass = float(((gray > 200) & (chroma < 30)).mean())
    if glass >= 0.1:
        return "brightfield"
    dark = float((gray < 60).mean())
    bright = float((gray > 150).mean())
    return "fluorescence" if dark > bright else "brightfield"
