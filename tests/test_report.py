"""The review reports as text: ``report.html`` per slide, ``summary.html`` per batch, and
their triage.

The pages of the two OUT folders of :mod:`tests.report_fixtures` (a real he-density run and a
synthetic MIL-like one) are checked as text: no path, no scanner property, every image
inlined, the region table as long as the GeoJSON. The same pages in a real headless Chromium
are the subject of ``tests/test_report_browser.py``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import openslide
import pytest
from PIL import Image

from tests.report_fixtures import SYNTHETIC, Out, demo_out, synthetic_out
from wsi_ai.report import triage_order, write_cohort_report, write_slide_report
from wsi_ai.report.slide import CROP_SIZE, MAX_REGIONS
from wsi_ai.slide import open_slide

# -- reading a page back -----------------------------------------------------------------------


class Page(HTMLParser):
    """What the tests look at in a report: images, scripts, links and table body rows."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.images: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.csp = ""
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._body = False
        self._row: list[str] | None = None
        self._cell = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "meta" and a.get("http-equiv") == "Content-Security-Policy":
            self.csp = a.get("content") or ""
        elif tag == "script":
            self.scripts.append(a)
        elif tag == "a":
            self.links.append(a.get("href") or "")
        elif tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body and self._table is not None:
            self._row = []
            self.tables[self._table].append(self._row)
        elif tag == "td" and self._row is not None:
            self._row.append("")
            self._cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = False
        elif tag == "tbody":
            self._body = False
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell and self._row is not None:
            self._row[-1] += data


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def decode_image(uri: str) -> Image.Image:
    head, data = uri.split(",", 1)
    assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


# -- the two OUT folders ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Out:
    return demo_out(tmp_path_factory)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Out:
    return synthetic_out(tmp_path_factory)


# -- the slide report -------------------------------------------------------------------------

# openslide properties that describe the image geometry, which the report shows on purpose
_GEOMETRY = ("openslide.mpp-", "openslide.level", "openslide.objective-power", "openslide.assoc")


def scanner_strings(path: Path) -> set[str]:
    """Every scanner property value (and vendor field name) a report must not copy."""
    properties: dict[str, str] = {}
    # tiffslide's files (OpenSlide refuses them): their properties come from wsi-ai's Slide
    with contextlib.suppress(openslide.OpenSlideError):
        properties.update(openslide.OpenSlide(str(path)).properties)
    with open_slide(path) as slide:
        properties.update(slide.properties)
    forbidden = set()
    for key, value in properties.items():
        if key.startswith(_GEOMETRY):
            continue
        value = str(value).strip()
        if len(value) > 4 and value not in path.name:  # the file name is shown on purpose
            forbidden.add(value)
        vendor, _, field = key.partition(".")
        if vendor not in ("openslide", "tiff", "tiffslide") and len(field) > 4:
            forbidden.add(field)  # "ScanScope ID", "AppMag", "ImageID", ...
    return forbidden


def test_slide_report_shows_no_path_and_no_scanner_property(demo: Out) -> None:
    for name, report in demo.reports.items():
        text = report.read_text(encoding="utf-8")
        path = Path(demo.records[name]["slide"]["path"])
        assert name in text
        for secret in (str(path), str(path.resolve()), str(path.parent), str(demo.out)):
            assert secret not in text, f"{name}: report shows the path {secret}"
        leaked = sorted(s for s in scanner_strings(path) if s in text)
        assert not leaked, f"{name}: report copies scanner properties {leaked}"
    cmu = demo.reports["CMU-1-Small-Region.svs"].read_text(encoding="utf-8")
    for known in (
        "aperio",
        "CPAPERIOCS",
        "12/29/09",
        "09:59:15",
        "b414003d",
        "AppMag",
        "ScanScope",
    ):
        assert known.lower() not in cmu.lower()


