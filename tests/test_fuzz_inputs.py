"""Hostile input, fuzzed: pipeline files, manifests, patch tables and damaged slides either give
a result or raise a :class:`~wsi_ai.errors.WsiAiError` (one line naming the file), never another
exception, and never hang.

* pipeline TOML: random tables, keys, values (huge integers, NaN, dates, NUL, ``~user`` paths)
  and ``--set`` overrides through :func:`parse_pipeline`; the shipped pipeline files with text
  cut, inserted or nested deep through :func:`load_pipeline`;
* manifest CSVs (:func:`collect_inputs`): random headers, ragged rows, quotes, odd values, bytes;
* patch tables (:func:`read_table`): random CSV text with random sidecar text;
* slides (:func:`open_slide`): copies of the bundled SVS and striped TIFF with bytes flipped in
  the TIFF header, the IFDs, the offset and byte-count arrays, and the tile data; then a few
  regions, the thumbnail and a chunk of the lazy Zarr pyramid are read.

Hypothesis runs a fixed number of examples, derandomised (the same examples on every run, no
example database), each under a deadline; pytest-timeout stops a hung case.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tomllib
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsi_ai.errors import SlideReadError, UnsupportedSlideError, WsiAiError
from wsi_ai.inputs import collect_inputs
from wsi_ai.pipeline_config import SECTIONS, load_pipeline, parse_pipeline
from wsi_ai.slide import Slide, open_slide
from wsi_ai.store import read_table
from wsi_ai.store.table import REQUIRED, TABLE_HASH

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "wsi_ai" / "data"
PIPELINES = sorted((REPO / "pipelines").glob("*.toml"))


def fuzz(examples: int, seconds: float) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=timedelta(seconds=seconds),  # per example: a hang fails it
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


_COUNTER = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fresh(folder: Path, name: str) -> Path:
    """A new path per example (no reader caches a previous example's file)."""
    path = folder / str(next(_COUNTER)) / name
    path.parent.mkdir()
    return path


def ours_or_nothing(call: Callable[[], Any], path: Path | None) -> Any:
    """``call()``'s result, or ``None`` when it raised a WsiAiError: one line, naming ``path``."""
    try:
        return call()
    except WsiAiError as err:
        assert "\n" not in str(err), f"not one line: {err!r}"
        if path is not None:
            assert err.path == path, f"does not name {path.name}: {err!r}"
        return None


# ---- values that break parsers ---------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    ["", " ", "~nosuchuser/card.toml", "a\x00b.toml", "../x.toml", "/", "\n", "é", "otsu", "he"]
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(
    st.booleans(),
    NUMBERS,
    st.sampled_from([math.nan, math.inf, 10**400, -1, 0]),
    st.text(max_size=12),
    ODD_TEXT,
    st.datetimes(),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
TOML_VALUES = st.one_of(
    st.sampled_from(["1", "0", "-1", "0.5", "true", "'x'", '"otsu"', "[1, 2]", '["a"]', "{a = 1}"]),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "9" * 400, "1979-05-27", "'a\\u0000b'"]),
    st.sampled_from(["~nosuchuser/c.toml", "[[[[", "", "=", '"', "gaussian"]),
    st.text(max_size=12),
)


HOSTILE = st.one_of(
    st.sampled_from([10**400, 2**64, -(2**63), math.nan, math.inf, -math.inf, -1, 0, 1.5, True]),
    st.sampled_from(["", "~nosuchuser/c.toml", "a\x00b.toml", "rel/dir", "x" * 300]),
    st.sampled_from([date(1979, 5, 27), [], {}, [1, "a"]]),
)


PATHS = st.sampled_from(
    ["~nosuchuser/c.toml", "~/c.toml", "a\x00b.toml", "rel/dir", "/", ".", "..", "c.toml"]
)


