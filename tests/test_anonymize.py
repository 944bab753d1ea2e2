"""``wsi-ai anonymize``: a copy that reopens as the same slide, pixel for pixel, without the
label and macro images and without anything that names the patient, the lab or the scan."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from click.testing import CliRunner

from tests.conftest import BUNDLED
from wsi_ai.cli.anonymize_cmd import anonymize
from wsi_ai.errors import OutputExistsError, UnsupportedSlideError
from wsi_ai.slide import open_slide
from wsi_ai.slide.anonymize import anonymize_slide, is_identifying, scrub_aperio_description

# What the bundled SVS says about who scanned what, when (Aperio ImageDescription fields).
CMU_IDENTIFYING = {
    "aperio.Filename": b"CMU-1|",
    "aperio.Date": b"12/29/09",
    "aperio.Time": b"09:59:15",
    "aperio.User": b"b414003d-95c6-48b0-9369-8010ed517ba7",
    "aperio.ScanScope ID": b"CPAPERIOCS",
    "aperio.ImageID": b"1004486",
}
# TIFF tags a generic slide gets from its scanner or software; none may survive.
TIFF_IDENTIFYING = {
    "tiff.DateTime": (306, "2024:03:01 10:11:12"),
    "tiff.Artist": (315, "Dr Jane Roe"),
    "tiff.HostComputer": (316, "PATHLAB-SCANNER-07"),
    "tiff.DocumentName": (269, "S24-001234 A1 HE"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(anonymize, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("key", "identifying"),
    [
        *[(k, True) for k in ("Filename", "Date", "Time", "User", "ScanScope ID", "Barcode")],
        *[(k, True) for k in ("ImageID", "Time Zone", "DSR ID", "SlideName", "Rack")],
        *[(k, False) for k in ("MPP", "AppMag", "StripeWidth", "ICC Profile", "OriginalWidth")],
        *[(k, False) for k in ("Filtered", "Focus Offset", "LineCameraSkew", "Parmset", "Left")],
    ],
)
def test_which_aperio_fields_identify(key: str, identifying: bool) -> None:
    assert is_identifying(key) is identifying
    text, removed = scrub_aperio_description(f"Aperio Image Library v12\r\n1x1|{key} = v|MPP = 0.5")
    assert (removed == [key]) is identifying
    assert text.startswith("Aperio Image Library v12\r\n1x1|") and text.endswith("|MPP = 0.5")


def generic_tiff(folder: Path, compression: str, tiled: bool) -> Path:
    """A two-level generic TIFF made from the bundled slide's pixels, with identifying tags."""
    with open_slide(BUNDLED / "CMU-1-Small-Region.svs") as s:
        full = s.read_region((0, 0), 0, (1024, 768))
    path = folder / f"generic-{compression}-{'tiled' if tiled else 'striped'}.tif"
    extratags = [(code, "s", 0, value, True) for code, value in TIFF_IDENTIFYING.values()]
    levels = [full, np.ascontiguousarray(full[::2, ::2])]
    with tifffile.TiffWriter(path) as tif:
        for index, pixels in enumerate(levels):
            tif.write(
                pixels,
                photometric="rgb",
                compression=compression,
                predictor=compression == "zlib" or None,
                tile=(256, 256) if tiled else None,
                rowsperstrip=None if tiled else 64,
                resolution=(1e4 / 0.5 / 2**index, 1e4 / 0.5 / 2**index),
                resolutionunit="centimeter",
                description="Case S24-001234; scanned by Dr Jane Roe",
                metadata=None,
                software="ScanSoft 2.1 (serial 99-1234)",
                extratags=extratags,
                subfiletype=1 if index else 0,
            )
    return path


def same_pixels(a: Path, b: Path, backend: str) -> None:
    with open_slide(a, backend=backend) as x, open_slide(b, backend=backend) as y:
        assert x.level_dimensions == y.level_dimensions
        assert x.level_downsamples == y.level_downsamples
        for level, (w, h) in enumerate(x.level_dimensions):
            np.testing.assert_array_equal(
                x.read_region((0, 0), level, (w, h)), y.read_region((0, 0), level, (w, h))
            )


def test_an_svs_copy_has_the_same_pyramid_and_nothing_identifying(
    cmu_small: Path, tmp_path: Path
) -> None:
    before = sha256(cmu_small)
    out = tmp_path / "shared" / "case-001.svs"
    code, stdout, stderr = run_cli(cmu_small, "-o", out)
    assert code == 0, stderr
    assert f"wrote {out}" in stdout
    assert sha256(cmu_small) == before  # the source is untouched

    source, copy = openslide.OpenSlide(str(cmu_small)), openslide.OpenSlide(str(out))
    try:
        assert copy.properties["openslide.vendor"] == "aperio"
        assert copy.level_dimensions == source.level_dimensions
        assert copy.properties["aperio.MPP"] == source.properties["aperio.MPP"]
        assert copy.properties["aperio.AppMag"] == source.properties["aperio.AppMag"]
        assert set(source.associated_images) == {"label", "macro", "thumbnail"}
        assert set(copy.associated_images) == {"thumbnail"}
        np.testing.assert_array_equal(
            np.asarray(copy.associated_images["thumbnail"]),
            np.asarray(source.associated_images["thumbnail"]),
        )
        for name in CMU_IDENTIFYING:
            assert name in source.properties and name not in copy.properties
        assert not [k for k in copy.properties if k.startswith("openslide.associated.label")]
        assert "openslide.associated.macro.width" not in copy.properties
    finally:
        source.close()
        copy.close()
    same_pixels(cmu_small, out, "openslide")
    raw = out.read_bytes()
    for value in CMU_IDENTIFYING.values():
        assert value not in raw
    with tifffile.TiffFile(out) as tif, tifffile.TiffFile(cmu_small) as src:
        a, b = src.pages[0], tif.pages[0]  # every tile copied as it was, none re-encoded
        assert a.databytecounts == b.databytecounts and a.jpegtables == b.jpegtables


