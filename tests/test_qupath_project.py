"""``wsi-ai export-qupath``: a ``wsi-ai run`` folder as a QuPath project (0.5-0.7).

One real batch (the two bundled slides and one broken file) runs once for the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import click
import pytest
from click.testing import CliRunner

from wsi_ai.batch import run_batch
from wsi_ai.cli.review_cmds import export_qupath
from wsi_ai.export.qupath_project import (
    BIOFORMATS,
    OPENSLIDE,
    SCRIPT_NAME,
    file_uri,
    server_builder,
)
from wsi_ai.inputs import SlideInput, collect_inputs
from wsi_ai.pipeline_config import load_pipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "he-density.toml"
SVS, TIFF = "CMU-1-Small-Region.svs", "skin-he-striped.tif"


@click.group()
@click.option("--debug", is_flag=True)
def cli(debug: bool) -> None:
    """Stands in for wsi-ai's main group (run_each reads its --debug)."""


cli.add_command(export_qupath)


def invoke(*args: Any) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["export-qupath", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def batch(out: Path, inputs: list[SlideInput]) -> list[str]:
    return [o.status for o in run_batch(inputs, load_pipeline(PIPELINE), out).outcomes]


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder: two finished slides and one that failed."""
    root = tmp_path_factory.mktemp("run")
    broken = root / "broken.svs"
    broken.write_bytes(b"this is not a slide")
    inputs = [*collect_inputs([REPO / "pipelines" / "demo.csv"]), SlideInput(broken)]
    assert batch(root / "out", inputs) == ["done", "done", "failed"]
    return root / "out"


@pytest.fixture(scope="module")
def exported(run_out: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    project = tmp_path_factory.mktemp("qupath") / "project"
    code, stdout, stderr = invoke(run_out, "-o", project)
    assert (code, stderr) == (0, ""), stderr
    return project, stdout


def qpproj(project: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((project / "project.qpproj").read_text("utf-8"))
    return data


def by_name(project: Path) -> dict[str, dict[str, Any]]:
    return {e["imageName"]: e for e in qpproj(project)["images"]}


def test_project_lists_the_finished_slides_by_uri(exported: tuple[Path, str]) -> None:
    project, stdout = exported
    data = qpproj(project)
    assert isinstance(data["version"], str) and data["version"].startswith("0.5")
    for key in ("createTimestamp", "modifyTimestamp"):
        assert isinstance(data[key], int) and data[key] > 10**12  # epoch milliseconds
    assert data["uri"] == file_uri(project / "project.qpproj")
    images = data["images"]
    assert sorted(e["imageName"] for e in images) == [SVS, TIFF]  # not broken.svs (failed)
    ids = [e["entryID"] for e in images]
    assert len(set(ids)) == len(ids) and min(ids) >= 1 and data["lastID"] >= max(ids)
    for entry in images:
        uri = entry["serverBuilder"]["uri"]
        assert uri.startswith("file:/") and not uri.startswith("file://")
        parsed = urlparse(uri)
        assert parsed.scheme == "file" and Path(unquote(parsed.path)).is_file()
        assert Path(unquote(parsed.path)).name == entry["imageName"]
        assert entry["randomizedName"] and isinstance(entry["metadata"], dict)
        assert all(isinstance(v, str) for v in entry["metadata"].values())
    assert stdout.startswith(f"wrote {project}: 2 slide(s), 4 GeoJSON file(s); in QuPath: ")
    assert "Automate > Project scripts... > import-wsi-ai-geojson" in stdout
    assert "Run > Run for project" in stdout


def test_builders_follow_the_reader_that_opened_the_slide(exported: tuple[Path, str]) -> None:
    entries = by_name(exported[0])
    svs, tif = entries[SVS]["serverBuilder"], entries[TIFF]["serverBuilder"]
    assert svs["builderType"] == tif["builderType"] == "uri"
    assert (svs["providerClassName"], svs["args"]) == (OPENSLIDE, ["--no-crop"])
    # the striped TIFF is read by tiffslide (OpenSlide refuses it): Bio-Formats, first series
    assert entries[TIFF]["metadata"]["wsi-ai.backend"] == "tiffslide"
    assert (tif["providerClassName"], tif["args"]) == (BIOFORMATS, ["--series", "0"])


def test_builder_rules() -> None:
    def provider(**slide: Any) -> str:
        return str(server_builder(slide, "file:/x")["providerClassName"])

    assert provider(path="/a.mrxs", backend="openslide", vendor="mirax") == OPENSLIDE
    assert provider(path="/a.tiff", backend="openslide", vendor="generic-tiff") == OPENSLIDE
    assert provider(path="/a.ome.tif", backend="tiffslide") == BIOFORMATS
    assert provider(path="/a.dcm", backend="openslide", vendor="dicom") == BIOFORMATS
    assert provider(path="/a.ndpi") == OPENSLIDE  # a record without its reader
    assert provider(path="/a.czi") == BIOFORMATS


def test_uris_are_percent_encoded() -> None:
    assert file_uri(Path("/data/case 1/é#%.svs")) == "file:/data/case%201/%C3%A9%23%25.svs"


def test_script_and_geojson_copies(exported: tuple[Path, str], run_out: Path) -> None:
    project = exported[0]
    script = (project / "scripts" / f"{SCRIPT_NAME}.groovy").read_text("utf-8")
    for needed in (
        "importObjectsFromFile(",
        "getProjectEntryMetadataValue('wsi-ai.geojson')",
        "buildFilePath(PROJECT_BASE_DIR, where)",
        "'wsi-ai/' + entry.getImageName()",
        "getID()",  # a rerun does not duplicate objects
    ):
        assert needed in script
    for name, entry in by_name(project).items():
        folder = project / entry["metadata"]["wsi-ai.geojson"]
        assert folder == project / "wsi-ai" / name
        copies = sorted(p.name for p in folder.iterdir())
        assert copies == ["regions.geojson", "tissue.geojson"]
        for copy in copies:
            original = run_out / "slides" / name / copy
            assert (folder / copy).read_bytes() == original.read_bytes()
    classes = json.loads((project / "classifiers" / "classes.json").read_text("utf-8"))
    colours = {c["name"]: c["color"] for c in classes["pathClasses"]}
    assert set(colours) == {"Tissue", "hematoxylin"}
    assert colours["Tissue"] == (0xFF << 24 | 0 << 16 | 140 << 8 | 70) - (1 << 32)


def _tree(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes() for p in project.rglob("*") if p.is_file()}


def test_rerun_refused_then_overwrite_is_identical(
    exported: tuple[Path, str], run_out: Path
) -> None:
    project = exported[0]
    before = _tree(project)
    code, stdout, stderr = invoke(run_out, "-o", project)
    assert code == 1 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and "--overwrite" in stderr
    assert _tree(project) == before
    code, _, stderr = invoke(run_out, "-o", project, "--overwrite")
    assert (code, stderr) == (0, "")
    after = _tree(project)
    old, new = (json.loads(t.pop("project.qpproj")) for t in (before, after))
    assert after == before
    for stamped in (old, new):
        del stamped["createTimestamp"], stamped["modifyTimestamp"]
    assert new == old


def test_json_summary(run_out: Path, tmp_path: Path) -> None:
    code, stdout, _ = invoke(run_out, "-o", tmp_path / "p", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert (summary["slides"], summary["geojson_files"]) == (2, 4)
    assert summary["script"] == f"scripts/{SCRIPT_NAME}.groovy"
    assert {e["imageName"]: e["providerClassName"] for e in summary["entries"]} == {
        SVS: OPENSLIDE,
        TIFF: BIOFORMATS,
    }


def test_a_moved_slide_is_kept_with_a_warning(run_out: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(run_out, out)
    record_path = out / "slides" / SVS / "slide.json"
    record = json.loads(record_path.read_text())
    record["slide"]["path"] = str(tmp_path / "gone" / SVS)
    record_path.write_text(json.dumps(record))
    code, _, stderr = invoke(out, "-o", tmp_path / "p")
    assert code == 0
    assert stderr.startswith(f"warning: {SVS}: slide file not found at ") and "URIs" in stderr
    uri = by_name(tmp_path / "p")[SVS]["serverBuilder"]["uri"]
    assert uri == f"file:{tmp_path}/gone/{SVS}"


def test_no_finished_slide_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"nothing")
    assert batch(tmp_path / "out", [SlideInput(broken)]) == ["failed"]
    code, stdout, stderr = invoke(tmp_path / "out", "-o", tmp_path / "p")
    assert (code, stdout) == (1, "") and not (tmp_path / "p").exists()
    assert stderr.count("\n") == 1 and "no finished slide" in stderr


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_not_a_run_folder_is_one_line_exit_1(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    if kind == "empty":
        out.mkdir()
    elif kind == "file":
        out.write_text("x")
    code, stdout, stderr = invoke(out, "-o", tmp_path / "p")
    assert (code, stdout) == (1, "") and not (tmp_path / "p").exists()
    assert stderr.startswith(f"error: {out}: ") and stderr.count("\n") == 1
    assert "wsi-ai run" in stderr


def test_project_cannot_replace_out(run_out: Path) -> None:
    code, _, stderr = invoke(run_out, "-o", run_out, "--overwrite")
    assert code == 1 and "cannot be OUT" in stderr
    assert (run_out / "summary.csv").is_file()
