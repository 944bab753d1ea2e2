"""A copy of a slide that identifies no one: ``wsi-ai anonymize``.

For an Aperio SVS or a generic TIFF, :func:`anonymize_slide` writes a new TIFF holding only
the slide's image pages and the tags that describe their pixels:

- the label and macro images are left out (SVS: the pages whose ImageDescription names them,
  as OpenSlide finds them; generic TIFF: a page whose ImageDescription or PageName says
  ``label`` or ``macro``); the pyramid levels and the SVS thumbnail are kept, in order;
- every tile or strip is copied as the compressed bytes it is in the source (with its
  JPEGTables, predictor, chroma subsampling and colour space), never decoded or re-encoded,
  so levels and pixels are identical to the source's, whatever the codec (JPEG, JPEG 2000,
  LZW, Deflate...);
- of the tags, only the image structure is written, plus the resolution and the ICC
  profile: DateTime, Artist, HostComputer, DocumentName, PageName, Software, Make, Model,
  Copyright, XMP, EXIF and every private tag are not copied. Aperio's ImageDescription is
  kept (OpenSlide needs it) without its identifying fields (:func:`is_identifying`:
  Filename, Date, Time, User, barcode, ScanScope ID, ImageID...); a generic TIFF's free-text
  ImageDescription is not copied at all;
- nothing else of the source file is copied (no free space, no unlinked pages), so data a
  scanner left outside the pages cannot travel either.

The copy is written under a temporary name, reopened with :func:`~wsi_ai.slide.open_slide`
and compared with the source (levels, associated images) before it takes its name. Other
formats (NDPI, OME-TIFF, MRXS, DICOM...) are refused with one line. Not checked: metadata
inside the compressed tiles themselves (JPEG comment segments), which scanners do not write.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tifffile

from wsi_ai.errors import SlideNotFoundError, SlideReadError, UnsupportedSlideError
from wsi_ai.outputs import atomic_output

__all__ = [
    "IDENTIFYING_WORDS",
    "AnonymizeReport",
    "anonymize_slide",
    "is_identifying",
    "scrub_aperio_description",
]

SUPPORTED = "anonymize copies Aperio SVS and generic TIFF slides only"
# Words of an Aperio ImageDescription key (``key = value``; CamelCase split) that make it
# name a person, a place, a date, a file or a record: the field is dropped. Technical fields
# (MPP, AppMag, StripeWidth, ICC Profile...) are kept.
IDENTIFYING_WORDS = frozenset({
    "file", "filename", "date", "time", "user", "username", "barcode", "scanscope", "scanner",
    "id", "dsr", "rack", "slide", "title", "patient", "accession", "case", "specimen",
    "operator", "comment", "label", "macro", "name", "institution", "serial",
})  # fmt: skip
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
# tifffile's file flags a slide may have and still be copied as a generic TIFF.
_GENERIC_FLAGS = {"shaped", "uniform", "multipage"}
_FORMATS = {
    "ome": "an OME-TIFF",
    "ndpi": "a Hamamatsu NDPI file",
    "scn": "a Leica SCN file",
    "philips": "a Philips TIFF",
    "bif": "a Ventana BIF file",
    "qpi": "a PerkinElmer QPTIFF",
    "subifd": "a TIFF with its pyramid in SubIFDs",
}
_ASSOCIATED = re.compile(r"\b(label|macro)\b", re.IGNORECASE)
_JPEG = 7
_REFERENCE_BLACK_WHITE = 532
_ICC_PROFILE = 34675
# Tags the copy writes from the page's own attributes (structure, resolution, ICC profile),
# or leaves out as mere structure (Aperio's ImageDepth); every other tag of a kept page is
# reported as removed.
_WRITTEN = {
    254, 256, 257, 258, 259, 262, 270, 273, 277, 278, 279, 282, 283, 284, 296, 317, 322, 323,
    324, 325, 338, 339, 347, 530, 532, 34675, 32997,
}  # fmt: skip


@dataclass(frozen=True)
class AnonymizeReport:
    """What :func:`anonymize_slide` wrote and what it left out."""

    source: Path
    out: Path
    format: str  # "svs" or "generic-tiff"
    pages: int  # image pages copied (levels, and an SVS's thumbnail)
    copied_segments: int  # compressed tiles and strips copied byte for byte
    dropped_images: tuple[str, ...]  # "label", "macro"
    removed: tuple[str, ...]  # properties not copied: "aperio.Filename", "tiff.DateTime"...


def anonymize_slide(
    source: str | Path, out: str | Path, overwrite: bool = False
) -> AnonymizeReport:
    """Write an anonymized copy of the SVS or generic TIFF ``source`` to ``out``.

    Raises :class:`~wsi_ai.errors.UnsupportedSlideError` for another format,
    :class:`~wsi_ai.errors.OutputExistsError` when ``out`` exists without ``overwrite``,
    and :class:`~wsi_ai.errors.SlideReadError` when the copy does not reopen as the same
    slide (nothing is written then).
    """
    src, out = Path(source), Path(out)
    if not src.is_file():
        raise SlideNotFoundError("no such file; check the path", src)
    try:
        tif = tifffile.TiffFile(src)
    except OSError as err:
        raise UnsupportedSlideError(f"cannot read the file ({err.strerror or err})", src) from err
    except (tifffile.TiffFileError, ValueError) as err:  # its text may quote the file's bytes
        raise UnsupportedSlideError(f"cannot anonymize: not a TIFF file; {SUPPORTED}", src) from err
    with tif:
        kind = _format(tif, src)
        kept, dropped = _select_pages(tif, kind, src)
        removed: set[str] = set()
        segments = 0
        with atomic_output(out, overwrite) as tmp:
            bigtiff = _needs_bigtiff(tif)
            with tifffile.TiffWriter(tmp, bigtiff=bigtiff, byteorder=tif.byteorder) as writer:
                for page in kept:
                    segments += _copy_page(writer, tif, page, kind, removed)
            _check_copy(src, tmp, dropped)
    return AnonymizeReport(
        source=src,
        out=out,
        format=kind,
        pages=len(kept),
        copied_segments=segments,
        dropped_images=tuple(dropped),
        removed=tuple(sorted(removed)),
    )


def _format(tif: tifffile.TiffFile, src: Path) -> str:
    flags = set(tif.flags)
    if tif.is_svs and not flags - {"svs", *_GENERIC_FLAGS}:
        return "svs"
    other = sorted(flags - _GENERIC_FLAGS)
    if other:
        name = _FORMATS.get(other[0], f"a {other[0]} TIFF")
        raise UnsupportedSlideError(f"cannot anonymize: the file is {name}; {SUPPORTED}", src)
    return "generic-tiff"


def _select_pages(
    tif: tifffile.TiffFile, kind: str, src: Path
) -> tuple[list[tifffile.TiffPage], list[str]]:
    """The pages to copy, in order, and the names of the associated images left out."""
    kept: list[tifffile.TiffPage] = []
    dropped: list[str] = []
    for page in tif.pages:
        assert isinstance(page, tifffile.TiffPage)
        if page.subifds:
            raise UnsupportedSlideError(
                f"cannot anonymize: the file is {_FORMATS['subifd']}; {SUPPORTED}", src
            )
        name = _associated_name(page, kind)
        if name is None:
            kept.append(page)
        else:
            dropped.append(name)
    if not kept:
        raise UnsupportedSlideError(f"cannot anonymize: no image pages to copy; {SUPPORTED}", src)
    return kept, dropped


def _associated_name(page: tifffile.TiffPage, kind: str) -> str | None:
    """``label`` or ``macro`` when the page is one of those images, else None."""
    if kind == "svs":  # as OpenSlide's Aperio reader: the description's second line
        lines = page.description.splitlines()
        words = lines[1].split() if len(lines) > 1 else []
        return words[0] if words and words[0] in ("label", "macro") else None
    if page.is_tiled and page.index == 0:
        return None
    text = f"{page.description} {_tag(page, 285) or ''}"
    match = _ASSOCIATED.search(text)
    return match.group(1).lower() if match else None


def is_identifying(key: str) -> bool:
    """Whether an Aperio field name names who or what was scanned, where or when
    (``Filename``, ``ScanScope ID``, ``ImageID``, ``Time Zone``...)."""
    words = re.split(r"[^a-z0-9]+", _CAMEL.sub(" ", key).lower())
    return not IDENTIFYING_WORDS.isdisjoint(words)


def scrub_aperio_description(description: str) -> tuple[str, list[str]]:
    """An Aperio ImageDescription without its identifying ``key = value`` fields.

    Returns the description (its first field, the image summary, unchanged) and the keys
    removed.
    """
    head, *fields = description.split("|")
    kept, removed = [head], []
    for field in fields:
        key = field.split("=", 1)[0].strip()
        if is_identifying(key):
            removed.append(key)
        else:
            kept.append(field)
    return "|".join(kept), removed


def _tag(page: tifffile.TiffPage, code: int) -> Any:
    tag = page.tags.get(code)
    return None if tag is None else tag.value


def _needs_bigtiff(tif: tifffile.TiffFile) -> bool:
    size = tif.filehandle.size
    return bool(tif.is_bigtiff) or size > 2**32 - 2**28  # room for the new IFDs


def _segments(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> Iterator[bytes]:
    """The page's compressed tiles or strips, in order, as stored."""
    fh = tif.filehandle
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        if count == 0:
            yield b""
            continue
        fh.seek(offset)
        data = fh.read(count)
        if len(data) != count:
            raise SlideReadError(
                f"page {page.index} ends early (the file is truncated); copy it again from "
                "the scanner before anonymizing",
                tif.filehandle.path,
            )
        yield data