def field_names(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def section_tables(section: str) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(field_names(section)) | st.text(max_size=8)
    return st.dictionaries(keys, VALUES, max_size=4)


def with_edits(base: dict[str, Any], edits: list[tuple[str, str, Any]]) -> dict[str, Any]:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, key, value in edits:
        if isinstance(data.get(section), dict):
            data[section][key] = value
        else:
            data[section] = {key: value} if key else value
    return data


# a shipped pipeline with one to three of its settings replaced by hostile values
EDITED_PIPELINES = st.builds(
    with_edits,
    st.sampled_from([tomllib.loads(p.read_text()) for p in PIPELINES]),
    st.lists(
        st.sampled_from(list(SECTIONS)).flatmap(
            lambda s: st.tuples(st.just(s), st.sampled_from(field_names(s)), HOSTILE | VALUES)
        )
        | st.sampled_from([("model", "card"), ("model", "weights"), ("aggregator", "run")])
        .map(list)
        .flatmap(lambda sk: st.tuples(st.just(sk[0]), st.just(sk[1]), PATHS))
        | st.tuples(st.sampled_from(["name", "description", "x"]), st.just(""), VALUES),
        min_size=1,
        max_size=3,
    ),
)
RANDOM_PIPELINES = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=8) | VALUES,
        "description": st.text(max_size=8) | VALUES,
        **{s: section_tables(s) | VALUES for s in SECTIONS},
        "extra": VALUES,
    },
)
OVERRIDES = st.lists(
    st.sampled_from(list(SECTIONS)).flatmap(
        lambda s: st.builds(
            "{}.{}={}".format, st.just(s), st.sampled_from(field_names(s)), TOML_VALUES
        )
    )
    | st.text(max_size=12),
    max_size=3,
)


def check_pipeline(pipeline: Any) -> None:
    if pipeline is not None:
        assert len(pipeline.config_hash()) == 64
        json.dumps(pipeline.settings())


@fuzz(400, 2)
@given(data=EDITED_PIPELINES | RANDOM_PIPELINES, overrides=OVERRIDES)
def test_pipeline_tables_and_overrides(
    data: dict[str, Any], overrides: list[str], folder: Path
) -> None:
    where = folder / "fuzz.toml"
    try:
        pipeline = parse_pipeline(data, str(where), folder, overrides)
    except WsiAiError as err:
        assert "\n" not in str(err), f"not one line: {err!r}"
        assert err.path in (where, None)  # None: an override, from the command line
        return
    check_pipeline(pipeline)


EDITS = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["[", "]", "=", '"', "'''", "\x00", "\n[grid]\n", "\nname = 1\n", "\\u"]),
    st.builds(lambda n: "a = " + "[" * n + "]" * n + "\n", st.sampled_from([2, 900, 5000])),
    st.builds(lambda n: "a = " + "{b = " * n + "1" + "}" * n + "\n", st.sampled_from([2, 3000])),
)


@fuzz(150, 2)
@given(
    source=st.sampled_from(PIPELINES),
    cuts=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 40), EDITS), max_size=3),
    raw=st.binary(max_size=8),
)
def test_pipeline_files_cut_and_spliced(
    source: Path, cuts: list[tuple[int, int, str]], raw: bytes, folder: Path
) -> None:
    text = source.read_text()
    for start, length, insert in cuts:
        start = min(start, len(text))
        text = text[:start] + insert + text[start + length :]
    path = fresh(folder, "pipeline.toml")
    path.write_bytes(text.encode("utf-8", "surrogatepass") + raw)
    check_pipeline(ours_or_nothing(lambda: load_pipeline(path), path))


# ---- manifest CSVs ---------------------------------------------------------------------------

CELLS = st.one_of(
    st.sampled_from(["a.svs", "slides/b.svs", "/abs/c.svs", "~nosuchuser/d.svs", "e\x00.svs"]),
    st.sampled_from(["", " ", "0.25", "-1", "0", "nan", "inf", "1e400", "x", '"', ",", "\n", "é"]),
    st.text(max_size=8),
)
HEADERS = st.lists(
    st.sampled_from(["path", "label", "slide_mpp", " path ", "\ufeffpath", ""])
    | st.text(max_size=5),
    min_size=1,
    max_size=4,
)


