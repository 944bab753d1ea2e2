"""Decode-once patch readers: the tile plan, the planned CPU reader, the device reader.

The planned reader must give exactly the patches of the LRU reader (same decoder); the
device reader (run here on the CPU, where torchvision decodes with libjpeg-turbo too) the
same within one grey level (its resize is the same arithmetic in float32). Both are checked
on the bundled Aperio slide (RGB JPEG tiles), generated YCbCr and RGB-JPEG slides, a striped
TIFF that has no native tiles, and a grid that runs off the slide's edge.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.make_slide import make_slide
from wsi_ai.engine import batching
from wsi_ai.engine.batching import open_batches
from wsi_ai.engine.device_reader import DeviceBatches, area_weights, resize_batch
from wsi_ai.engine.loader import PatchBatches
from wsi_ai.engine.tile_plan import LevelGeometry, TilePlan, patch_spans
from wsi_ai.engine.tile_reader import PlannedBatches, TileSource
from wsi_ai.errors import SlideReadError
from wsi_ai.slide import open_slide
from wsi_ai.tiling import GridConfig, PatchGrid, plan_patches
from wsi_ai.tissue import TissueConfig


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slides")
    slides = {}
    for name, rgb in (("ycbcr", False), ("rgb", True)):
        path = root / f"{name}.svs"
        make_slide(path, (2600, 1800), seed=3, mpp=0.25, jpeg_rgb=rgb)
        slides[name] = path
    return slides


def _slide(name: str, generated: dict[str, Path], cmu_small: Path, skin: Path) -> Path:
    return {"cmu": cmu_small, "skin": skin}.get(name) or generated[name]


def _grid(slide: object, mpp: float, size: int, edge: str = "inside") -> PatchGrid:
    return plan_patches(slide, TissueConfig(), GridConfig(mpp=mpp, size=size, edge=edge))  # type: ignore[arg-type]


def _read(batches: object) -> np.ndarray:
    return np.concatenate([b.pixels.cpu().numpy().copy() for b in batches])  # type: ignore[attr-defined]


CASES = [
    ("cmu", 0.5, 224, "inside"),  # level 0 as is, RGB JPEG tiles of 240 px
    ("cmu", 0.7, 96, "pad"),  # a fractional shrink, patches off the edges
    ("cmu", 0.25, 112, "inside"),  # upsampled
    ("ycbcr", 0.5, 224, "pad"),  # a 2x shrink of 448 px reads, YCbCr 4:2:0 tiles
    ("rgb", 1.0, 128, "inside"),
    ("skin", 1.0, 128, "pad"),  # striped TIFF: read_region chunks, no native tiles
]


@pytest.mark.parametrize(("name", "mpp", "size", "edge"), CASES)
def test_planned_and_device_readers_match_the_cached_reader(
    name: str,
    mpp: float,
    size: int,
    edge: str,
    generated: dict[str, Path],
    cmu_small: Path,
    skin_striped: Path,
) -> None:
    path = _slide(name, generated, cmu_small, skin_striped)
    override = 0.5 if name == "skin" else None
    with open_slide(path, mpp_override=override) as slide:
        grid = _grid(slide, mpp, size, edge)
        assert len(grid) > 0
        spec, table = grid.spec, grid.table
        reference = _read(PatchBatches(slide, spec, table, 7, threads=2))
        planned = PlannedBatches(slide, spec, table, 7, threads=2)
        assert np.array_equal(_read(planned), reference)
        # every tile the table needs was decoded exactly once
        assert planned.stats.tiles == planned.plan.unique_tiles <= planned.plan.touches
        source = TileSource(slide, spec.level)
        if not source.jpeg:
            assert name == "skin" and not source.native
            return
        device = _read(DeviceBatches(slide, spec, table, 7, "cpu", source=source))
        diff = np.abs(device.astype(np.int16) - reference.astype(np.int16))
        print(f"{name} {mpp} µm/px: device reader max abs difference {diff.max()}")
        assert diff.max() <= 1 and diff.mean() < 0.2


def test_jpeg_files_decode_like_the_slide(generated: dict[str, Path], cmu_small: Path) -> None:
    from torchvision.io import decode_jpeg

    for path in (cmu_small, generated["ycbcr"], generated["rgb"]):
        with open_slide(path) as slide:
            source = TileSource(slide, 0)
            region = slide.read_region((0, 0), 0, (64, 64))
        assert source.jpeg
        for tile in (0, source.geometry.cols + 1):
            raw = source.raw(tile)
            file = torch.frombuffer(bytearray(source.jpeg_file(raw)), dtype=torch.uint8)
            pixels = decode_jpeg(file).permute(1, 2, 0).numpy()
            assert np.array_equal(pixels, source.decode_raw(tile, raw)), path.name
        assert np.array_equal(source.decode(0)[:64, :64], region), path.name  # as OpenSlide


def test_the_plan_decodes_each_tile_once_and_keeps_it_until_its_last_batch() -> None:
    rng = np.random.default_rng(0)
    geometry = LevelGeometry(width=1000, height=700, tile_w=128, tile_h=96)
    lx = rng.integers(-100, 1000, 300)
    ly = rng.integers(-100, 700, 300)
    side, size = 150, 13
    plan = TilePlan(lx, ly, side, geometry, size)
    r0, r1, c0, c1 = patch_spans(lx, ly, side, geometry)
    held: set[int] = set()
    decoded: list[int] = []
    peak = 0
    for batch in plan.batches:
        decoded += batch.decode.tolist()
        held |= set(batch.decode.tolist())
        peak = max(peak, len(held))
        for i in range(batch.start, batch.stop):
            for r in range(r0[i], r1[i] + 1):
                for c in range(c0[i], c1[i] + 1):
                    assert r * geometry.cols + c in held
        held -= set(batch.release.tolist())
    assert len(decoded) == len(set(decoded)) == plan.unique_tiles
    assert not held and peak == plan.peak_tiles
    assert [len(b) for b in plan.batches] == [13] * 23 + [1]
    empty = TilePlan(lx[:0], ly[:0], side, geometry, size)
    assert empty.batches == [] and empty.peak_tiles == 0


@pytest.mark.parametrize("side", [448, 314, 97, 224])
def test_area_resize_is_opencv_inter_area(side: int) -> None:
    rng = np.random.default_rng(side)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    expected = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA if side > 224 else 1)
    raw = torch.from_numpy(image).permute(2, 0, 1)[None]
    got = resize_batch(raw, 224)[0].permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    weights = area_weights(side, 224, torch.device("cpu"))
    assert torch.allclose(weights.sum(dim=1), torch.ones(224)) or side < 224


def test_open_batches_picks_the_reader_and_falls_back(
    cmu_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_slide(cmu_small) as slide:
        grid = _grid(slide, 0.5, 224)
        batches, reader = open_batches(slide, grid.spec, grid.table, 8, device="cpu")
        assert reader == "cpu" and isinstance(batches, PlannedBatches)
        # asked for the GPU with none here: the CPU reader, not an error
        _, reader = open_batches(slide, grid.spec, grid.table, 8, device="cpu", decode="gpu")
        assert reader == "cpu"
        monkeypatch.setattr(batching, "HOST_TILE_BUDGET", 0)
        batches, reader = open_batches(slide, grid.spec, grid.table, 8, device="cpu")
        assert reader == "cache" and isinstance(batches, PatchBatches)
        with pytest.raises(ValueError, match="decode must be one of"):
            open_batches(slide, grid.spec, grid.table, 8, decode="nvjpeg")


def test_a_corrupt_tile_names_the_file(cmu_small: Path, tmp_path: Path) -> None:
    import tifffile

    broken = tmp_path / "broken.svs"
    data = bytearray(cmu_small.read_bytes())
    with tifffile.TiffFile(cmu_small) as tif:
        page = tif.series[0].levels[0].keyframe
        offset, count = int(page.dataoffsets[5]), int(page.databytecounts[5])
    data[offset + 2 : offset + count] = b"\x00" * (count - 2)  # keep SOI, wipe the rest
    broken.write_bytes(bytes(data))
    with open_slide(cmu_small) as slide:
        spec = _grid(slide, 0.5, 224).spec
    table = pd.DataFrame({"x": np.arange(0, 2000, 200), "y": np.full(10, 0)})
    with (
        open_slide(broken) as slide,
        pytest.raises(SlideReadError, match=r"tile .* of level 0") as err,
    ):
        _read(PlannedBatches(slide, spec, table, 4))
    assert "broken.svs" in str(err.value)
