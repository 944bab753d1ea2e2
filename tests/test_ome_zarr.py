"""The on-disk OME-Zarr writer: every written store must validate with ome-zarr-models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr
from ome_zarr_models import v04, v05
from ome_zarr_models.common.omero import Omero

from wsi_ai.errors import MissingMppError, OutputExistsError
from wsi_ai.export.ome_zarr import convert_slide, write_ome_zarr
from wsi_ai.slide.slide import open_slide
from wsi_ai.slide.zarr_store import LazySlideStore

CMU_MPP = 0.499


def validate(path: Path, ngff: str) -> Any:
    """Validate with ome-zarr-models (raises if invalid); return the model's OME attributes."""
    group = zarr.open_group(path, mode="r", zarr_format=2 if ngff == "0.4" else 3)
    if ngff == "0.4":
        return v04.Image.from_zarr(group).ome_attributes
    attrs = v05.Image.from_zarr(group).ome_attributes
    # the v0.5 model does not type "omero": validate it with the shared model
    Omero.model_validate(group.attrs.asdict()["ome"]["omero"])
    return attrs


def ome_attrs(path: Path, ngff: str) -> dict[str, Any]:
    attrs = zarr.open_group(path, mode="r").attrs.asdict()
    return attrs if ngff == "0.4" else attrs["ome"]


def scales_of(path: Path, ngff: str) -> list[list[float]]:
    datasets = ome_attrs(path, ngff)["multiscales"][0]["datasets"]
    return [d["coordinateTransformations"][0]["scale"] for d in datasets]


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir())


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def cmu_converted(
    request: pytest.FixtureRequest, cmu_small: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, list[tuple[int, int]]]:
    ngff: str = request.param
    out = tmp_path_factory.mktemp(f"cmu-{ngff}") / "cmu.ome.zarr"
    calls: list[tuple[int, int]] = []
    with open_slide(cmu_small) as slide:
        result = convert_slide(
            slide,
            out,
            ngff=ngff,
            include_associated=True,
            progress=lambda d, t: calls.append((d, t)),
        )
    assert result == out
    return ngff, out, calls


def test_cmu_validates_and_matches_source(
    cmu_converted: tuple[str, Path, list[tuple[int, int]]], cmu_small: Path
) -> None:
    ngff, out, _ = cmu_converted
    attrs = validate(out, ngff)
    axes = attrs.multiscales[0].axes
    assert [(a.name, a.type, a.unit) for a in axes] == [
        ("c", "channel", None),
        ("y", "space", "micrometer"),
        ("x", "space", "micrometer"),
    ]
    group = zarr.open_group(out, mode="r")
    with open_slide(cmu_small) as slide:
        expected = slide.read_region((0, 0), 0, slide.dimensions)
    level0 = group["0"]
    assert level0.shape == (3, 2967, 2220)
    assert level0.dtype == np.uint8
    assert level0.chunks == (3, 512, 512)
    np.testing.assert_array_equal(level0[...].transpose(1, 2, 0), expected)


