"""``wsi-ai score-he``, ``wsi-ai stitch`` and ``wsi-ai annotations convert`` end to end."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import zarr
from ome_zarr_models import v04, v05
from PIL import Image
from shapely.geometry import Polygon, box

from tests.cli_helpers import one_error_line, run
from wsi_ai.annotations import Annotation, read_asap_xml, read_qupath_geojson
from wsi_ai.export.geojson import write_geojson
from wsi_ai.slide import open_slide
from wsi_ai.slide.identity import IDENTITY_KEY, slide_identity
from wsi_ai.store import write_features, write_table

CMU_MPP = 0.499


@pytest.fixture(scope="module")
def scores_csv(cmu_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("score") / "scores.csv"
    code, stdout, stderr = run("score-he", cmu_small, "-o", out, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["patches"] > 20
    return out


def test_score_he_writes_the_patch_table_with_a_hematoxylin_column(scores_csv: Path) -> None:
    table = pd.read_csv(scores_csv)
    assert {"x", "y", "width", "height", "level", "tissue_fraction", "hematoxylin"} <= set(
        table.columns
    )
    assert (table["tissue_fraction"] >= 0.5).all()
    assert table["hematoxylin"].between(0.005, 0.2).all()
    assert table["hematoxylin"].std() > 0.01  # a map with contrast, not a constant


def test_score_he_scores_an_existing_table_and_keeps_its_metadata(
    cmu_small: Path, tmp_path: Path
) -> None:
    grid = tmp_path / "grid.parquet"
    assert run("tiles", cmu_small, "-o", grid, "--no-tissue", "--size", "448")[0] == 0
    out = tmp_path / "scores.parquet"
    code, _, err = run("score-he", cmu_small, "--patches", grid, "-o", out, "--read-mpp", "2")
    assert code == 0, err
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_table(out).schema.metadata[b"wsi_ai"])
    assert meta["size"] == 448 and meta["score"]["read_mpp"] == 2.0
    assert len(pd.read_parquet(out)) == len(pd.read_parquet(grid))


def validate_ome_zarr(path: Path, ngff: str) -> list[list[float]]:
    group = zarr.open_group(path, mode="r", zarr_format=2 if ngff == "0.4" else 3)
    model = v04.Image if ngff == "0.4" else v05.Image
    datasets = model.from_zarr(group).ome_attributes.multiscales[0].datasets
    return [list(d.coordinateTransformations[0].scale) for d in datasets]


def test_stitch_writes_every_output_from_a_score_he_table(
    scores_csv: Path, cmu_small: Path, tmp_path: Path
) -> None:
    out = tmp_path / "maps"
    code, stdout, stderr = run(
        "stitch", scores_csv, "--slide", cmu_small, "-o", out, "--min-area", "1000", "--json"
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["downsample"] == pytest.approx(224 / 4, rel=0.01)

    with open_slide(cmu_small) as slide:
        thumb = slide.thumbnail(1024)
    heat = Image.open(out / "heatmap.png")
    assert heat.mode == "RGBA" and heat.size == (thumb.shape[1], thumb.shape[0])
    alpha = np.asarray(heat)[..., 3]
    assert 0 < (alpha > 0).mean() < 1  # patches cover part of the slide only
    overlay = Image.open(out / "overlay.png")
    assert overlay.height == thumb.shape[0] and overlay.width > thumb.shape[1]  # + colorbar

    scales = validate_ome_zarr(out / "heatmap.ome.zarr", "0.4")
    ds = summary["downsample"]
    assert scales[0] == pytest.approx([1.0, CMU_MPP * ds, CMU_MPP * ds])

    doc = json.loads((out / "regions.geojson").read_text())
    provenance = doc["wsi_ai"]
    assert provenance["slide"] == cmu_small.name
    assert provenance["slide_size_bytes"] == cmu_small.stat().st_size
    assert provenance["parameters"]["scores"] == "scores.csv"
    assert provenance["version"]
    regions = read_qupath_geojson(out / "regions.geojson")
    assert len(regions) == summary["regions"] >= 1 and summary["empty"] is False
    assert "warning" not in stderr
    threshold = summary["threshold"]
    for region in regions:
        assert region.classification == "hematoxylin"
        assert region.measurements["Area µm^2"] >= 1000
        assert region.measurements["Max score"] >= region.measurements["Mean score"] >= threshold
        assert region.geometry.is_valid


def test_stitch_features_store_argmax_tiles_gzip_and_ngff_05(
    cmu_small: Path, tmp_path: Path
) -> None:
    xs, ys = np.meshgrid(np.arange(0, 2000, 200), np.arange(0, 2800, 200))
    table = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "width": 200, "height": 200})
    tumour = (table["x"] < 1000).to_numpy(np.float32)
    scores = np.stack([0.9 - 0.8 * tumour, 0.05 + 0.8 * tumour, np.full(len(table), 0.05)], 1)
    store = write_features(
        tmp_path / "cmu.zarr", table, scores=scores, classes=["Background", "Tumor", "Stroma"]
    )
    out = tmp_path / "maps"
    code, _, stderr = run(
        "stitch", store, "--slide", cmu_small, "-o", out, "--tiles", "--gz", "--ngff", "0.5",
        "--ignore-class", "Background", "--downsample", "50", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert validate_ome_zarr(out / "heatmap.ome.zarr", "0.5")[0] == pytest.approx(
        [1.0, 50 * CMU_MPP, 50 * CMU_MPP]
    )
    (tumour_region,) = read_qupath_geojson(out / "regions.geojson.gz")
    assert tumour_region.classification == "Tumor"
    assert tumour_region.geometry.bounds == (0, 0, 1000, 2800)
    tiles = read_qupath_geojson(out / "tiles.geojson.gz")
    assert len(tiles) == len(table) and {t.object_type for t in tiles} == {"tile"}
    assert set(tiles[0].measurements) == {"Background", "Tumor", "Stroma"}
    raw = json.loads(gzip.decompress((out / "tiles.geojson.gz").read_bytes()))
    assert raw["wsi_ai"]["parameters"]["columns"] == ["Background", "Tumor", "Stroma"]


def _flat_argmax_scores(folder: Path, slide: Path) -> Path:
    """Two classes, the same everywhere: Stroma wins each patch with 0.6 (naming its slide)."""
    xs, ys = np.meshgrid(np.arange(0, 2000, 400), np.arange(0, 2800, 400))
    table = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "width": 400, "height": 400})
    table["Tumor"], table["Stroma"] = 0.4, 0.6
    return write_table(table, folder / "flat.csv", meta={IDENTITY_KEY: slide_identity(slide)})


@pytest.mark.parametrize(
    ("argmax", "args", "because"),
    [
        (False, ("--threshold", "10"), "threshold 10 on 'hematoxylin'"),
        (
            False,
            ("--threshold", "10", "--min-area", "500", "--gz", "--json"),
            "threshold 10 on 'hematoxylin', regions under 500 µm² dropped",
        ),
        (
            True,
            ("--min-score", "0.9", "--json"),
            "per-class argmax of 'Tumor', 'Stroma', min score 0.9",
        ),
    ],
    ids=["threshold", "threshold-min-area-gz-json", "argmax-min-score-json"],
)
def test_stitch_without_regions_says_so(
    scores_csv: Path,
    cmu_small: Path,
    tmp_path: Path,
    argmax: bool,
    args: tuple[str, ...],
    because: str,
) -> None:
    """No region is a legitimate result (exit 0), but never a silent empty file."""
    source = _flat_argmax_scores(tmp_path, cmu_small) if argmax else scores_csv
    out = tmp_path / "maps"
    code, stdout, stderr = run("stitch", source, "--slide", cmu_small, "-o", out, *args)
    assert code == 0, stderr
    regions = out / ("regions.geojson.gz" if "--gz" in args else "regions.geojson")
    warnings = [ln for ln in stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [
        f"warning: {regions}: no region above the threshold ({because}): "
        'QuPath will say "No objects found"'
    ]
    if "--json" in args:
        summary = json.loads(stdout)
        assert summary["empty"] is True and summary["regions"] == 0
    else:
        assert "(0 region(s)" in stdout
    raw = regions.read_bytes()
    doc = json.loads(gzip.decompress(raw) if "--gz" in args else raw)
    assert doc["type"] == "FeatureCollection" and doc["features"] == []


def test_stitch_bad_inputs_fail_with_one_line(
    scores_csv: Path, cmu_small: Path, tmp_path: Path
) -> None:
    no_y = tmp_path / "no_y.csv"
    pd.read_csv(scores_csv).drop(columns=["y"]).to_csv(no_y, index=False)
    code, _, err = run("stitch", no_y, "--slide", cmu_small, "-o", tmp_path / "a")
    assert code == 1 and "column(s) y" in one_error_line(err)

    code, _, err = run(
        "stitch", scores_csv, "--slide", cmu_small, "-o", tmp_path / "b", "--column", "tumor"
    )
    assert code == 1
    line = one_error_line(err)
    assert "'tumor'" in line and "hematoxylin" in line

    no_scores = tmp_path / "grid.csv"
    pd.read_csv(scores_csv).drop(columns=["hematoxylin"]).to_csv(no_scores, index=False)
    code, _, err = run("stitch", no_scores, "--slide", cmu_small, "-o", tmp_path / "c")
    assert code == 1 and "no score column" in one_error_line(err)

    missing_slide = tmp_path / "missing.svs"
    code, _, err = run("stitch", scores_csv, "--slide", missing_slide, "-o", tmp_path / "d")
    assert code == 1 and "missing.svs" in one_error_line(err)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())

    code, _, err = run("stitch", tmp_path / "nothing.csv", "--slide", cmu_small, "-o", tmp_path)
    assert code == 1 and "nothing.csv" in one_error_line(err)
    code, _, err = run("stitch", scores_csv, "-o", tmp_path / "e")  # --slide omitted: usage
    assert code == 2 and "--slide" in err


def test_stitch_never_overwrites_unasked(scores_csv: Path, cmu_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    assert run("stitch", scores_csv, "--slide", cmu_small, "-o", out)[0] == 0
    before = (out / "regions.geojson").read_bytes()
    code, _, err = run("stitch", scores_csv, "--slide", cmu_small, "-o", out, "--threshold", "0")
    assert code == 1 and "--overwrite" in one_error_line(err)
    assert (out / "regions.geojson").read_bytes() == before
    code, _, err = run(
        "stitch", scores_csv, "--slide", cmu_small, "-o", out, "--threshold", "0", "--overwrite"
    )
    assert code == 0, err
    (everything,) = read_qupath_geojson(out / "regions.geojson")  # threshold 0: one region
    assert everything.measurements["Area µm^2"] > 0


# ---------------------------------------------------------------- annotations convert


def test_convert_geojson_to_asap_and_back_keeps_geometry_and_classes(tmp_path: Path) -> None:
    holed = Polygon(
        [(100, 100), (900, 100), (900, 700), (100, 700)],
        [[(300, 300), (500, 300), (500, 500), (300, 500)]],
    )
    items = [
        Annotation(holed, classification="Tumor", name="lesion"),
        Annotation(box(1000, 1000, 1200, 1300), classification="Stroma", name="s1"),
        Annotation(shapely.Point(50.5, 60.25), classification="Tumor", name="dot"),
    ]
    source = tmp_path / "in.geojson"
    write_geojson(source, items)
    xml = tmp_path / "mid.xml"
    code, _, err = run("annotations", "convert", source, "-o", xml)
    assert code == 0, err
    assert [a.classification for a in read_asap_xml(xml)] == ["Tumor", "Stroma", "Tumor"]
    back = tmp_path / "back.geojson"
    code, stdout, err = run("annotations", "convert", xml, "-o", back, "--json")
    assert code == 0, err
    assert json.loads(stdout)["written"] == 3
    result = read_qupath_geojson(back)
    for a, b in zip(items, result, strict=True):
        assert b.classification == a.classification and b.name == a.name
        assert b.geometry.symmetric_difference(a.geometry).area <= 0.01
    assert len(result[0].geometry.interiors) == 1  # the hole survived ASAP's "negative" group


def test_convert_reports_annotations_outside_the_slide(cmu_small: Path, tmp_path: Path) -> None:
    items = [
        Annotation(box(10, 10, 500, 500), classification="Tumor", name="inside"),
        Annotation(box(5000, 5000, 5100, 5100), classification="Tumor", name="far away"),
        Annotation(box(2000, 2900, 2400, 3100), classification="Tumor", name="edge"),
    ]
    source = tmp_path / "in.geojson"
    write_geojson(source, items)
    out = tmp_path / "out.geojson"
    code, stdout, err = run(
        "annotations", "convert", source, "-o", out, "--slide", cmu_small, "--json"
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["outside_slide"] == [1] and summary["partly_outside_slide"] == [2]
    warning = next(ln for ln in err.splitlines() if ln.startswith("warning:"))
    assert (
        "1 annotation(s) outside" in warning and "far away" in warning and "2220 x 2967" in warning
    )
    assert len(read_qupath_geojson(out)) == 3  # reported, still written
    doc = json.loads(out.read_text())
    assert doc["wsi_ai"]["slide"] == cmu_small.name and doc["wsi_ai"]["source"] == "in.geojson"


def test_convert_repairs_invalid_polygons_with_a_count(tmp_path: Path) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]}
    feature = {"type": "Feature", "geometry": bowtie, "properties": {"objectType": "annotation"}}
    source = tmp_path / "bad.json"  # not *.geojson: the autouse QuPath check would reject it
    source.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    out = tmp_path / "fixed.geojson"
    code, _, err = run("annotations", "convert", source, "-o", out)
    assert code == 0
    assert "repaired 1 invalid polygon" in err
    (fixed,) = read_qupath_geojson(out)
    assert fixed.geometry.is_valid and fixed.geometry.area == pytest.approx(5000)


def test_convert_bad_inputs(tmp_path: Path) -> None:
    code, _, err = run(
        "annotations", "convert", tmp_path / "none.geojson", "-o", tmp_path / "x.xml"
    )
    assert code == 1 and "none.geojson" in one_error_line(err)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    code, _, err = run("annotations", "convert", other, "-o", tmp_path / "x.geojson")
    assert code == 1 and "unknown annotation format" in one_error_line(err)
    code, _, err = run("annotations", "convert", other, "-o", tmp_path / "x.csv")
    assert code == 1 and ".geojson" in one_error_line(err)


def test_prediction_attention_is_not_a_class_unless_asked(tmp_path: Path) -> None:
    """A `wsi-ai predict` table: the argmax is over the classes; `--column attention` maps
    where the aggregator looked."""
    from wsi_ai.store import score_columns

    xy = np.arange(4) * 224
    table = pd.DataFrame({"x": xy, "y": 0, "width": 224, "height": 224})
    table["neg"], table["pos"] = [0.9, 0.2, 0.8, 0.1], [0.1, 0.8, 0.2, 0.9]
    table["attention"] = [0.1, 0.4, 0.1, 0.4]
    src = tmp_path / "s.patch_scores.csv"
    assert score_columns(table, (), src) == ["neg", "pos"]
    assert score_columns(table, ("attention",), src) == ["attention"]
    assert score_columns(table[["x", "y", "width", "height", "attention"]], (), src) == [
        "attention"
    ]
