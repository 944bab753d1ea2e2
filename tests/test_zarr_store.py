"""The lazy Zarr pyramid: same pixels as read_region, lazy, read-only, usable from Dask."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from tests.slides import READABLE, Expected
from wsi_ai.slide import open_slide
from wsi_ai.slide.zarr_store import LazySlideStore, level_chunk_shape


def _windows(rng: np.random.Generator, width: int, height: int, n: int):
    for _ in range(n):
        w = int(rng.integers(1, min(300, width) + 1))
        h = int(rng.integers(1, min(300, height) + 1))
        yield int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h


@pytest.mark.parametrize("expected", READABLE, ids=lambda e: Path(e.relpath).name)
def test_random_windows_match_read_region(shared, expected: Expected) -> None:
    rng = np.random.default_rng(7)
    with open_slide(shared(expected.relpath)) as slide:
        group = slide.as_zarr()
        assert sorted(group.array_keys(), key=int) == [str(i) for i in range(slide.level_count)]
        for level in slide.levels:
            arr = group[str(level.index)]
            assert arr.shape == (level.height, level.width, 3) and arr.dtype == np.uint8
            exact = float(level.downsample).is_integer()
            for x, y, w, h in _windows(rng, level.width, level.height, 12):
                window = arr[y : y + h, x : x + w]
                direct = slide.read_region(
                    (round(x * level.downsample), round(y * level.downsample)), level.index, (w, h)
                )
                if exact:
                    assert np.array_equal(window, direct), (level.index, x, y, w, h)
                else:
                    # OpenSlide resamples by a fraction of a pixel at non-integer downsamples.
                    diff = np.abs(window.astype(int) - direct.astype(int))
                    assert diff.mean() < 12, (level.index, x, y, w, h, diff.mean())


def test_whole_level_through_dask_equals_read_region(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide:
        lazy = da.from_zarr(slide.as_zarr()["0"])
        assert lazy.chunksize == (240, 240, 3)  # the SVS's own tiles
        assert np.array_equal(
            lazy.compute(scheduler="threads"), slide.read_region((0, 0), 0, slide.dimensions)
        )


def test_chunks_are_decoded_only_when_touched(cmu_small: Path, monkeypatch) -> None:
    with open_slide(cmu_small) as slide:
        calls: list[tuple[int, int, int]] = []
        original = LazySlideStore.chunk_bytes

        def spy(self: LazySlideStore, level: int, cy: int, cx: int) -> bytes:
            calls.append((level, cy, cx))
            return original(self, level, cy, cx)

        monkeypatch.setattr(LazySlideStore, "chunk_bytes", spy)
        group = slide.as_zarr()
        assert calls == []  # opening decodes nothing
        group["0"][10:20, 10:20]
        assert calls == [(0, 0, 0)]
        group["0"][10:20, 10:20]  # cached: no second decode
        assert calls == [(0, 0, 0)]
        group["0"][230:250, 230:250]
        assert sorted(set(calls)) == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]


def test_group_metadata_and_read_only(shared) -> None:
    with open_slide(shared("slides/ndpi-fluorescence-dapi.ndpi")) as slide:
        group = slide.as_zarr()
        meta = group.attrs["wsi_ai"]
        assert meta["level_downsamples"] == list(slide.level_downsamples)
        assert meta["mpp"] == pytest.approx([slide.mpp.x, slide.mpp.y])
        datasets = group.attrs["multiscales"][0]["datasets"]
        assert [d["path"] for d in datasets] == [str(i) for i in range(7)]
        assert datasets[3]["mpp"][0] == pytest.approx(slide.mpp.y * 8)
        # NDPI reports full-width strips as tiles: we use square 512 chunks instead.
        assert level_chunk_shape(slide, 0) == (512, 512)
        with pytest.raises(Exception):  # noqa: B017 - zarr raises its own read-only error type
            group["0"][0:1, 0:1] = 0
        with pytest.raises(Exception):  # noqa: B017
            zarr.open_group(group.store, mode="w")


def test_edge_chunks_are_padded_white_but_arrays_are_exact(shared) -> None:
    with open_slide(shared("slides/skin-he-striped.tif")) as slide:
        arr = slide.as_zarr()["0"]
        w, h = slide.dimensions
        corner = arr[h - 5 : h, w - 5 : w]
        assert corner.shape == (5, 5, 3)
        assert np.array_equal(corner, slide.read_region((w - 5, h - 5), 0, (5, 5)))


def test_tiled_tiff_levels_are_decoded_natively(cmu_small: Path, shared) -> None:
    with open_slide(cmu_small) as slide:
        store = slide.as_zarr().store
        assert isinstance(store, LazySlideStore) and store._native is not None
        assert store._native.tile_shape(0) == (240, 240)
        tile = store._native.decode(0, 3, 4)  # the SVS's own tile, no read_region involved
        assert np.array_equal(tile, slide.read_region((4 * 240, 3 * 240), 0, (240, 240)))
    with open_slide(shared("slides/ndpi-fluorescence-dapi.ndpi")) as slide:
        store = slide.as_zarr().store
        assert isinstance(store, LazySlideStore) and store._native is None  # OpenSlide maps NDPI


def test_lazy_pyramid_works_with_process_schedulers(cmu_small: Path) -> None:
    import pickle

    with open_slide(cmu_small) as slide:
        arr = slide.as_zarr()["0"]
        clone = pickle.loads(pickle.dumps(arr))
        assert np.array_equal(clone[100:150, 200:260], arr[100:150, 200:260])
        total = da.from_zarr(arr)[:480, :480].sum().compute(scheduler="processes", num_workers=2)
        assert total == arr[:480, :480].astype(np.int64).sum()
