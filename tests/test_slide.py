"""open_slide on every shared slide: metadata, pixels, errors, threads."""

from __future__ import annotations

import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.slides import READABLE, UNREADABLE, Expected
from wsi_ai.errors import (
    MissingMppError,
    SlideNotFoundError,
    UnsupportedSlideError,
    WsiAiError,
)
from wsi_ai.slide import open_slide
from wsi_ai.slide.backends import to_rgb
from wsi_ai.slide.slide import choose_level


@pytest.mark.parametrize("expected", READABLE, ids=lambda e: Path(e.relpath).name)
def test_metadata_of_every_readable_slide(shared, expected: Expected) -> None:
    with open_slide(shared(expected.relpath)) as slide:
        assert slide.backend == expected.backend
        assert slide.vendor == expected.vendor
        assert slide.dimensions == expected.dimensions
        assert slide.level_count == expected.levels
        assert slide.level_downsamples[0] == 1.0
        assert list(slide.level_downsamples) == sorted(slide.level_downsamples)
        if expected.mpp is None:
            assert slide.mpp is None
            with pytest.raises(MissingMppError, match="--slide-mpp"):
                slide.require_mpp()
        else:
            assert slide.mpp is not None and slide.mpp.source == "metadata"
            assert slide.mpp.x == pytest.approx(expected.mpp, rel=1e-6)
        assert slide.objective_power == expected.objective
        assert slide.modality == expected.modality
        assert set(slide.associated_image_names) == set(expected.associated)
        info = slide.info()
        assert info["file_size"] == shared(expected.relpath).stat().st_size
        assert "pixels" not in str(info).lower()


@pytest.mark.parametrize("relpath", UNREADABLE)
def test_unreadable_dicom_fails_cleanly(shared, relpath: str) -> None:
    path = shared(relpath)
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "DICOM" in message


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideNotFoundError, match="directory"):
        open_slide(tmp_path)


@pytest.mark.parametrize("keep", [5000, 1_000_000])
def test_truncated_slide_is_an_error_not_a_crash(
    cmu_small: Path, tmp_path: Path, keep: int
) -> None:
    broken = tmp_path / "truncated.svs"
    broken.write_bytes(cmu_small.read_bytes()[:keep])
    with pytest.raises(WsiAiError) as info, open_slide(broken) as slide:
        slide.read_region((0, 0), 0, slide.dimensions)
    assert str(broken) in str(info.value)


def test_not_a_slide(tmp_path: Path) -> None:
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    with pytest.raises(UnsupportedSlideError, match=r"notes\.svs"):
        open_slide(text)


def test_mpp_override_wins_and_objective_power_fallback(shared) -> None:
    path = shared("slides/tcga-cr-7395-01a-01-ts1.svs")
    with open_slide(path, mpp_override=0.25) as slide:
        assert slide.mpp is not None and (slide.mpp.x, slide.mpp.source) == (0.25, "user")
    with open_slide(shared("slides/CMU-1-Small-Region.svs"), mpp_override=(0.3, 0.31)) as slide:
        assert slide.mpp is not None and (slide.mpp.x, slide.mpp.y) == (0.3, 0.31)


def test_objective_power_gives_mpp_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    from wsi_ai.slide.metadata import resolve_mpp

    mpp = resolve_mpp({"openslide.objective-power": "40"}, None, "x.svs")
    assert mpp is not None and mpp.x == pytest.approx(0.25) and mpp.source == "objective-power"
    assert "--slide-mpp" in caplog.text


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_read_region_is_rgb_uint8_and_outside_is_white(cmu_small: Path, backend: str) -> None:
    with open_slide(cmu_small, backend=backend) as slide:
        before = slide.read_region((-10, -10), 0, (20, 20))
        assert (before[:10] == 255).all() and (before[:, :10] == 255).all()
        w, h = slide.dimensions
        region = slide.read_region((w - 10, h - 10), 0, (20, 30))
        assert region.shape == (30, 20, 3) and region.dtype == np.uint8
        assert (region[15:, :] == 255).all() and (region[:, 15:] == 255).all()
        assert region[:10, :10].std() > 0  # real tissue/glass pixels inside


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (100, 50, 0, 255)
    rgba[0, 1] = (100, 50, 0, 0)
    rgba[1, 0] = (0, 0, 0, 128)
    rgb = to_rgb(rgba)
    assert rgb[0, 0].tolist() == [100, 50, 0]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[1, 0].tolist() == [127, 127, 127]
    assert to_rgb(np.full((2, 2), 7, np.uint8)).shape == (2, 2, 3)


def test_read_at_target_mpp_picks_the_right_level(shared) -> None:
    path = shared("slides/ndpi-fluorescence-dapi.ndpi")
    with open_slide(path) as slide:
        mpp0 = slide.require_mpp()
        # 4x the level-0 MPP is exactly level 2: no resize, same pixels as a level-2 read.
        patch = slide.read_region_at_mpp((512, 512), (64, 64), mpp0 * 4)
        direct = slide.read_region((512, 512), 2, (64, 64))
        assert np.array_equal(patch, direct)
        # 3x sits between levels 1 (2x) and 2 (4x): read from level 1 and shrink a little.
        assert slide.best_level_for_downsample(3.0) == 1
        assert slide.read_region_at_mpp((0, 0), (50, 40), mpp0 * 3).shape == (40, 50, 3)


def test_choose_level() -> None:
    ds = (1.0, 4.0, 16.0, 64.0)
    assert choose_level(ds, 1.0) == 0
    assert choose_level(ds, 3.9) == 0
    assert choose_level(ds, 4.0) == 1
    assert choose_level(ds, 4.001) == 1
    assert choose_level(ds, 1000.0) == 3
    assert choose_level(ds, 0.5) == 0