def test_slide_report_is_self_contained_and_small(demo: Out, synthetic: Out) -> None:
    for report in [*demo.reports.values(), *synthetic.reports.values()]:
        page = read_page(report)
        assert page.images and all(src.startswith("data:image/") for src in page.images)
        assert page.scripts == [], "report.html runs no script"
        assert "http:" not in page.text and "https:" not in page.text
        assert page.csp.startswith("default-src 'none'; img-src data:;")  # nothing is fetched
        assert "script-src 'none'" in page.csp
        assert all(link == "../../summary.html" for link in page.links), page.links
        assert report.stat().st_size < 1_500_000
        sizes = [decode_image(src).size for src in page.images]
        assert all(max(size) <= 1024 for size in sizes)
        crops = [decode_image(src).size for src in page.images[2:]]  # after the two overviews
        assert crops and all(max(size) <= CROP_SIZE for size in crops)


def test_region_table_has_a_row_per_region(demo: Out, synthetic: Out) -> None:
    for out in (demo, synthetic):
        for name, report in out.reports.items():
            doc = json.loads((out.out / "slides" / name / "regions.geojson").read_text())
            rows = read_page(report).tables["regions"]
            assert len(rows) == min(MAX_REGIONS, len(doc["features"])) > 0
            best = max(f["properties"]["measurements"]["Max score"] for f in doc["features"])
            max_scores = [float(r[5]) for r in rows]
            assert max_scores == sorted(max_scores, reverse=True)
            assert max_scores[0] == pytest.approx(best, abs=5e-4)
    assert len(read_page(synthetic.reports[SYNTHETIC]).tables["regions"]) == MAX_REGIONS < 25


def test_random_init_prediction_qc_and_provenance_are_shown(demo: Out, synthetic: Out) -> None:
    text = synthetic.reports[SYNTHETIC].read_text(encoding="utf-8")
    assert "RANDOM-INIT" in text and 'class="banner danger"' in text
    for shown in ("tumour", "0.812", "0.703", "Calibrated confidence", "1.700"):
        assert shown in text
    assert "Blurred fraction" in text and "0.410" in text and "FLAG" in text
    assert "Stain vector: hematoxylin" in text and "[0.650, 0.700, 0.290]" in text
    assert "c" * 64 in text and "a" * 64 in text and "tiny-test" in text
    assert "none (random init)" in text
    assert "this prediction is meaningless" in text
    assert "/secret/folder" not in text and "had no tissue" in text  # warnings lose paths
    record = demo.records["CMU-1-Small-Region.svs"]
    real = demo.reports["CMU-1-Small-Region.svs"].read_text(encoding="utf-8")
    assert "RANDOM-INIT" not in real
    assert record["identity"]["pipeline"] in real and record["finished"] in real


def test_slide_report_refuses_another_slide(demo: Out, skin_striped: Path) -> None:
    record = demo.records["CMU-1-Small-Region.svs"]
    folder = demo.out / "slides" / "CMU-1-Small-Region.svs"
    with open_slide(skin_striped) as other, pytest.raises(ValueError, match="open the slide"):
        write_slide_report(folder, record, other)


# -- triage and the cohort report ------------------------------------------------------------


def _r(name: str, status: str = "done", **values: Any) -> dict[str, Any]:
    return {"slide": name, "status": status, **values}


def _p(name: str, label: str, probability: Any, confidence: Any = 0.5) -> dict[str, Any]:
    return _r(name, **{"class": label, "probability": probability, "confidence": confidence})