def _copy_page(
    writer: tifffile.TiffWriter,
    tif: tifffile.TiffFile,
    page: tifffile.TiffPage,
    kind: str,
    removed: set[str],
) -> int:
    """Write ``page`` as its compressed segments with the tags that describe them."""
    description: bytes | None = None
    if kind == "svs":
        text, keys = scrub_aperio_description(page.description)
        description = text.encode("utf-8")  # as read (tifffile decodes it as UTF-8)
        removed.update(f"aperio.{k}" for k in keys)
    elif page.description:
        removed.add("tiff.ImageDescription")
    removed.update(f"tiff.{t.name}" for t in page.tags if t.code not in _WRITTEN)
    photometric = page.photometric
    options: dict[str, Any] = {}
    extratags = []
    if page.compression == _JPEG and page.planarconfig == 1 and photometric in (2, 6):
        # tifffile would re-label RGB JPEG as YCbCr: keep the source's colour space
        options["subsampling"] = page.subsampling or (1, 1)
        options["compressionargs"] = {"outcolorspace": photometric}
        black_white = page.tags.get(_REFERENCE_BLACK_WHITE)
        if black_white is not None:
            extratags.append((532, 5, 6, black_white.value, True))
    xres, yres = _tag(page, 282), _tag(page, 283)
    resolution = None if xres is None or yres is None else (xres, yres)
    unit = _tag(page, 296)
    tile = (page.tilelength, page.tilewidth) if page.is_tiled else None
    count = len(page.dataoffsets)
    writer.write(
        _segments(tif, page),
        shape=page.shape,
        dtype=page.dtype,
        photometric=photometric,
        planarconfig=page.planarconfig,
        extrasamples=page.extrasamples or None,
        tile=tile,
        rowsperstrip=None if tile else page.rowsperstrip,
        bitspersample=page.bitspersample,
        compression=page.compression,
        predictor=page.predictor if page.predictor > 1 else None,
        jpegtables=page.jpegtables,
        iccprofile=_tag(page, _ICC_PROFILE),
        description=description,
        resolution=resolution,
        resolutionunit=unit if resolution is not None else None,
        subfiletype=page.subfiletype,
        software=False,
        datetime=None,
        metadata=None,
        extratags=extratags,
        **options,
    )
    return count


def _check_copy(src: Path, copy: Path, dropped: list[str]) -> None:
    """The copy must open as the source does, with the same levels, minus the dropped images."""
    from wsi_ai.slide import open_slide

    with open_slide(src) as a, open_slide(copy, backend=a.backend) as b:
        expected = tuple(n for n in a.associated_image_names if n not in dropped)
        if (b.level_dimensions, b.associated_image_names) != (a.level_dimensions, expected):
            raise SlideReadError(
                f"the anonymized copy does not reopen as the same slide (levels "
                f"{b.level_dimensions} vs {a.level_dimensions}); nothing was written",
                src,
            )
