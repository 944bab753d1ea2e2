"""Write an on-disk OME-Zarr image pyramid, streamed chunk by chunk with Dask.

- :func:`write_ome_zarr`, the generic core: Dask arrays ``(c, y, x)``, one per pyramid level
  (finest first), each with its pixel size in µm. Heatmaps use it too.
- :func:`convert_slide` (``wsi-ai convert``): a slide's own pyramid read lazily through
  :meth:`Slide.as_zarr`, plus coarser levels (2 x 2 mean) where the slide's pyramid stops early.

Layout. NGFF 0.4 (default; what QuPath's Bio-Formats reader opens) is Zarr v2 with ``"/"`` as
dimension separator and ``multiscales`` / ``omero`` in the group's ``.zattrs``; NGFF 0.5 is
Zarr v3 with that metadata under the ``"ome"`` attribute and ``dimension_names`` ``c, y, x``.
Arrays ``"0"`` (finest), ``"1"``, ... each have one ``scale`` transform ``[1, y, x]`` in µm/px:
the level-0 MPP times level-0 size / level size, per axis. Associated images (label, macro,
thumbnail), only when asked for, are one-level images under ``associated/<name>`` whose scale
is 1 **pixel** (no unit on their axes): photographs of the glass, not at a known resolution.

Safety. Everything is written to a sibling ``OUT.tmp-<id>`` and renamed to ``OUT`` only when
complete, so a crash never leaves a half-written result that looks finished.

Memory. Each level is one Dask graph of independent tasks (read a chunk, write it) on a
thread pool; nothing holds a whole level. Generated levels are computed from the previous
level as written on disk, not from the source again.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dask
import dask.array as da
import numcodecs
import numpy as np
import zarr
from dask.callbacks import Callback
from zarr.codecs import BloscCodec

from wsi_ai import __version__
from wsi_ai.errors import ParameterError
from wsi_ai.outputs import atomic_output

if TYPE_CHECKING:
    from wsi_ai.slide.slide import Slide

NgffVersion = Literal["0.4", "0.5"]
Progress = Callable[[int, int], None]

DEFAULT_CHUNK = 512
DEFAULT_MIN_SIZE = 1024  # generated levels stop once the longer side fits in this many px
DEFAULT_WORKERS = 2
SLIDE_FILL = 255  # outside the slide is white, as OpenSlide draws it
RGB_CHANNELS = (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
_WRITE_TASK = "wsi-ai-write"


# -- public API --------------------------------------------------------------------------
def write_ome_zarr(
    levels: Sequence[da.Array],
    out: str | Path,
    *,
    scales_um: Sequence[tuple[float, float]],
    name: str,
    ngff: NgffVersion = "0.4",
    channel_names: Sequence[str] | None = None,
    channel_colours: Sequence[str] | None = None,
    window: tuple[float, float] | None = None,
    min_size: int | None = None,
    associated: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
    chunk: int = DEFAULT_CHUNK,
    compressor: Any = None,
    fill_value: float = 0,
    progress: Progress | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
    scheduler: str = "threads",
    num_workers: int = DEFAULT_WORKERS,
) -> Path:
    """Write ``levels`` as one OME-Zarr multiscale image at ``out``; return ``out``.

    ``levels`` are ``(c, y, x)`` arrays, finest first, all with the same channels and dtype;
    ``scales_um[i]`` is level ``i``'s pixel size ``(y, x)`` in µm/px. ``min_size`` adds
    levels by 2 x 2 mean of the previous one (edges replicated on odd sizes) until the
    longer side is at most ``min_size`` px. ``associated`` maps names to small ``(c, y, x)``
    numpy images written under ``associated/<name>`` with a scale of 1 px. Channel metadata
    (``omero``) defaults to red/green/blue with windows 0-255 for 3-channel uint8.
    ``progress(done_chunks, total_chunks)`` is called as chunks are written.
    ``compressor``: a numcodecs codec for NGFF 0.4, a zarr v3 codec for 0.5 (default:
    :func:`default_compressor`). An existing ``out`` raises :class:`OutputExistsError`
    unless ``overwrite``.
    """
    out = Path(out)
    if ngff not in ("0.4", "0.5"):
        raise ParameterError(f"ngff must be '0.4' or '0.5', got {ngff!r}", out)
    if not levels or len(levels) != len(scales_um):
        raise ParameterError(
            f"need at least one level and one (y, x) scale in µm per level; "
            f"got {len(levels)} level(s) and {len(scales_um)} scale(s)",
            out,
        )
    if chunk < 1:
        raise ParameterError(f"chunk must be a positive number of pixels, got {chunk}", out)
    channels, dtype = _check_levels(levels)
    shapes = [tuple(int(s) for s in lv.shape) for lv in levels]
    scales = [(float(sy), float(sx)) for sy, sx in scales_um]
    while min_size is not None and max(shapes[-1][1:]) > min_size:
        c, h, w = shapes[-1]
        shapes.append((c, math.ceil(h / 2), math.ceil(w / 2)))
        scales.append((scales[-1][0] * 2, scales[-1][1] * 2))
    total = sum(_n_chunks(shape, chunk) for shape in shapes)
    counter = _WriteProgress(total, progress)
    omero = _omero(channels, dtype, channel_names, channel_colours, window)
    fmt: Literal[2, 3] = 2 if ngff == "0.4" else 3
    compressor = compressor if compressor is not None else default_compressor(ngff, dtype)

    with atomic_output(out, overwrite) as tmp, _scheduler(scheduler, num_workers) as run:
        root = zarr.open_group(tmp, mode="w", zarr_format=fmt)
        targets = [
            _create_array(root, str(i), shape, dtype, chunk, compressor, fill_value, ngff)
            for i, shape in enumerate(shapes)
        ]
        for i, target in enumerate(targets):
            if i < len(levels):
                source = levels[i].rechunk((channels, chunk, chunk))
            else:
                source = _halved(targets[i - 1], chunk)
            _store_level(source, target, counter, run)
        for image_name, pixels in (associated or {}).items():
            _write_associated(root, image_name, pixels, ngff, compressor)
        method = None
        if len(shapes) > len(levels):
            method = {"method": "2x2 mean of the previous level", "first_generated": len(levels)}
        attrs = _image_attrs(name, scales, ngff, "micrometer", omero, extra_attrs or {}, method)
        root.attrs.update(attrs)
    if progress is not None and counter.done < total:
        progress(total, total)
    return out


def convert_slide(
    slide: Slide,
    out: str | Path,
    *,
    ngff: NgffVersion = "0.4",
    mpp: float | tuple[float, float] | None = None,
    include_associated: bool = False,
    overwrite: bool = False,
    chunk: int = DEFAULT_CHUNK,
    min_size: int | None = DEFAULT_MIN_SIZE,
    progress: Progress | None = None,
    scheduler: str = "threads",
    num_workers: int = DEFAULT_WORKERS,
) -> Path:
    """Convert a slide's pyramid to OME-Zarr at ``out`` (``wsi-ai convert``); return ``out``.

    ``mpp`` is the slide's level-0 µm/px (one value, or ``(x, y)``) and wins over the
    file's; without either this raises :class:`~wsi_ai.errors.MissingMppError`. Level
    scales are the level-0 MPP times level-0 size / level size, per axis. Levels are added
    by 2 x 2 mean until the longer side is at most ``min_size`` px (``None``: only the
    slide's own levels). Associated images are copied only with ``include_associated``.
    """
    mpp_x, mpp_y = _slide_mpp(slide, mpp)
    group = slide.as_zarr()
    width0, height0 = slide.dimensions
    levels: list[da.Array] = []
    scales: list[tuple[float, float]] = []
    for lv in slide.levels:
        yxc = da.from_zarr(group[str(lv.index)], chunks=(chunk, chunk, 3))
        levels.append(yxc.transpose(2, 0, 1))
        scales.append((mpp_y * (height0 / lv.height), mpp_x * (width0 / lv.width)))
    associated = None
    if include_associated:
        associated = {
            n: np.ascontiguousarray(slide.associated_image(n).transpose(2, 0, 1))
            for n in slide.associated_image_names
        }
    source = {
        "version": __version__,
        "source": slide.path.name,
        "vendor": slide.vendor,
        "mpp": [mpp_x, mpp_y],
        "mpp_source": "argument" if mpp is not None else getattr(slide.mpp, "source", None),
        "level_dimensions": [list(lv.dimensions) for lv in slide.levels],
    }
    return write_ome_zarr(
        levels,
        out,
        scales_um=scales,
        name=slide.path.name,
        ngff=ngff,
        min_size=min_size,
        associated=associated,
        overwrite=overwrite,
        chunk=chunk,
        fill_value=SLIDE_FILL,
        progress=progress,
        extra_attrs={"wsi_ai": source},
        scheduler=scheduler,
        num_workers=num_workers,
    )


def default_compressor(ngff: NgffVersion, dtype: np.dtype[Any] | type = np.uint8) -> Any:
    """Blosc zstd (level 1, 1 MiB blocks): a numcodecs codec for Zarr v2, a zarr one for v3.

    Blosc is what Bio-Formats' Zarr reader (QuPath) decodes; one block per 512-px RGB chunk
    compresses as well as plain zstd, and level 1 writes about 500 MB/s per core. Byte
    shuffle only for multi-byte types (float heatmaps).
    """
    shuffle = np.dtype(dtype).itemsize > 1
    if ngff == "0.4":
        mode = numcodecs.Blosc.SHUFFLE if shuffle else numcodecs.Blosc.NOSHUFFLE
        return numcodecs.Blosc(cname="zstd", clevel=1, shuffle=mode, blocksize=2**20)
    return BloscCodec(
        cname="zstd", clevel=1, shuffle="shuffle" if shuffle else "noshuffle", blocksize=2**20
    )


def _slide_mpp(slide: Slide, mpp: float | tuple[float, float] | None) -> tuple[float, float]:
    """Level-0 (x, y) µm/px: the argument, else the slide's, else MissingMppError."""
    if mpp is None:
        slide.require_mpp()
        assert slide.mpp is not None
        pair = (slide.mpp.x, slide.mpp.y)
    else:
        pair = (mpp, mpp) if isinstance(mpp, int | float) else (mpp[0], mpp[1])
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ParameterError(
            f"mpp must be a positive number of µm per pixel (e.g. 0.25 for a 40x scan), "
            f"got {mpp!r}",
            slide.path,
        )
    return float(pair[0]), float(pair[1])


# -- levels ------------------------------------------------------------------------------
def _check_levels(levels: Sequence[da.Array]) -> tuple[int, np.dtype[Any]]:
    first = levels[0]
    for i, lv in enumerate(levels):
        if lv.ndim != 3:
            raise ParameterError(f"level {i} must be (c, y, x), got shape {lv.shape}")
        if lv.shape[0] != first.shape[0] or lv.dtype != first.dtype:
            raise ParameterError(
                f"level {i} has {lv.shape[0]} channels of {lv.dtype}; "
                f"level 0 has {first.shape[0]} of {first.dtype}"
            )
    return int(first.shape[0]), np.dtype(first.dtype)


def _n_chunks(shape: tuple[int, ...], chunk: int) -> int:
    return math.ceil(shape[1] / chunk) * math.ceil(shape[2] / chunk)


def _create_array(
    group: zarr.Group,
    path: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    chunk: int,
    compressor: Any,
    fill_value: float,
    ngff: NgffVersion,
) -> zarr.Array:
    chunks = (shape[0], min(chunk, shape[1]), min(chunk, shape[2]))
    kwargs: dict[str, Any] = {}
    if ngff == "0.4":
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = ("c", "y", "x")
    return group.create_array(
        path,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        compressors=compressor,
        fill_value=fill_value,
        config={"write_empty_chunks": True},  # readers other than zarr-python may need them
        **kwargs,
    )


def _halved(previous: zarr.Array, chunk: int) -> da.Array:
    """The previous written level, 2 x 2 mean, chunked ``(c, chunk, chunk)``."""
    c = previous.shape[0]
    src = da.from_zarr(previous, chunks=(c, 2 * chunk, 2 * chunk))
    out_chunks = (src.chunks[0], *(tuple(math.ceil(n / 2) for n in ax) for ax in src.chunks[1:]))
    return src.map_blocks(_halve_block, chunks=out_chunks, dtype=src.dtype)


def _halve_block(block: np.ndarray) -> np.ndarray:
    """2 x 2 mean of a (c, y, x) block; an odd last row/column is averaged with itself."""
    c, h, w = block.shape
    if h % 2 or w % 2:
        block = np.pad(block, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    quads = block.reshape(c, block.shape[1] // 2, 2, block.shape[2] // 2, 2)
    if np.issubdtype(block.dtype, np.integer):
        total = quads.sum(axis=(2, 4), dtype=np.int64)
        return ((total + 2) // 4).astype(block.dtype)
    valid = ~np.isnan(quads)  # NaN is "no data": average the rest, all-NaN stays NaN
    total = np.where(valid, quads, 0).sum(axis=(2, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / valid.sum(axis=(2, 4))).astype(block.dtype)


def _write_block(
    block: np.ndarray, target: zarr.Array, block_info: dict[Any, Any] | None = None
) -> np.ndarray:
    assert block_info is not None
    location = block_info[0]["array-location"]
    target[tuple(slice(start, stop) for start, stop in location)] = block
    return np.ones((1, 1, 1), dtype=np.uint8)


class _WriteProgress(Callback):
    """Counts this call's chunk-write tasks (named ``<unique prefix>-<level>``), all levels."""

    def __init__(self, total: int, report: Progress | None) -> None:
        super().__init__()
        self.total, self.done, self.report = total, 0, report
        self.prefix = f"{_WRITE_TASK}-{uuid.uuid4().hex}"

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and name.startswith(self.prefix):
            self.done += 1
            if self.report is not None:
                self.report(self.done, self.total)


@contextlib.contextmanager
def _scheduler(scheduler: str, workers: int) -> Iterator[dict[str, Any]]:
    """Keyword arguments for ``dask.compute``; our own thread pool for ``"threads"``.

    Leaving the block waits for the pool's threads, so after a failed task no other task
    is still writing when the temporary directory is removed.
    """
    if scheduler != "threads":
        yield {"scheduler": scheduler, "num_workers": workers}
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        yield {"scheduler": "threads", "pool": pool}


def _store_level(
    source: da.Array, target: zarr.Array, counter: _WriteProgress, run: dict[str, Any]
) -> None:
    """Write ``source`` into ``target`` one chunk per task; chunks must match the target's."""
    written = da.map_blocks(
        _write_block,
        source,
        target=target,
        chunks=tuple((1,) * len(axis) for axis in source.chunks),
        dtype=np.uint8,
        name=f"{counter.prefix}-{target.basename}",
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )
    with counter:
        dask.compute(written, **run)


# -- metadata ----------------------------------------------------------------------------
def _omero(
    channels: int,
    dtype: np.dtype[Any],
    names: Sequence[str] | None,
    colours: Sequence[str] | None,
    window: tuple[float, float] | None,
) -> dict[str, Any]:
    rgb = channels == 3 and dtype == np.uint8
    if names is None:
        names = [n for n, _ in RGB_CHANNELS] if rgb else [f"channel {i}" for i in range(channels)]
    if colours is None:
        palette = [c for _, c in RGB_CHANNELS] if channels > 1 else ["FFFFFF"]
        colours = [palette[i % len(palette)] for i in range(channels)]
    if len(names) != channels or len(colours) != channels:
        raise ParameterError(
            f"need {channels} channel names and {channels} colours, one per channel; "
            f"got {len(names)} and {len(colours)}"
        )
    if window is None:
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        window = (float(info.min), float(info.max)) if info is not None else (0.0, 1.0)
    lo, hi = window
    win = {"min": lo, "max": hi, "start": lo, "end": hi}
    return {
        "channels": [
            {"label": n, "color": c.lstrip("#").upper(), "window": win, "active": True}
            | {"coefficient": 1.0, "family": "linear", "inverted": False}
            for n, c in zip(names, colours, strict=True)
        ],
        "rdefs": {"model": "color" if channels > 1 else "greyscale", "defaultZ": 0, "defaultT": 0},
    }


def _image_attrs(
    name: str,
    scales: Sequence[tuple[float, float]],
    ngff: NgffVersion,
    unit: str | None,
    omero: dict[str, Any] | None,
    extra: Mapping[str, Any],
    method: dict[str, Any] | None = None,
) -> dict[str, Any]:
    space = {"type": "space"} | ({"unit": unit} if unit else {})
    multiscale: dict[str, Any] = {
        "name": name,
        "axes": [{"name": "c", "type": "channel"}, {"name": "y"} | space, {"name": "x"} | space],
        "datasets": [
            {
                "path": str(i),
                "coordinateTransformations": [{"type": "scale", "scale": [1.0, sy, sx]}],
            }
            for i, (sy, sx) in enumerate(scales)
        ],
    }
    if method is not None:
        multiscale["metadata"] = method
    ome: dict[str, Any] = {"multiscales": [multiscale]}
    if omero is not None:
        ome["omero"] = omero
    if ngff == "0.4":
        multiscale["version"] = "0.4"
        return {**ome, **extra}
    return {"ome": {"version": "0.5", **ome}, **extra}


def _write_associated(
    root: zarr.Group, name: str, pixels: np.ndarray, ngff: NgffVersion, compressor: Any
) -> None:
    """``associated/<name>``: a one-level image whose scale is 1 px (no physical unit)."""
    if pixels.ndim != 3:
        raise ParameterError(
            f"associated image {name!r} must be (c, y, x), got shape {pixels.shape}"
        )
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "image"
    parent = root.require_group("associated")
    listed = parent.attrs.get("wsi_ai_associated_images")
    parent.attrs["wsi_ai_associated_images"] = [*(listed if isinstance(listed, list) else []), safe]
    group = parent.create_group(safe)
    size = max(pixels.shape[1:])
    array = _create_array(group, "0", pixels.shape, pixels.dtype, size, compressor, 0, ngff)
    array[...] = pixels
    omero = _omero(pixels.shape[0], pixels.dtype, None, None, None)
    note = {"wsi_ai": {"associated_image": name, "scale_unit": "pixel"}}
    group.attrs.update(_image_attrs(name, [(1.0, 1.0)], ngff, None, omero, note))
