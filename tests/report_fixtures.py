"""The two OUT folders the report tests read, each built once per test session.

``demo_out``: a real OUT from the he-density pipeline on ``pipelines/demo.csv`` (the two
bundled slides), with its reports. ``synthetic_out``: a second OUT that adds what a MIL run and
the QC stage write (a prediction, a random-init model, QC measures and flags, 25 regions, a
failed slide). Both are kept for the session (a pipeline run takes seconds), so
``tests/test_report.py`` and ``tests/test_report_browser.py`` share one run; neither test
module may change them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wsi_ai.batch import run_batch
from wsi_ai.inputs import collect_inputs
from wsi_ai.pipeline_config import load_pipeline
from wsi_ai.report import write_cohort_report, write_slide_report
from wsi_ai.run_records import summary_rows
from wsi_ai.slide import open_slide

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
SYNTHETIC = "CMU-random-init.svs"  # a copy of the CMU slide's folder, as a MIL run leaves it


@dataclass
class Out:
    out: Path
    records: dict[str, dict[str, Any]]  # slide name -> slide.json record
    reports: dict[str, Path]
    rows: list[dict[str, Any]]
    summary: Path


# (kind, the session's base temporary folder) -> the OUT built for it
_BUILT: dict[tuple[str, Path], Out] = {}


def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Out:
    """The he-density demo run over pipelines/demo.csv, with its reports (built once)."""
    key = ("demo", tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = _build_demo(tmp_path_factory)
    return _BUILT[key]


def synthetic_out(tmp_path_factory: pytest.TempPathFactory) -> Out:
    """A MIL-like slide (random-init model, prediction, QC, 25 regions) and a mixed cohort,
    built once from :func:`demo_out`."""
    key = ("synthetic", tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = _build_synthetic(demo_out(tmp_path_factory), tmp_path_factory)
    return _BUILT[key]


def _build_demo(tmp_path_factory: pytest.TempPathFactory) -> Out:
    out = tmp_path_factory.mktemp("report") / "out"
    inputs = collect_inputs([PIPELINES / "demo.csv"])
    result = run_batch(inputs, load_pipeline(PIPELINES / "he-density.toml"), out)
    assert not result.failed, [o.error for o in result.failed]
    records, reports = {}, {}
    for outcome in result.outcomes:
        name, record = outcome.input.name, outcome.record
        with open_slide(record["slide"]["path"]) as slide:
            reports[name] = write_slide_report(out / "slides" / name, record, slide)
        records[name] = record
    rows = summary_rows(result.outcomes)
    return Out(out, records, reports, rows, write_cohort_report(out, rows))


def _square(x: int, y: int, side: int, max_score: float) -> dict[str, Any]:
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": "tumour", "color": [200, 0, 0]},
            "measurements": {
                "Area µm^2": side * side * 0.25,
                "Mean score": max_score / 2,
                "Max score": max_score,
            },
        },
    }


def _build_synthetic(demo: Out, tmp_path_factory: pytest.TempPathFactory) -> Out:
    out = tmp_path_factory.mktemp("report") / "mixed"
    source = demo.out / "slides" / "CMU-1-Small-Region.svs"
    folder = out / "slides" / SYNTHETIC
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("report.html", "*.zarr"))
    record = json.loads((source / "slide.json").read_text())
    record["slide"]["name"] = SYNTHETIC
    record["prediction"] = {"class": "tumour", "probability": 0.8125, "confidence": 0.7031}
    record["random_init"] = True
    record["warnings"] = ["patch 12 at /secret/folder/CMU-1-Small-Region.svs had no tissue"]
    record["identity"]["models"] = {
        "card": "tiny-test",
        "card_hash": "c" * 64,
        "weights_sha256": None,
        "random_init": True,
        "aggregator_sha256": "a" * 64,
    }
    record["qc"] = {
        "tissue_area_mm2": 0.6383,
        "blur_fraction": 0.41,
        "pen_fraction": 0.0,
        "bubble_fraction": 0.02,
        "stain_vectors": {"hematoxylin": [0.65, 0.7, 0.29], "eosin": [0.07, 0.99, 0.11]},
        "patches_sampled": 64,
    }
    record["qc_flags"] = ["blur_fraction"]
    prediction = {
        **record["prediction"],
        "probabilities": {"tumour": 0.8125, "normal": 0.1875},
        "calibrated_probabilities": {"tumour": 0.7031, "normal": 0.2969},
        "temperature": 1.7,
        "random_init": True,
        "warning": "RANDOM-INIT features: this prediction is meaningless",
        "model": {"run": "fold-0", "aggregator": "abmil", "sha256": "a" * 64},
    }
    (folder / "prediction.json").write_text(json.dumps(prediction))
    (folder / "slide.json").write_text(json.dumps(record))
    features = [_square(40 + 90 * (i % 20), 40 + 600 * (i // 20), 80, i / 25) for i in range(25)]
    regions = {"type": "FeatureCollection", "features": features}
    (folder / "regions.geojson").write_text(json.dumps(regions))
    with open_slide(record["slide"]["path"]) as slide:
        report = write_slide_report(folder, record, slide)

    def row(
        name: str, status: str = "done", pred: tuple[Any, Any, Any] = ("", "", ""), **values: Any
    ) -> dict[str, Any]:
        base = {"slide": name, "status": status, "error": "", "label": "", "path": f"/x/{name}"}
        base |= dict(zip(("class", "probability", "confidence"), pred, strict=True))
        return base | {"regions": 1, "tissue_area_mm2": 1.0, "patches": 10} | values

    rows = [
        row(SYNTHETIC, pred=("tumour", 0.8125, 0.7031), random_init=True),
        row("b.svs", pred=("normal", "0.6", "0.55")),
        row("c.svs", "skipped", pred=("tumour", 0.95, 0.9)),
        row("d.svs", pred=("normal", 0.99, 0.97), qc_flags="pen_fraction; bubble_fraction"),
        row(
            "e.svs",
            "failed",
            error="/lab/secret/e.svs: no such file; check the path",
            path="/lab/secret/e.svs",
            regions="",
            tissue_area_mm2="",
            patches="",
        ),
    ]
    summary = write_cohort_report(out, rows)
    return Out(out, {SYNTHETIC: record}, {SYNTHETIC: report}, rows, summary)