@pytest.mark.parametrize(
    ("rows", "expected", "negatives"),
    [
        pytest.param(
            [
                _p("n95", "normal", 0.95),
                _p("t60", "tumour", 0.6),
                _p("n55", "normal", 0.55),
                _p("t90", "tumour", 0.9),
            ],
            ["t90", "t60", "n55", "n95"],
            None,
            id="positive-probability-then-one-minus-negative",
        ),
        pytest.param(
            [
                _p("benign", "Benign", 0.8),
                _p("malignant", "malignant", 0.3),
                _p("neg", "NEGATIVE", 0.1),
            ],
            ["neg", "malignant", "benign"],
            None,
            id="negative-classes-case-insensitive",
        ),
        pytest.param(
            [_p("benign", "benign", 0.9), _p("tumour", "tumour", 0.8)],
            ["benign", "tumour"],
            ("normal",),
            id="configurable-negative-classes",
        ),
        pytest.param(
            [
                _p("sure", "tumour", 0.8, 0.9),
                _p("b-unsure", "tumour", 0.8, 0.6),
                _p("a-unsure", "tumour", "0.8", "0.6"),
                _p("no-conf", "tumour", 0.8, ""),
            ],
            ["a-unsure", "b-unsure", "sure", "no-conf"],
            None,
            id="ties-lower-confidence-then-name",
        ),
        pytest.param(
            [
                _p("t", "tumour", 0.2),
                _r("z-failed", "failed", error="x"),
                _r("a-failed", "failed", error="y"),
                _r("heat", regions=9),
            ],
            ["a-failed", "z-failed", "t", "heat"],
            None,
            id="failed-first-then-predictions-then-maps",
        ),
        pytest.param(
            [
                _r("r3a1", regions=3, tissue_area_mm2=1.0),
                _r("none", regions="", tissue_area_mm2=""),
                _r("r5", regions="5", tissue_area_mm2="0.1"),
                _r("r3a2", "skipped", regions=3, tissue_area_mm2=2.0),
            ],
            ["r5", "r3a2", "r3a1", "none"],
            None,
            id="no-prediction-regions-then-area",
        ),
        pytest.param(
            [_p("nan", "tumour", "nan"), _p("blank", "", ""), _p("ok", "tumour", 0.1)],
            ["ok", "blank", "nan"],
            None,
            id="unusable-predictions-rank-as-maps",
        ),
    ],
)
def test_triage_order(
    rows: list[dict[str, Any]], expected: list[str], negatives: tuple[str, ...] | None
) -> None:
    ordered = triage_order(rows) if negatives is None else triage_order(rows, negatives)
    assert [r["slide"] for r in ordered] == expected
    assert triage_order(list(reversed(rows)), negatives or ("normal", "benign", "negative")) == (
        ordered
    )


def test_cohort_report(demo: Out, synthetic: Out) -> None:
    page = read_page(demo.summary)
    assert len(page.tables["slides"]) == len(demo.rows)
    for link in page.links:
        assert not link.startswith(("/", "file:")) and (demo.out / link).is_file()
    assert sorted(page.links) == sorted(f"slides/{name}/report.html" for name in demo.reports)
    for record in demo.records.values():
        assert str(Path(record["slide"]["path"]).parent) not in page.text
    assert [s.get("src") for s in page.scripts] == [None]  # one inline script

    mixed = read_page(synthetic.summary)
    assert mixed.tables["failed"] == [["e.svs", "e.svs: no such file; check the path"]]
    assert "/lab/secret" not in mixed.text
    ranked = [row[1].split(" ")[0] for row in mixed.tables["slides"]]
    assert ranked == ["c.svs", SYNTHETIC, "b.svs", "d.svs"]
    assert mixed.links == [f"slides/{SYNTHETIC}/report.html"]
    assert "RANDOM-INIT" in mixed.text and "pen_fraction" in mixed.text
    flags = {row[1].split(" ")[0]: row[-2] for row in mixed.tables["slides"]}
    assert flags["d.svs"] == "pen_fractionbubble_fraction"
    assert flags[SYNTHETIC] == "blur_fraction"  # read from its slide.json


def test_cohort_report_escapes_names_and_quotes_links(tmp_path: Path) -> None:
    odd = 'a b#1 <i>&"x".svs'
    (tmp_path / "slides" / odd).mkdir(parents=True)
    (tmp_path / "slides" / odd / "report.html").write_text("<!DOCTYPE html>")
    rows: list[dict[str, Any]] = [{"slide": odd, "status": "done", "regions": 2}]
    rows.append({"slide": "<b>.svs", "status": "done"})
    page = read_page(write_cohort_report(tmp_path, rows))
    assert page.links == ["slides/a%20b%231%20%3Ci%3E%26%22x%22.svs/report.html"]
    assert "<i>" not in page.text and "<b>.svs" not in page.text
    assert [row[1].split(" (")[0] for row in page.tables["slides"]] == [odd, "<b>.svs"]
