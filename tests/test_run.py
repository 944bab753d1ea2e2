"""``wsi-ai run``: every shipped pipeline on real slides, resume, mixed batches, the lock.

Every GeoJSON a run writes is checked against QuPath's import rules by conftest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.test_engine import tiny_card
from wsi_ai.cli import main
from wsi_ai.run_records import run_lock

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def wsi(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stdout, result.stderr


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture
def batch(cmu_small: Path, tmp_path: Path) -> Path:
    """A lab's overnight folder: two good slides, a truncated SVS and a text file named .svs."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(cmu_small, folder / "a.svs")
    shutil.copy(cmu_small, folder / "b.svs")
    data = cmu_small.read_bytes()
    (folder / "truncated.svs").write_bytes(data[: len(data) // 3])
    (folder / "notes.svs").write_text("not a slide\n")
    (folder / "readme.txt").write_text("ignored: not a slide extension\n")
    return folder


def test_he_density_mixed_batch_then_resume(batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = (batch, "--pipeline", PIPELINES / "he-density.toml", "-o", out)
    code, stdout, stderr = wsi("run", *args)
    assert code == 1
    failed = errors(stderr)
    assert len(failed) == 2 and any("notes.svs" in e for e in failed)
    assert any("truncated.svs" in e for e in failed)
    for name in ("a.svs", "b.svs"):
        folder = out / "slides" / name
        for file in (
            "slide.json",
            "scores.csv",
            "scores.csv.json",
            "heatmap.png",
            "overlay.png",
            "regions.geojson",
            "tissue.geojson",
            "thumbnail.png",
            "grid.png",
            "report.html",
        ):
            assert (folder / file).is_file(), file
    assert sorted(p.name for p in (out / "slides").iterdir()) == ["a.svs", "b.svs"]
    assert (out / "summary.html").is_file()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["status"][:2]) == ["failed", "failed"]  # triage: failures first
    assert {"blur_fraction", "pen_fraction", "qc_flags"} <= set(summary.columns)
    assert dict(zip(summary["slide"], summary["status"], strict=True)) == {
        "a.svs": "done",
        "b.svs": "done",
        "notes.svs": "failed",
        "truncated.svs": "failed",
    }
    assert (summary.loc[summary.status == "done", "regions"] > 0).all()
    errs = json.loads((out / "errors.json").read_text())
    assert {e["slide"] for e in errs} == {"notes.svs", "truncated.svs"}
    assert all(e["error"] and "\n" not in e["error"] for e in errs)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["counts"] == {"done": 2, "skipped": 0, "failed": 2}
    assert run["pipeline"]["name"] == "he-density" and len(run["pipeline"]["file_sha256"]) == 64
    assert {"tissue", "grid", "qc", "score", "stitch"} <= set(run["stages"])
    assert run["versions"]["wsi-ai"] and list((out / "logs").glob("run-*.log"))
    assert not (out / ".wsi-ai-run.lock").read_text()

    before = mtimes(out / "slides")
    code, stdout, stderr = wsi("run", *args)
    assert code == 1  # the bad slides are still bad, and said again without rerunning them
    assert stdout.count("skipped") == 2 and "earlier run" in stderr
    assert mtimes(out / "slides") == before

    (batch / "notes.svs").unlink()
    (batch / "truncated.svs").unlink()
    (batch / "b.svs").write_bytes((batch / "a.svs").read_bytes()[:-1] + b"\0")  # rescanned
    code, stdout, _ = wsi("run", *args, "--retry-failed")
    assert code == 0
    assert "skipped" in stdout and "wrote" in stdout
    after = mtimes(out / "slides")
    assert after["a.svs/slide.json"] == before["a.svs/slide.json"]
    assert after["b.svs/slide.json"] != before["b.svs/slide.json"]
    assert json.loads((out / "errors.json").read_text()) == []

    code, stdout, _ = wsi("run", *args, "--force", "--set", "grid.min_tissue=0.9")
    assert code == 0 and stdout.count("wrote") == 2


def test_tissue_qc_and_manifest_columns(
    cmu_small: Path, skin_striped: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        f"path,label,slide_mpp,site\n{cmu_small},tumour,,leeds\n{skin_striped},normal,0.5,york\n"
        "missing.svs,normal,,york\n"
    )
    out = tmp_path / "qc"
    code, stdout, stderr = wsi(
        "run", manifest, "-p", PIPELINES / "tissue-qc.toml", "-o", out, "--json"
    )
    assert code == 1
    assert "missing.svs" in errors(stderr)[0]
    report = json.loads(stdout)
    assert report["counts"] == {"done": 2, "skipped": 0, "failed": 1}
    summary = pd.read_csv(out / "summary.csv")
    rows = summary.set_index("slide")
    assert rows.loc["missing.svs", "status"] == "failed"  # triage order: failures first
    assert summary["slide"].iloc[0] == "missing.svs"
    assert (rows.loc[cmu_small.name, "site"], rows.loc[cmu_small.name, "label"]) == (
        "leeds",
        "tumour",
    )
    assert (rows.loc[skin_striped.name, "site"], rows.loc[skin_striped.name, "label"]) == (
        "york",
        "normal",
    )
    slide = out / "slides" / cmu_small.name
    for file in ("tissue.geojson", "tissue-mask.png", "thumbnail.png", "grid.png", "patches.csv"):
        assert (slide / file).is_file()
    assert not (slide / "heatmap.png").exists()
    record = json.loads((slide / "slide.json").read_text())
    assert record["tissue_area_mm2"] > 0 and record["patches"] > 0


def test_a_second_run_on_the_same_out_is_refused(cmu_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = (cmu_small, "-p", PIPELINES / "tissue-qc.toml", "-o", out)
    with run_lock(out):
        code, _, stderr = wsi("run", *args)
    assert code == 1
    assert "another wsi-ai run is writing this folder" in errors(stderr)[0]
    assert "pid" in stderr
    # a lock file left by a killed run is not a dead end (the OS lock died with it)
    (out / ".wsi-ai-run.lock").write_text("pid 1 on elsewhere, started yesterday\n")
    assert wsi("run", *args)[0] == 0


def test_a_bad_pipeline_or_out_is_one_line(cmu_small: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[grid]\nsize = "big"\n')
    code, _, stderr = wsi("run", cmu_small, "-p", bad, "-o", tmp_path / "o")
    assert code == 1 and errors(stderr) == [
        f"error: {bad}: [grid] size must be an integer, got 'big'"
    ]
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, stderr = wsi("run", cmu_small, "-p", PIPELINES / "tissue-qc.toml", "-o", blocker / "o")
    assert code == 1 and "cannot create the output folder" in errors(stderr)[0]
    code, _, stderr = wsi(
        "run", cmu_small, "-p", PIPELINES / "mil-slide.toml", "-o", tmp_path / "m"
    )
    assert code == 1 and "--aggregator" in errors(stderr)[0]


def test_disk_full_and_a_deleted_slide_fail_alone(
    cmu_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from wsi_ai import batch as batch_module
    from wsi_ai.inputs import SlideInput
    from wsi_ai.pipeline_config import load_pipeline

    for name in ("full.svs", "ok.svs", "gone.svs"):
        shutil.copy(cmu_small, tmp_path / name)
    real = batch_module.run_slide

    def run_slide(path: Path, *args: object, **kwargs: object) -> dict:
        if path.name == "full.svs":
            raise OSError(errno.ENOSPC, "No space left on device")
        if path.name == "ok.svs":
            (tmp_path / "gone.svs").unlink()  # deleted while the batch runs
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_module, "run_slide", run_slide)
    inputs = [SlideInput(tmp_path / n) for n in ("full.svs", "ok.svs", "gone.svs")]
    result = batch_module.run_batch(
        inputs, load_pipeline(PIPELINES / "tissue-qc.toml"), tmp_path / "out"
    )
    status = {o.input.name: (o.status, o.error or "") for o in result.outcomes}
    assert status["ok.svs"] == ("done", "")
    assert status["full.svs"][0] == "failed" and "No space left" in status["full.svs"][1]
    assert status["gone.svs"][0] == "failed" and "no such file" in status["gone.svs"][1]
    assert sorted(p.name for p in (tmp_path / "out" / "slides").iterdir()) == ["ok.svs"]


def test_models_pipelines_features_classify_and_mil(
    cmu_small: Path, skin_striped: Path, tmp_path: Path
) -> None:
    """features -> train -> mil-slide, and patch-classifier, with tiny random-init cards."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(3):
        shutil.copy(cmu_small, slides / f"cmu{i}.svs")
        shutil.copy(skin_striped, slides / f"skin{i}.tif")
    card = tiny_card(tmp_path, classes=False)
    common = ("--model", card, "--random-init", "--device", "cpu", "--slide-mpp", "0.5")
    feats = tmp_path / "feats"
    code, _, stderr = wsi("run", slides, "-p", PIPELINES / "features.toml", "-o", feats, *common)
    assert code == 0, stderr
    assert (feats / "slides" / "cmu0.svs" / "features.zarr").is_dir()
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "slide,label\n" + "".join(f"cmu{i},tumour\nskin{i},normal\n" for i in range(3))
    )
    runs = tmp_path / "agg"
    code, _, stderr = wsi(
        "train",
        "--features",
        feats,
        "--labels",
        labels,
        "--aggregator",
        "abmil",
        "--folds",
        "3",
        "--epochs",
        "3",
        "-o",
        runs,
    )
    assert code == 0, stderr
    out = tmp_path / "mil"
    code, _stdout, stderr = wsi(
        "run",
        slides / "cmu0.svs",
        "-p",
        PIPELINES / "mil-slide.toml",
        "--aggregator",
        runs,
        "-o",
        out,
        *common,
    )
    assert code == 0, stderr
    folder = out / "slides" / "cmu0.svs"
    prediction = json.loads((folder / "prediction.json").read_text())
    assert prediction["class"] in ("tumour", "normal") and prediction["random_init"] is True
    assert prediction["pipeline"]["name"] == "mil-slide" and prediction["model"]["sha256"]
    assert "RANDOM" in (folder / "report.html").read_text()
    assert (folder / "patch_scores.csv").is_file() and (folder / "heatmap.png").is_file()
    assert pd.read_csv(out / "summary.csv")["class"].tolist() == [prediction["class"]]

    head = tiny_card(tmp_path, classes=True)
    out = tmp_path / "classes"
    code, _, stderr = wsi(
        "run",
        slides / "cmu1.svs",
        "-p",
        PIPELINES / "patch-classifier.toml",
        "-o",
        out,
        "--model",
        head,
        "--random-init",
        "--device",
        "cpu",
        "--set",
        "stitch.min_score=0",
    )
    assert code == 0, stderr
    folder = out / "slides" / "cmu1.svs"
    assert (folder / "features.zarr").is_dir() and (folder / "regions.geojson").is_file()


def test_ctrl_c_exits_130_with_one_line(
    cmu_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsi_ai import batch as batch_module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_module, "run_batch", interrupted)
    code, _, stderr = wsi(
        "run", cmu_small, "-p", PIPELINES / "tissue-qc.toml", "-o", tmp_path / "o"
    )
    assert code == 130
    assert stderr.strip().splitlines() == ["interrupted: outputs in progress were not kept"]


def test_slide_mpp_only_fills_in_for_files_without_one(
    cmu_small: Path, skin_striped: Path, tmp_path: Path
) -> None:
    """--slide-mpp for the slide that lacks an MPP must not overrule another file's own."""
    out = tmp_path / "out"
    args = (cmu_small, skin_striped, "-p", PIPELINES / "tissue-qc.toml", "-o", out)
    code, _, stderr = wsi("run", *args, "--slide-mpp", "0.25")
    assert code == 0, stderr
    cmu = json.loads((out / "slides" / cmu_small.name / "slide.json").read_text())["slide"]
    skin = json.loads((out / "slides" / skin_striped.name / "slide.json").read_text())["slide"]
    assert (round(cmu["mpp"], 3), cmu["mpp_source"]) == (0.499, "file")
    assert (skin["mpp"], skin["mpp_source"]) == (0.25, "--slide-mpp")