def csv_line(cells: list[str]) -> str:
    quoted = ['"' + c.replace('"', '""') + '"' if set(c) & set(',"\r\n') else c for c in cells]
    return ",".join(quoted)


@fuzz(250, 2)
@given(
    header=HEADERS,
    rows=st.lists(st.lists(CELLS, max_size=6), max_size=5),
    tail=st.binary(max_size=6) | st.just(b""),
)
def test_manifest_csvs(header: list[str], rows: list[list[str]], tail: bytes, folder: Path) -> None:
    path = fresh(folder, "manifest.csv")
    text = "\n".join(csv_line(r) for r in [header, *rows])
    path.write_bytes(text.encode("utf-8", "surrogatepass") + tail)
    found = ours_or_nothing(lambda: collect_inputs([path]), path)
    for item in found or []:
        assert item.path.is_absolute()
        assert item.slide_mpp is None or (math.isfinite(item.slide_mpp) and item.slide_mpp > 0)
        assert all(isinstance(v, str) for v in item.metadata.values())


# ---- patch tables and their sidecars ---------------------------------------------------------

NUMBER_TEXT = st.one_of(
    st.sampled_from(["0", "1", "-1", "224", "1e400", "nan", "inf", "", "x", "True", "9" * 30]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(str),
)
SIDECARS = st.one_of(
    st.none(),  # no sidecar
    st.text(max_size=12),
    st.sampled_from(["{}", "[]", "null", "1", '{"table_sha256": 1}', "[" * 5000, '{"a": '])
    | st.dictionaries(st.text(max_size=6), VALUES, max_size=3).map(
        lambda d: json.dumps(d, default=str)
    ),
    st.just("own"),  # the table's own hash: the reader must then go on to the table
)


@fuzz(250, 2)
@given(
    columns=st.lists(st.sampled_from([*REQUIRED, "level", "score", "x"]) | st.text(max_size=4)),
    rows=st.lists(st.lists(NUMBER_TEXT, max_size=7), max_size=5),
    sidecar=SIDECARS,
    raw=st.binary(max_size=6),
)
def test_patch_tables_and_sidecars(
    columns: list[str], rows: list[list[str]], sidecar: str | None, raw: bytes, folder: Path
) -> None:
    import hashlib

    path = fresh(folder, "grid.csv")
    text = "\n".join(csv_line(r) for r in [columns, *rows])
    path.write_bytes(text.encode("utf-8", "surrogatepass") + raw)
    if sidecar == "own":
        sidecar = json.dumps({TABLE_HASH: hashlib.sha256(path.read_bytes()).hexdigest()})
    if sidecar is not None:
        path.with_name("grid.csv.json").write_text(sidecar, "utf-8", "surrogatepass")
    result = ours_or_nothing(lambda: read_table(path), path)
    if result is not None:
        table, meta = result
        assert isinstance(meta, dict)
        sizes = table[["x", "y", "width", "height"]].to_numpy(np.float64)
        assert np.isfinite(sizes).all() and (sizes[:, 2:] > 0).all()


# ---- damaged slides --------------------------------------------------------------------------

Span = tuple[int, int]  # [start, end) in the file
# Strip/TileOffsets, Strip/TileByteCounts, and the sizes they are read with: ImageWidth,
# ImageLength, RowsPerStrip, TileWidth, TileLength
LAYOUT_TAGS = {273, 279, 324, 325, 256, 257, 278, 322, 323}


def tiff_regions(path: Path) -> dict[str, list[Span]]:
    """Where in ``path`` its TIFF header, IFDs, level 0's offset arrays and sizes, and tile
    data lie."""
    regions: dict[str, list[Span]] = {"header": [(0, 8)], "ifd": [], "offsets": [], "tiles": []}
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            tags = list(page.tags.values())
            regions["ifd"].append((page.offset, page.offset + 2 + 12 * len(tags) + 4))
            for tag in tags:
                if tag.code in LAYOUT_TAGS and page is tif.pages.first:
                    size = tag.count * np.dtype(tif.byteorder + tag.dataformat[-1]).itemsize
                    regions["offsets"].append((tag.valueoffset, tag.valueoffset + size))
        first = tif.pages.first
        regions["tiles"] = [
            (off, off + count)
            for off, count in zip(first.dataoffsets, first.databytecounts, strict=True)
            if count
        ][::7]  # a spread of level 0's tiles (or strips)
    return regions


SLIDES = {"svs": BUNDLED / "CMU-1-Small-Region.svs", "tiff": BUNDLED / "skin-he-striped.tif"}
REGIONS = {name: tiff_regions(path) for name, path in SLIDES.items()}
EXAMPLES = {"svs": 20, "tiff": 50}  # the SVS thumbnail decodes 130 JPEG tiles each time


def read_a_bit(slide: Slide) -> None:
    w, h = slide.dimensions
    for level in sorted({0, slide.level_count - 1}):
        pixels = slide.read_region((0, 0), level, (64, 64))
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    slide.read_region((w // 2, h // 2), 0, (200, 200))
    slide.read_region((w - 100, h - 100), 0, (200, 200))
    thumb = slide.thumbnail(256)
    assert thumb.ndim == 3 and thumb.shape[2] == 3 and max(thumb.shape[:2]) <= 256
    chunk = slide.as_zarr()["0"][:64, :64]
    assert chunk.shape[-1] == 3


def flips(kind: str, region: str) -> st.SearchStrategy[list[tuple[int, int]]]:
    """1-4 (file offset, xor mask) pairs inside ``region`` of slide ``kind``."""
    spans = REGIONS[kind][region]
    offsets = st.sampled_from(spans).flatmap(lambda s: st.integers(s[0], s[1] - 1))
    return st.lists(st.tuples(offsets, st.integers(1, 255)), min_size=1, max_size=4)


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("region", ["header", "ifd", "offsets", "tiles"])
@pytest.mark.parametrize("kind", list(SLIDES))
def test_damaged_slides(kind: str, region: str, folder: Path) -> None:
    original = SLIDES[kind].read_bytes()

    @fuzz(EXAMPLES[kind], 10)
    @given(changes=flips(kind, region))
    def case(changes: list[tuple[int, int]]) -> None:
        data = bytearray(original)
        for offset, mask in changes:
            data[offset] ^= mask
        path = fresh(folder, SLIDES[kind].name)
        path.write_bytes(bytes(data))
        try:
            slide = open_slide(path)
        except WsiAiError as err:  # refused whole: one line naming the file
            assert err.path == path and "\n" not in str(err), repr(err)
            return
        with slide:
            try:
                read_a_bit(slide)
            except SlideReadError as err:  # a damaged tile: a read error naming the file
                assert err.path == path and "\n" not in str(err), repr(err)

    case()


@pytest.mark.timeout(30, method="thread")
@pytest.mark.parametrize("kind", list(SLIDES))
def test_a_size_beyond_the_tiles_held_is_refused_at_open(kind: str, folder: Path) -> None:
    """A header claiming gigapixels over the file's few tiles: refused, not read as blank."""
    data = bytearray(SLIDES[kind].read_bytes())
    with tifffile.TiffFile(SLIDES[kind]) as tif:
        for code in (256, 257):  # ImageWidth, ImageLength
            tag = tif.pages.first.tags[code]
            width = np.dtype(tif.byteorder + tag.dataformat[-1]).itemsize
            data[tag.valueoffset : tag.valueoffset + width] = b"\xff" * width  # the largest
    path = fresh(folder, SLIDES[kind].name)
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedSlideError, match="tiles but the file holds") as err:
        open_slide(path)
    assert err.value.path == path and "\n" not in str(err.value)