@pytest.mark.parametrize(
    ("compression", "tiled", "backend"),
    [("jpeg", True, "openslide"), ("zlib", True, "openslide"), ("lzw", False, "tiffslide")],
)
def test_a_generic_tiff_copy_has_the_same_pixels_and_no_identifying_tags(
    tmp_path: Path, compression: str, tiled: bool, backend: str
) -> None:
    source = generic_tiff(tmp_path, compression, tiled)
    out = tmp_path / "anon.tif"
    report = anonymize_slide(source, out)
    assert report.format == "generic-tiff" and report.pages == 2
    assert {"tiff.DateTime", "tiff.Artist", "tiff.HostComputer", "tiff.DocumentName"} <= set(
        report.removed
    )
    same_pixels(source, out, backend)
    with open_slide(out, backend=backend) as copy, open_slide(source, backend=backend) as src:
        assert copy.mpp == src.mpp  # resolution tags are kept
        if backend == "openslide":  # tiffslide does not list these tags as properties
            for name in TIFF_IDENTIFYING:
                assert name in src.properties and name not in copy.properties
            assert "tiff.ImageDescription" not in copy.properties
            assert "tiff.Software" not in copy.properties
    with tifffile.TiffFile(out) as tif:
        unwanted = {code for code, _ in TIFF_IDENTIFYING.values()} | {270, 305}
        assert [sorted(unwanted & set(page.tags.keys())) for page in tif.pages] == [[], []]
    raw = out.read_bytes()
    for _, value in TIFF_IDENTIFYING.values():
        assert value.encode() not in raw
    assert b"S24-001234" not in raw and b"ScanSoft" not in raw


def test_the_bundled_striped_tiff_is_copied_strip_by_strip(
    skin_striped: Path, tmp_path: Path
) -> None:
    out = tmp_path / "skin.tif"
    report = anonymize_slide(skin_striped, out)
    assert report.format == "generic-tiff" and report.copied_segments > 0
    same_pixels(skin_striped, out, "tiffslide")


def ome_tiff(folder: Path) -> Path:
    path = folder / "slide.ome.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), ome=True, photometric="rgb")
    return path


def not_a_tiff(folder: Path) -> Path:
    path = folder / "notes.svs"
    path.write_text("Patient: Jane Roe\n")
    return path


@pytest.mark.parametrize(
    ("make", "says"),
    [(ome_tiff, "OME-TIFF"), (not_a_tiff, "not a TIFF")],
    ids=["ome-tiff", "text-file"],
)
def test_other_formats_are_refused_on_one_line(tmp_path: Path, make: object, says: str) -> None:
    source = make(tmp_path)  # type: ignore[operator]
    out = tmp_path / "out.tif"
    with pytest.raises(UnsupportedSlideError, match=says):
        anonymize_slide(source, out)
    code, _, stderr = run_cli(source, "-o", out)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {source}: ") and says in lines[0]
    assert "Aperio SVS and generic TIFF" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [source.name]


def test_an_existing_output_is_kept_without_overwrite(cmu_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "anon.svs"
    out.write_bytes(b"earlier")
    with pytest.raises(OutputExistsError):
        anonymize_slide(cmu_small, out)
    code, _, stderr = run_cli(cmu_small, "-o", out)
    assert code == 1 and "--overwrite" in stderr and out.read_bytes() == b"earlier"
    code, _, stderr = run_cli(cmu_small, "-o", out, "--overwrite")
    assert code == 0, stderr
    with open_slide(out) as slide:
        assert slide.associated_image_names == ("thumbnail",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anon.svs"]  # no temporary left


def test_a_multi_level_svs_keeps_every_level_and_its_icc_profile(shared, tmp_path: Path) -> None:
    source = shared("slides/tcga-cr-7395-01a-01-ts1.svs")
    out = tmp_path / "tcga.svs"
    report = anonymize_slide(source, out)
    assert report.format == "svs" and report.removed == ()
    a, b = openslide.OpenSlide(str(source)), openslide.OpenSlide(str(out))
    try:
        assert b.level_count == a.level_count > 1
        assert b.level_dimensions == a.level_dimensions
        assert b.properties["aperio.ICC Profile"] == a.properties["aperio.ICC Profile"]
        for level in range(a.level_count):
            x, y = (a.level_dimensions[level][0] // 2, a.level_dimensions[level][1] // 2)
            location = (int(x * a.level_downsamples[level]), int(y * a.level_downsamples[level]))
            np.testing.assert_array_equal(
                np.asarray(a.read_region(location, level, (512, 512))),
                np.asarray(b.read_region(location, level, (512, 512))),
            )
    finally:
        a.close()
        b.close()
