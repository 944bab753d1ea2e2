"""The inference engine: stores that match the grid, the same numbers as a direct model call,
per-slide failures, atomic outputs, and the same result on a Dask cluster of processes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from wsi_ai.cli.engine_cmds import embed, score
from wsi_ai.engine import EngineConfig, FeaturesWriter, embed_slide, run_slides
from wsi_ai.engine.cluster import parse_scheduler
from wsi_ai.engine.loader import PatchReader
from wsi_ai.engine.runner import InferenceModel
from wsi_ai.nn.backbone import build_backbone
from wsi_ai.nn.cards import find_card
from wsi_ai.slide import open_slide
from wsi_ai.slide.identity import slide_identity
from wsi_ai.store import read_features, write_features
from wsi_ai.tiling import grid, read_patch
from wsi_ai.tissue import detect_tissue

MODEL = "vit_small_patch16_224"
FAST = ("--model", MODEL, "--random-init", "--mpp", "2")  # 4 patches of the CMU slide

TINY_CARD = """
name = "tiny-head"
architecture = "test_resnet"
input_size = 160
mpp = 2.0
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
readout = "pooled"
embed_dim = 96
weights_format = "safetensors"
key_mapping = "timm"
{classes}

[kwargs]
num_classes = {num_classes}
"""


def run(command: object, *args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(command, [str(a) for a in args])  # type: ignore[arg-type]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def tiny_card(folder: Path, classes: bool = True) -> Path:
    path = folder / ("tiny-head.toml" if classes else "tiny.toml")
    text = TINY_CARD.format(
        classes='classes = ["stroma", "tumour", "other"]' if classes else "",
        num_classes=3 if classes else 0,
    )
    path.write_text(text)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_embed_writes_the_grid_embeddings_and_provenance(cmu_small: Path, tmp_path: Path) -> None:
    code, out, err = run(embed, cmu_small, *FAST, "-o", tmp_path)
    assert code == 0, err
    assert "RANDOM weights" in out
    store = tmp_path / "CMU-1-Small-Region.zarr"
    feats = read_features(store)
    with open_slide(cmu_small) as slide:
        expected = grid(slide, mpp=2.0, size=224, tissue=detect_tissue(slide), min_tissue=0.5)
    table = expected.table
    assert len(feats) == len(table) > 0
    np.testing.assert_array_equal(feats.coords, table[["x", "y", "width", "height"]].to_numpy())
    np.testing.assert_array_equal(feats.level, table["level"].to_numpy())
    assert feats.tissue_fraction is not None
    np.testing.assert_allclose(feats.tissue_fraction, table["tissue_fraction"].to_numpy())
    assert feats.embeddings is not None
    assert feats.embeddings.dtype == np.float16
    assert feats.embeddings.shape == (len(table), 384)
    assert np.isfinite(feats.embeddings).all() and feats.embeddings.std() > 0
    attrs = feats.attrs
    card = find_card(MODEL)
    assert attrs["random_init"] is True and attrs["backbone"]["random_init"] is True
    assert attrs["model"] == {"name": MODEL, "sha256": card.card_hash}
    assert attrs["card_hash"] == card.card_hash
    params = attrs["parameters"]
    assert set(f.name for f in dataclasses.fields(EngineConfig)) <= set(params)
    assert params["mpp"] == 2.0 and params["size"] == 224 and params["batch_size"] == 32
    assert params["precision"] in ("bf16", "fp32") and params["device"] == "cpu"
    assert attrs["grid"]["read_size"] == expected.spec.read_size
    assert attrs["slide_identity"] == slide_identity(cmu_small)  # what stitch checks
    assert attrs["slide_path"] == cmu_small.name  # a file name, never a machine's path
    assert leftovers(tmp_path) == []  # no temporary store left behind


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_engine_gives_what_the_backbone_gives_on_read_patch(
    cmu_small: Path, tmp_path: Path, precision: str
) -> None:
    card = find_card(MODEL)
    backbone = build_backbone(card, random_init=True)
    config = EngineConfig(
        model=MODEL, random_init=True, mpp=2.0, tissue=False, precision=precision, batch_size=4
    )
    with open_slide(cmu_small) as slide:
        patches = grid(slide, mpp=2.0, size=224)
        pixels = np.stack(
            [read_patch(slide, patches.spec, x, y) for x, y in patches.table[["x", "y"]].values]
        )
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (card.mean, card.std))
    with torch.no_grad():
        expected = backbone((images - mean) / std).numpy()
    result = embed_slide(cmu_small, tmp_path / "cmu.zarr", config, backbone)
    assert result.error is None and result.patches == len(patches) == 6  # batches of 4 and 2
    got = read_features(tmp_path / "cmu.zarr").embeddings
    assert got is not None and got.shape == expected.shape
    got = got.astype(np.float32)
    scale = np.abs(expected).max()
    tolerance = 3e-3 if precision == "fp32" else 5e-2  # float16 storage; bf16 compute
    np.testing.assert_allclose(got, expected, atol=tolerance * scale, rtol=0)
    cosine = (
        (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() > (0.9999 if precision == "fp32" else 0.995)


def test_patch_reader_matches_read_patch_on_a_level_with_resizing(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide:
        patches = grid(slide, mpp=0.75, size=100, edge="pad")  # 150 px read, resized
        reader = PatchReader(slide, patches.spec, cache_bytes=2**20)
        xy = patches.table[["x", "y"]].to_numpy()
        rows = [*xy[:: max(1, len(xy) // 15)], xy[-1]]  # the last one lies partly outside
        for x, y in rows:
            out = np.zeros((100, 100, 3), np.uint8)
            reader.read(int(x), int(y), out)
            np.testing.assert_array_equal(out, read_patch(slide, patches.spec, int(x), int(y)))


def test_a_bad_slide_is_reported_and_the_others_are_written(
    cmu_small: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide at all" * 100)
    missing = tmp_path / "missing.svs"
    out = tmp_path / "out"
    code, stdout, stderr = run(embed, missing, cmu_small, junk, *FAST, "-o", out)
    assert code == 1
    lines = error_lines(stderr)
    assert len(lines) == 2
    assert "missing.svs" in lines[0] and "junk.svs" in lines[1]
    assert [p.name for p in out.iterdir()] == ["CMU-1-Small-Region.zarr"]
    assert "wrote" in stdout


def white_slide(path: Path) -> Path:
    import tifffile

    pixels = np.full((1024, 1024, 3), 242, dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb")
    return path


@pytest.mark.parametrize("case", ["min-tissue-1", "white-slide"])
def test_an_empty_tissue_grid_is_a_one_line_error(
    cmu_small: Path, tmp_path: Path, case: str
) -> None:
    if case == "white-slide":
        args: tuple[object, ...] = (white_slide(tmp_path / "white.tif"), "--slide-mpp", "0.5")
    else:
        args = (cmu_small, "--min-tissue", "1.0")
    out = tmp_path / "out"
    code, _, stderr = run(embed, *args, *FAST, "-o", out)
    assert code == 1
    lines = error_lines(stderr)
    assert len(lines) == 1 and "no patch" in lines[0] and "--min-tissue" in lines[0]
    assert not out.exists() or list(out.iterdir()) == []


def test_an_existing_store_needs_overwrite(cmu_small: Path, tmp_path: Path) -> None:
    store = tmp_path / "CMU-1-Small-Region.zarr"
    old = pd.DataFrame({"x": [0], "y": [0], "width": [1], "height": [1]})
    write_features(store, old)
    code, _, stderr = run(embed, cmu_small, *FAST, "-o", tmp_path)
    assert code == 1 and "--overwrite" in error_lines(stderr)[0]
    assert len(read_features(store)) == 1  # untouched
    code, _, stderr = run(embed, cmu_small, *FAST, "-o", tmp_path, "--overwrite")
    assert code == 0, stderr
    assert len(read_features(store)) > 1
    assert leftovers(tmp_path) == []


def test_score_needs_a_card_with_classes(cmu_small: Path, tmp_path: Path) -> None:
    code, _, stderr = run(score, cmu_small, *FAST, "-o", tmp_path / "out")
    assert code == 1
    (line,) = error_lines(stderr)
    assert "no classes" in line and "embed" in line
    assert not (tmp_path / "out").exists()


def test_score_stores_softmax_scores_with_class_names(cmu_small: Path, tmp_path: Path) -> None:
    card = tiny_card(tmp_path)
    code, _, stderr = run(score, cmu_small, "--model", card, "--random-init", "-o", tmp_path)
    assert code == 0, stderr
    feats = read_features(tmp_path / "CMU-1-Small-Region.zarr")
    assert feats.scores is not None and feats.embeddings is not None
    assert feats.scores.shape == (len(feats), 3) and feats.embeddings.shape == (len(feats), 96)
    np.testing.assert_allclose(feats.scores.sum(axis=1), 1.0, atol=1e-5)
    assert feats.attrs["classes"] == ["stroma", "tumour", "other"]
    assert list(feats.table().columns[-3:]) == ["stroma", "tumour", "other"]


def test_a_failure_mid_slide_leaves_no_store(
    cmu_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = tiny_card(tmp_path, classes=False)
    config = EngineConfig(model=card, random_init=True, tissue=False, batch_size=4)
    calls = []
    original = InferenceModel.__call__

    def failing(self: InferenceModel, pixels: torch.Tensor) -> object:
        calls.append(len(pixels))
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return original(self, pixels)

    monkeypatch.setattr(InferenceModel, "__call__", failing)
    out = tmp_path / "out" / "cmu.zarr"
    result = embed_slide(cmu_small, out, config)
    assert result.error is not None and "device lost" in result.error and "bug" in result.error
    assert len(calls) == 3
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_features_writer_streams_the_same_store_as_write_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 1000
    table = pd.DataFrame(
        {
            "x": np.arange(n) * 10,
            "y": np.arange(n) * 3,
            "width": 224,
            "height": 224,
            "level": 0,
            "tissue_fraction": rng.random(n).astype(np.float32),
        }
    )
    emb = rng.normal(size=(n, 40)).astype(np.float16)
    scores = rng.random((n, 2)).astype(np.float32)
    write_features(tmp_path / "ref.zarr", table, embeddings=emb, scores=scores, classes=["a", "b"])
    with FeaturesWriter(tmp_path / "s.zarr", table, embed_dim=40, classes=["a", "b"]) as w:
        for start in range(0, n, 77):  # batches that straddle the chunk boundaries
            w.write(start, embeddings=emb[start : start + 77], scores=scores[start : start + 77])
    ref, got = read_features(tmp_path / "ref.zarr"), read_features(tmp_path / "s.zarr")
    for name in ("coords", "embeddings", "scores", "level", "tissue_fraction"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    assert got.attrs["classes"] == ["a", "b"]

    writer = FeaturesWriter(tmp_path / "bad.zarr", table, embed_dim=40)
    with pytest.raises(ValueError, match="in order"):
        writer.write(5, embeddings=emb[:5])
    writer.write(0, embeddings=emb[:500])
    with pytest.raises(ValueError, match="only 500 of 1000"):
        writer.close()
    writer.abort()
    assert not (tmp_path / "bad.zarr").exists() and leftovers(tmp_path) == []


def test_scheduler_names() -> None:
    assert parse_scheduler(None) == ("threads", None)
    assert parse_scheduler("processes:3") == ("processes", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", None)
    with pytest.raises(ValueError, match="scheduler"):
        parse_scheduler("gpu-farm")


@pytest.mark.slow
def test_a_local_cluster_of_processes_gives_the_local_result(
    cmu_small: Path, tmp_path: Path
) -> None:
    distributed = pytest.importorskip("distributed")
    card = tiny_card(tmp_path, classes=False)
    slides = []
    for name in ("a.svs", "b.svs"):
        os.symlink(cmu_small, tmp_path / name)
        slides.append(tmp_path / name)
    config = EngineConfig(model=card, random_init=True, precision="fp32")
    local = run_slides(slides, tmp_path / "local", config)
    assert all(r.error is None for r in local)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        remote = run_slides(
            slides, tmp_path / "remote", config, scheduler=cluster.scheduler_address
        )
    assert [r.error for r in remote] == [None, None]
    for slide in slides:
        a = read_features(tmp_path / "local" / f"{slide.stem}.zarr")
        b = read_features(tmp_path / "remote" / f"{slide.stem}.zarr")
        np.testing.assert_array_equal(a.coords, b.coords)
        assert a.embeddings is not None and b.embeddings is not None
        np.testing.assert_allclose(
            a.embeddings.astype(np.float32), b.embeddings.astype(np.float32), atol=2e-3, rtol=2e-3
        )
        assert b.attrs["card_hash"] == a.attrs["card_hash"]


def test_help_texts_have_examples() -> None:
    for command in (embed, score):
        code, text, _ = run(command, "--help")
        assert code == 0 and "Example" in text and "--random-init" in text
