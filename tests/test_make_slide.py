"""The synthetic benchmark slide: an Aperio SVS of real tissue that OpenSlide reads right."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile
import tiffslide

from benchmarks.make_slide import SlideSpec, default_sources, main, make_slide, tissue_layout
from wsi_ai.errors import InvalidInputError, OutputExistsError

SIZE = (4000, 3000)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)[..., 1].astype(float)


def _read(path: Path, level: int = 0) -> np.ndarray:
    with openslide.OpenSlide(path) as s:
        img = s.read_region((0, 0), level, s.level_dimensions[level])
    return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def bundled(cmu_small: Path, skin_striped: Path) -> list[Path]:
    return [cmu_small, skin_striped]


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory, bundled: list[Path]) -> SlideSpec:
    out = tmp_path_factory.mktemp("synth") / "slide.svs"
    return make_slide(out, SIZE, seed=3, sources=bundled)


def test_openslide_reads_it_as_aperio_with_levels_and_mpp(slide: SlideSpec) -> None:
    with openslide.OpenSlide(slide.path) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert s.properties["openslide.objective-power"] == "20"
        assert s.dimensions == SIZE
        assert s.level_count == 4
        assert s.level_dimensions == ((4000, 3000), (1000, 750), (250, 187), (62, 46))
        assert s.level_downsamples[1] == pytest.approx(4)
        assert s.level_downsamples[3] == pytest.approx(64, rel=0.02)
        assert set(s.associated_images) == {"thumbnail", "label", "macro"}
        assert s.properties["tiff.ImageDescription"].startswith(
            "Aperio Image Library v12.0.0 \r\n4000x3000 [0,0 4000x3000] (256x256) JPEG/RGB Q=80|"
        )
    assert slide.level_dimensions == ((4000, 3000), (1000, 750), (250, 187), (62, 46))
    with tifffile.TiffFile(slide.path) as tf:
        assert tf.is_bigtiff
        level0, thumb = tf.pages[0], tf.pages[1]
        assert isinstance(level0, tifffile.TiffPage) and isinstance(thumb, tifffile.TiffPage)
        assert level0.is_tiled and level0.tilewidth == 256
        assert not thumb.is_tiled  # the thumbnail is a strip page, as Aperio writes


def test_islands_are_real_he_on_glass(slide: SlideSpec) -> None:
    img = _read(slide.path)
    mask = slide.tissue_mask
    core = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    empty = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert core.sum() > 50 and empty.sum() > 200

    def pixels(where: np.ndarray) -> np.ndarray:
        up = np.kron(where, np.ones((64, 64), bool))[: SIZE[1], : SIZE[0]]
        return img[up]

    tissue, glass = pixels(core), pixels(empty)
    assert np.abs(glass.mean(0) - 240).max() < 4 and glass.std() < 4
    assert _saturation(glass[None]).mean() < 8
    assert _saturation(tissue[None]).mean() > 40
    r, g, b = tissue.mean(0)
    assert g < r - 15 and g < b - 15  # eosin pink and haematoxylin purple both lack green
    assert tissue.std() > 25  # texture, not a flat colour


def test_mask_matches_tissue_pixels_at_downsample_64(slide: SlideSpec) -> None:
    low = _read(slide.path, 3)
    seen = _saturation(low) > 20
    truth = slide.tissue_mask[: low.shape[0], : low.shape[1]]
    assert slide.tissue_mask.shape == (47, 63)
    assert 0.25 <= slide.tissue_mask.mean() <= 0.4
    assert (seen == truth).mean() > 0.9
    assert (seen & truth).sum() / (seen | truth).sum() > 0.75


def test_decoders_agree_on_colours(slide: SlideSpec, tmp_path: Path, bundled: list[Path]) -> None:
    ref = _read(slide.path)
    with tiffslide.TiffSlide(slide.path) as ts:
        other = np.asarray(ts.read_region((0, 0), 0, SIZE).convert("RGB"))
    np.testing.assert_array_equal(ref, other)
    # Aperio's own flavour: RGB JPEG without chroma subsampling decodes to nearly the same
    rgb = make_slide(tmp_path / "rgb.svs", SIZE, seed=3, sources=bundled, jpeg_rgb=True)
    rgb_px = _read(rgb.path)
    assert np.abs(rgb_px.astype(int) - ref).mean() < 4
    np.testing.assert_array_equal(tifffile.imread(rgb.path, key=0), rgb_px)


def test_same_seed_same_bytes(tmp_path: Path, bundled: list[Path]) -> None:
    a = make_slide(tmp_path / "a.svs", (3000, 2000), seed=7, sources=bundled, pen_marks=True)
    b = make_slide(tmp_path / "b.svs", (3000, 2000), seed=7, sources=bundled, pen_marks=True)
    c = make_slide(tmp_path / "c.svs", (3000, 2000), seed=8, sources=bundled, pen_marks=True)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()
    np.testing.assert_array_equal(a.tissue_mask, b.tissue_mask)
    assert not np.array_equal(a.tissue_mask, c.tissue_mask)


def test_pen_stroke_and_dark_border(tmp_path: Path, bundled: list[Path]) -> None:
    spec = make_slide(
        tmp_path / "art.svs", SIZE, seed=3, sources=bundled, pen_marks=True, dark_border=True
    )
    img = _read(spec.path)
    assert img[:, :20].mean() < 60  # the dark slide edge
    ys, xs = np.nonzero(spec.artefact_mask[:, 2:] & ~spec.tissue_mask[:, 2:])  # pen on glass
    assert len(ys) > 5
    ink = [
        (img[y * 64 : (y + 1) * 64, x * 64 : (x + 1) * 64].max(axis=2) < 130).any()
        for y, x in zip(ys, xs + 2, strict=True)
    ]
    assert np.mean(ink) > 0.7
    plain = _read(make_slide(tmp_path / "plain.svs", SIZE, seed=3, sources=bundled).path)
    assert plain[:, :20].mean() > 200


def test_planted_region_changes_only_that_region(
    tmp_path: Path, cmu_small: Path, skin_striped: Path
) -> None:
    layout = tissue_layout(SIZE, seed=5)
    region = np.zeros_like(layout.mask)
    ys, xs = np.nonzero(layout.mask)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    region[cy - 6 : cy + 6, cx - 6 : cx + 6] = True
    base = make_slide(tmp_path / "base.svs", SIZE, seed=5, sources=[cmu_small])
    planted = make_slide(
        tmp_path / "plant.svs", SIZE, seed=5, sources=[cmu_small], plant=[(region, skin_striped)]
    )
    np.testing.assert_array_equal(base.tissue_mask, planted.tissue_mask)
    assert planted.plant_masks[0].sum() == (region & layout.mask).sum() > 0
    a, b = _read(base.path).astype(np.int16), _read(planted.path).astype(np.int16)
    inside = np.kron(planted.plant_masks[0], np.ones((64, 64), bool))[: SIZE[1], : SIZE[0]]
    near = cv2.dilate(region.astype(np.uint8), np.ones((21, 21), np.uint8)).astype(bool)
    far = ~np.kron(near, np.ones((64, 64), bool))[: SIZE[1], : SIZE[0]]
    assert np.abs(a - b)[inside].mean() > 20
    assert np.abs(a - b)[far].max() == 0


def test_refuses_to_overwrite_and_checks_inputs(tmp_path: Path, bundled: list[Path]) -> None:
    out = tmp_path / "x.svs"
    out.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        make_slide(out, (1000, 800), sources=bundled)
    assert out.read_bytes() == b"keep"
    with pytest.raises(InvalidInputError):
        make_slide(tmp_path / "y.svs", (1000, 800), sources=bundled, tile=250)
    with pytest.raises(InvalidInputError):
        make_slide(
            tmp_path / "y.svs", (1000, 800), sources=bundled, plant=[(np.ones((3, 3)), bundled[0])]
        )
    assert not list(tmp_path.glob("y.svs*"))


def test_cli_writes_and_reports(
    tmp_path: Path, cmu_small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.svs"
    args = [str(out), "--size", "1200x900", "--seed", "2", "--source", str(cmu_small)]
    assert main(args) == 0
    assert "CMU-1-Small-Region.svs" in capsys.readouterr().out
    with openslide.OpenSlide(out) as s:
        assert s.dimensions == (1200, 900)
    assert main(args) == 1  # exists, no --overwrite
    assert main([*args, "--overwrite"]) == 0


def test_default_sources_use_the_shared_real_tissue(tmp_path: Path, shared: object) -> None:
    shared("slides/tcga-cr-7395-01a-01-ts1.svs")  # type: ignore[operator]
    spec = make_slide(tmp_path / "d.svs", (2000, 1500), seed=1)
    assert set(spec.sources) == {
        "CMU-1-Small-Region.svs",
        "tcga-cr-7395-01a-01-ts1.svs",
        "skin-he-striped.tif",
        "crc-val-he-7k-subset",
    }


def test_odd_size_and_240_tiles_keep_the_pyramid_consistent(
    tmp_path: Path, bundled: list[Path]
) -> None:
    spec = make_slide(tmp_path / "odd.svs", (2999, 2001), seed=4, sources=bundled, tile=240)
    with openslide.OpenSlide(spec.path) as s:
        assert s.level_dimensions == ((2999, 2001), (749, 500), (187, 125), (46, 31))
        assert s.properties["openslide.level[0].tile-width"] == "240"
    full, level1, level2 = _read(spec.path), _read(spec.path, 1), _read(spec.path, 2)
    for img, k in ((level1, 4), (level2, 16)):
        h, w = img.shape[0] - 1, img.shape[1] - 1

        def error(dy: int, img: np.ndarray = img, k: int = k, h: int = h, w: int = w) -> float:
            block = full[dy : dy + h * k, : w * k].reshape(h, k, w, k, 3).mean(axis=(1, 3))
            return float(np.abs(block - img[:h, :w]).mean())

        assert error(0) < 4.5  # JPEG noise only
        assert error(0) < error(k // 2)  # and aligned with level 0
    assert spec.tissue_mask.shape == (32, 47)


def test_without_shared_data_the_bundled_slides_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSI_AI_TEST_DATA", str(tmp_path / "nowhere"))
    found = default_sources()
    assert [p.name for p in found] == ["CMU-1-Small-Region.svs", "skin-he-striped.tif"]
    assert all(p.exists() for p in found)