def test_cmu_generated_levels_are_2x2_means(
    cmu_converted: tuple[str, Path, list[tuple[int, int]]],
) -> None:
    ngff, out, _ = cmu_converted
    group = zarr.open_group(out, mode="r")
    # a 1-level slide gets levels until the longer side fits in 1024 px
    assert [group[k].shape for k in ("0", "1", "2")] == [
        (3, 2967, 2220),
        (3, 1484, 1110),
        (3, 742, 555),
    ]
    assert "3" not in group
    assert scales_of(out, ngff) == [
        [1.0, CMU_MPP, CMU_MPP],
        [1.0, 2 * CMU_MPP, 2 * CMU_MPP],
        [1.0, 4 * CMU_MPP, 4 * CMU_MPP],
    ]
    level0 = group["0"][...].astype(np.int64)
    level1 = group["1"][...]
    even = level0[:, :2966, :2220]
    mean = even[:, 0::2, 0::2] + even[:, 1::2, 0::2] + even[:, 0::2, 1::2] + even[:, 1::2, 1::2]
    np.testing.assert_array_equal(level1[:, :1483, :], ((mean + 2) // 4).astype(np.uint8))
    # the odd last row is averaged with itself
    last = level0[:, 2966, :].reshape(3, 1110, 2).sum(axis=2) * 2
    np.testing.assert_array_equal(level1[:, 1483, :], ((last + 2) // 4).astype(np.uint8))


def test_cmu_layout_follows_the_ngff_version(
    cmu_converted: tuple[str, Path, list[tuple[int, int]]],
) -> None:
    ngff, out, _ = cmu_converted
    if ngff == "0.4":
        zarray = json.loads((out / "0" / ".zarray").read_text())
        assert zarray["zarr_format"] == 2
        assert zarray["dimension_separator"] == "/"
        assert (out / "0" / "0" / "0" / "0").is_file()
        assert json.loads((out / ".zattrs").read_text())["multiscales"][0]["version"] == "0.4"
    else:
        meta = json.loads((out / "0" / "zarr.json").read_text())
        assert meta["zarr_format"] == 3
        assert meta["dimension_names"] == ["c", "y", "x"]
        assert json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["version"] == "0.5"
    omero = ome_attrs(out, ngff)["omero"]
    assert [(c["label"], c["color"]) for c in omero["channels"]] == [
        ("red", "FF0000"),
        ("green", "00FF00"),
        ("blue", "0000FF"),
    ]
    assert all(c["window"]["start"] == 0 and c["window"]["end"] == 255 for c in omero["channels"])


def test_cmu_progress_and_no_temp_left(
    cmu_converted: tuple[str, Path, list[tuple[int, int]]],
) -> None:
    _, out, calls = cmu_converted
    total = 6 * 5 + 3 * 3 + 2 * 2  # 512-px chunks of levels 0, 1, 2
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) == total
    assert siblings(out) == [out.name]


def test_associated_images_only_when_asked(
    cmu_converted: tuple[str, Path, list[tuple[int, int]]], cmu_small: Path, tmp_path: Path
) -> None:
    ngff, out, _ = cmu_converted
    with open_slide(cmu_small) as slide:
        names = slide.associated_image_names
        assert set(names) == {"label", "macro", "thumbnail"}
        for name in names:
            image = out / "associated" / name
            attrs = validate(image, ngff)
            assert [a.unit for a in attrs.multiscales[0].axes] == [None, None, None]
            assert scales_of(image, ngff) == [[1.0, 1.0, 1.0]]
            pixels = zarr.open_group(image, mode="r")["0"][...]
            np.testing.assert_array_equal(pixels.transpose(1, 2, 0), slide.associated_image(name))
        plain = convert_slide(slide, tmp_path / "plain.ome.zarr", ngff=ngff)  # type: ignore[arg-type]
    validate(plain, ngff)
    assert not (plain / "associated").exists()


def test_ndpi_scales_per_level(shared: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "ndpi.ome.zarr"
    with open_slide(shared("slides/ndpi-fluorescence-dapi.ndpi")) as slide:
        assert slide.level_count == 7
        assert slide.mpp is not None
        mpp = slide.mpp.x
        convert_slide(slide, out, ngff="0.5")
        expected3 = slide.read_region((0, 0), 3, slide.levels[3].dimensions)
    attrs = validate(out, "0.5")
    assert len(attrs.multiscales[0].datasets) == 7  # the slide's own pyramid is fine enough
    for i, scale in enumerate(scales_of(out, "0.5")):
        assert scale == pytest.approx([1.0, mpp * 2**i, mpp * 2**i], rel=1e-12)
    group = zarr.open_group(out, mode="r")
    assert group["6"].shape == (3, 76, 62)
    np.testing.assert_array_equal(group["3"][...].transpose(1, 2, 0), expected3)


def test_missing_mpp_raises_unless_given(shared: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "tcga.ome.zarr"
    with open_slide(shared("slides/tcga-cr-7395-01a-01-ts1.svs")) as slide:
        assert slide.mpp is None
        with pytest.raises(MissingMppError, match="--slide-mpp"):
            convert_slide(slide, out)
        assert siblings(out) == []
        convert_slide(slide, out, mpp=0.25)
    validate(out, "0.4")
    scales = scales_of(out, "0.4")
    # the level's scale comes from its real size (2221 x 1783), not the reported 2.0005
    assert scales[1] == pytest.approx([1.0, 0.25 * 3567 / 1783, 0.25 * 4443 / 2221], rel=1e-12)
    assert scales[2] == pytest.approx([1.0, 0.5 * 3567 / 1783, 0.5 * 4443 / 2221], rel=1e-12)
    attrs = zarr.open_group(out, mode="r").attrs.asdict()["wsi_ai"]
    assert attrs["mpp"] == [0.25, 0.25]
    assert attrs["mpp_source"] == "argument"


def test_existing_output_needs_overwrite(cmu_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ome.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with open_slide(cmu_small) as slide:
        with pytest.raises(OutputExistsError, match="--overwrite") as info:
            convert_slide(slide, out)
        assert str(out) in str(info.value)
        assert (out / "keep.txt").read_text() == "mine"
        assert siblings(out) == [out.name]
        # --overwrite never deletes a folder wsi-ai did not write
        with pytest.raises(OutputExistsError, match="did not write"):
            convert_slide(slide, out, overwrite=True, min_size=None)
        assert (out / "keep.txt").read_text() == "mine"
        (out / "keep.txt").unlink()
        out.rmdir()
        convert_slide(slide, out, min_size=None)
        convert_slide(slide, out, overwrite=True, min_size=None)  # our own store: replaced
    validate(out, "0.4")
    assert siblings(out) == [out.name]


def _fail_after(calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the lazy pyramid's chunk decoding raise after ``calls`` chunks."""
    original = LazySlideStore.chunk_bytes
    count = {"n": 0}

    def flaky(self: LazySlideStore, *args: Any, **kwargs: Any) -> bytes:
        count["n"] += 1
        if count["n"] > calls:
            raise OSError("simulated read failure")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LazySlideStore, "chunk_bytes", flaky)


@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_write_leaves_nothing_half_written(
    cmu_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    out = tmp_path / "out.ome.zarr"
    if existing:
        out.mkdir()
        (out / "zarr.json").write_text("{}")  # a previous wsi-ai store, which may be replaced
        (out / "keep.txt").write_text("previous result")
    _fail_after(20, monkeypatch)
    with open_slide(cmu_small) as slide, pytest.raises(OSError, match="simulated read failure"):
        convert_slide(slide, out, overwrite=True, num_workers=2)
    if existing:
        assert (out / "keep.txt").read_text() == "previous result"
        assert siblings(out) == [out.name]
    else:
        assert siblings(out) == []


def test_failure_in_a_later_level_leaves_nothing(tmp_path: Path) -> None:
    def poisoned(block: np.ndarray, block_id: tuple[int, ...] | None = None) -> np.ndarray:
        if block_id == (0, 1, 1):
            raise RuntimeError("simulated compute failure")
        return block

    level0 = da.zeros((3, 1000, 1000), dtype=np.uint8, chunks=(3, 256, 256))
    level1 = da.zeros((3, 500, 500), dtype=np.uint8, chunks=(3, 256, 256))
    level1 = level1.map_blocks(poisoned, dtype=np.uint8)
    out = tmp_path / "out.ome.zarr"
    done: list[int] = []
    with pytest.raises(RuntimeError, match="simulated compute failure"):
        write_ome_zarr(
            [level0, level1],
            out,
            scales_um=[(1.0, 1.0), (2.0, 2.0)],
            name="x",
            chunk=256,
            progress=lambda d, t: done.append(d),
        )
    assert len(done) >= 16  # level 0 was written before level 1 failed
    assert siblings(out) == []


def test_generic_writer_for_a_float_heatmap(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    heat = rng.random((1, 700, 1100), dtype=np.float32)
    heat[0, :2, :2] = np.nan  # no data in one 2 x 2 block, half of another
    heat[0, 2, 2] = np.nan
    out = tmp_path / "heat.ome.zarr"
    write_ome_zarr(
        [da.from_array(heat, chunks=(1, 300, 300))],
        out,
        scales_um=[(4.0, 4.0)],
        name="tumour probability",
        ngff="0.5",
        channel_names=["tumour"],
        min_size=256,
        chunk=256,
        extra_attrs={"source": "test"},
    )
    attrs = validate(out, "0.5")
    assert [d.path for d in attrs.multiscales[0].datasets] == ["0", "1", "2", "3"]
    assert scales_of(out, "0.5")[-1] == [1.0, 32.0, 32.0]
    group = zarr.open_group(out, mode="r")
    assert group.attrs["source"] == "test"
    omero = group.attrs.asdict()["ome"]["omero"]["channels"][0]
    assert omero["label"] == "tumour" and omero["window"]["end"] == 1.0
    np.testing.assert_array_equal(group["0"][...], heat)
    level1 = group["1"][...]
    assert level1.shape == (1, 350, 550) and level1.dtype == np.float32
    assert np.isnan(level1[0, 0, 0])
    np.testing.assert_allclose(level1[0, 1, 1], np.nanmean(heat[0, 2:4, 2:4]), rtol=1e-6)
    np.testing.assert_allclose(level1[0, 10, 20], heat[0, 20:22, 40:42].mean(), rtol=1e-6)
    assert group["3"].shape == (1, 88, 138)


def test_generic_writer_rejects_bad_input(tmp_path: Path) -> None:
    level = da.zeros((3, 64, 64), dtype=np.uint8)
    with pytest.raises(ValueError, match="scale"):
        write_ome_zarr([level], tmp_path / "a", scales_um=[], name="x")
    with pytest.raises(ValueError, match="ngff"):
        write_ome_zarr([level], tmp_path / "a", scales_um=[(1, 1)], name="x", ngff="0.6")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(c, y, x\)"):
        write_ome_zarr([level[0]], tmp_path / "a", scales_um=[(1, 1)], name="x")
    assert siblings(tmp_path / "a") == []


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_validate_helper_rejects_a_broken_store(tmp_path: Path, ngff: str) -> None:
    out = tmp_path / "small.ome.zarr"
    level = da.full((3, 40, 30), 7, dtype=np.uint8)
    write_ome_zarr([level], out, scales_um=[(0.5, 0.5)], name="small", ngff=ngff)  # type: ignore[arg-type]
    validate(out, ngff)
    group = zarr.open_group(out, mode="r+")
    attrs = group.attrs.asdict()
    multiscales = attrs["multiscales"] if ngff == "0.4" else attrs["ome"]["multiscales"]
    multiscales[0]["datasets"][0]["path"] = "missing"
    group.attrs.put(attrs)
    with pytest.raises(ValueError, match="missing"):
        validate(out, ngff)