def test_upsampling_read_warns(shared, caplog: pytest.LogCaptureFixture) -> None:
    with open_slide(shared("slides/dicom/camelyon-he-multiframe.dcm")) as slide:
        patch = slide.read_region_at_mpp((0, 0), (100, 100), 0.5)
    assert patch.shape == (100, 100, 3)
    assert "upsampling" in caplog.text


def test_thumbnail_fits_and_keeps_aspect(shared) -> None:
    with open_slide(shared("slides/ndpi-fluorescence-dapi.ndpi")) as slide:
        thumb = slide.thumbnail(300)
    assert max(thumb.shape[:2]) == 300
    assert thumb.shape[1] / thumb.shape[0] == pytest.approx(3968 / 4864, rel=0.02)


def test_banded_level_reads_do_not_depend_on_the_band_size(cmu_small: Path, monkeypatch) -> None:
    import wsi_ai.slide.slide as slide_module

    with open_slide(cmu_small) as slide:
        direct = slide_module.resize(slide.read_region((0, 0), 0, slide.dimensions), (374, 500))
        results = []
        for rows in (300, 100):  # both multiples of the whole-factor pre-shrink (5)
            monkeypatch.setattr(slide_module, "BAND_PIXELS", rows * 2220)
            results.append(slide.read_level(0, max_size=500))
    a, b = results
    assert a.shape == b.shape == direct.shape
    # Bands map onto whole output rows: results agree exactly away from the last band.
    assert np.array_equal(a[:400], b[:400])
    # And they are a faithful shrink of the whole level (only the resampling differs).
    assert np.abs(a.astype(int) - direct.astype(int)).mean() < 4.0


def test_associated_images(cmu_small: Path) -> None:
    with open_slide(cmu_small) as slide:
        label = slide.associated_image("label")
        assert label.ndim == 3 and label.shape[2] == 3
        with pytest.raises(KeyError):
            slide.associated_image("nope")


def test_reads_from_many_threads_agree(shared) -> None:
    for relpath in ("slides/CMU-1-Small-Region.svs", "slides/skin-he-striped.tif"):
        with open_slide(shared(relpath)) as slide:
            w, h = slide.dimensions
            rng = np.random.default_rng(1)
            spots = [
                (int(rng.integers(0, w - 64)), int(rng.integers(0, h - 64))) for _ in range(64)
            ]
            serial = [slide.read_region(p, 0, (64, 64)) for p in spots]
            with ThreadPoolExecutor(8) as pool:
                parallel = list(pool.map(lambda p: slide.read_region(p, 0, (64, 64)), spots))
            assert all(np.array_equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_slide_pickles_by_path(cmu_small: Path) -> None:
    with open_slide(cmu_small, mpp_override=0.5) as slide:
        clone = pickle.loads(pickle.dumps(slide))
        try:
            assert clone.dimensions == slide.dimensions and clone.require_mpp() == 0.5
        finally:
            clone.close()


def test_backend_can_be_forced(cmu_small: Path, tmp_path: Path) -> None:
    with open_slide(cmu_small, backend="tiffslide") as a, open_slide(cmu_small) as b:
        assert a.backend == "tiffslide" and b.backend == "openslide"
        assert a.dimensions == b.dimensions
        assert a.require_mpp() == pytest.approx(b.require_mpp())
    with pytest.raises(ValueError):
        open_slide(cmu_small, backend="bioformats")
    copy = tmp_path / "copy.svs"
    shutil.copy(cmu_small, copy)
    with open_slide(copy) as slide:
        slide.close()
        with pytest.raises(WsiAiError):
            slide.read_region((0, 0), 0, (4, 4))


def test_black_scanner_padding_does_not_make_brightfield_fluorescence() -> None:
    from wsi_ai.slide.slide import detect_modality

    image = np.zeros((200, 200, 3), dtype=np.uint8)  # 55% black padding
    image[90:, :] = 235  # glass
    image[150:160, 20:60] = (200, 120, 170)  # a little pink tissue
    assert detect_modality(image) == "brightfield"
    dark_field = np.full((200, 200, 3), 8, dtype=np.uint8)
    dark_field[50:80, 50:90] = (20, 30, 180)  # DAPI-blue nuclei on black
    assert detect_modality(dark_field) == "fluorescence"


def test_editor_dpi_is_not_taken_for_a_microscope_mpp(tmp_path: Path, caplog) -> None:
    import tifffile

    path = tmp_path / "photo.tif"
    tifffile.imwrite(
        path, np.full((64, 64, 3), 200, np.uint8), resolution=(72, 72), resolutionunit="INCH"
    )
    with open_slide(path) as slide:
        assert slide.mpp is None
    assert "--slide-mpp" in caplog.text


def test_corrupt_tile_data_is_a_read_error_naming_the_file(cmu_small: Path, tmp_path: Path) -> None:
    import tifffile

    data = bytearray(cmu_small.read_bytes())
    with tifffile.TiffFile(cmu_small) as tif:
        page = tif.pages[0]
        for index in range(30, 60):
            start, count = page.dataoffsets[index], page.databytecounts[index]
            data[start : start + count] = bytes(count)
    broken = tmp_path / "broken.svs"
    broken.write_bytes(bytes(data))
    with open_slide(broken) as slide:
        with pytest.raises(WsiAiError, match=r"broken\.svs"):
            slide.read_region((0, 0), 0, slide.dimensions)
        with pytest.raises(WsiAiError, match=r"broken\.svs"):
            slide.as_zarr()["0"][...]
