"""``wsi-ai bench``: the stages and limits are measured, the verdict names what binds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.tiny_model import tiny_card
from wsi_ai.bench.report import SlideBench, format_table, rows, verdict
from wsi_ai.cli import main

STAGES = [
    "file read",
    "tile decode",
    "patch assembly",
    "input (cpu reader alone)",
    "model alone",
    "end to end",
    "stitch",
    "export",
]


def test_bench_measures_every_stage_of_a_real_slide(cmu_small: Path, tmp_path: Path) -> None:
    card = tiny_card(tmp_path)
    out = tmp_path / "bench.json"
    args = ["bench", str(cmu_small), "--model", str(card), "--random-init", "--device", "cpu"]
    args += ["--max-patches", "64", "--batch-size", "16", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "bottleneck: " in result.output and "random weights" in result.output
    data = json.loads(out.read_text())
    (slide,) = data["slides"]
    assert slide["slide"] == cmu_small.name and slide["patches"] == 64
    assert [r["stage"] for r in slide["rows"]] == STAGES
    by_stage = {r["stage"]: r for r in slide["rows"]}
    for stage in ("tile decode", "input (cpu reader alone)", "model alone", "end to end", "stitch"):
        assert by_stage[stage]["rate"] > 0, stage
    assert by_stage["end to end"]["limit_rate"] == pytest.approx(data["run"]["model_rate"], 1e-3)
    assert by_stage["end to end"]["ratio"] > 0
    assert by_stage["input (cpu reader alone)"]["limit"].startswith("raw decode, ")
    assert slide["decode"]["tiles"] > 0 and slide["file_read"]["bytes"] > 0
    assert slide["usage"]["peak_rss_bytes"] > 0 and slide["startup_s"] > 0
    assert data["run"]["random_init"] is True and slide["verdict"]


def test_a_bad_slide_is_one_line_and_the_others_are_measured(
    cmu_small: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.svs"
    bad.write_text("not a slide")
    card = tiny_card(tmp_path)
    args = ["bench", str(bad), str(cmu_small), "--model", str(card), "--random-init"]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--max-patches", "8"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "notes.svs" in errors[0]
    assert "Traceback" not in result.output and f"{cmu_small.name}: 8 patches" in result.output


def _bench(model_rate: float, end_to_end_s: float, input_s: float) -> SlideBench:
    return SlideBench(
        slide="s.svs",
        patches=1000,
        reader="cpu",
        model_s=1.0,
        prepare_s=0.5,
        first_batch_s=0.1,
        input_s=input_s,
        parallel=2,
        read_stats={
            "tiles": 300,
            "bytes_read": 10**7,
            "read_s": 0.2,
            "decode_s": 3.0,
            "assemble_s": 0.5,
        },
        model_rate=model_rate,
        end_to_end_s=end_to_end_s,
        stitch_s=0.1,
        export_s=0.2,
        file_read={"seconds": 0.1, "bytes": 10**7, "tiles": 300},
        decode={"seconds": 1.0, "tiles": 300, "where": "2 CPU threads"},
        usage={"peak_rss_bytes": 2**30, "gpu_busy_percent": None, "gpu_peak_used_bytes": None},
    )


@pytest.mark.parametrize(
    ("model_rate", "end_to_end_s", "input_s", "expected"),
    [
        (100.0, 11.0, 2.0, "the model binds: end to end runs at 91% of the model alone"),
        (1000.0, 4.0, 2.0, "patch input binds: the cpu reader alone gives 500 patches/s"),
        (400.0, 10.0, 1.0, "the overlap binds"),
    ],
)
def test_the_verdict_names_the_stage_that_binds(
    model_rate: float, end_to_end_s: float, input_s: float, expected: str
) -> None:
    bench = _bench(model_rate, end_to_end_s, input_s)
    assert verdict(bench).startswith(expected)
    if "input" in expected:
        assert "most reader time is tile decode, 50% of the raw decode limit" in verdict(bench)
    table = {r.stage: r for r in rows(bench)}
    # summed thread seconds: 1000 patches x 2 threads / 3 s of decoding
    assert table["tile decode"].rate == pytest.approx(1000 * 2 / 3.0)
    assert table["end to end"].ratio == pytest.approx(1000 / end_to_end_s / model_rate)
    assert "start-up 1.60 s" in format_table(bench)
