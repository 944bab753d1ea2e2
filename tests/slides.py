"""What the shared test slides are known to be (from ../shared/data/README.md and the files)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Expected:
    relpath: str
    backend: str
    vendor: str
    dimensions: tuple[int, int]
    levels: int
    mpp: float | None
    objective: float | None
    modality: str
    associated: tuple[str, ...]


READABLE = (
    Expected(
        "slides/CMU-1-Small-Region.svs",
        "openslide",
        "aperio",
        (2220, 2967),
        1,
        0.499,
        20.0,
        "brightfield",
        ("label", "macro", "thumbnail"),
    ),
    Expected(
        "slides/tcga-cr-7395-01a-01-ts1.svs",
        "openslide",
        "aperio",
        (4443, 3567),
        2,
        None,
        None,
        "brightfield",
        ("thumbnail",),
    ),
    Expected(
        "slides/ndpi-fluorescence-dapi.ndpi",
        "openslide",
        "hamamatsu",
        (3968, 4864),
        7,
        0.2281750559028887,
        40.0,
        "fluorescence",
        ("macro",),
    ),
    Expected(
        "slides/skin-he-striped.tif",
        "tiffslide",
        "generic-tiff",
        (1280, 960),
        1,
        None,
        None,
        "brightfield",
        (),
    ),
    Expected(
        "slides/dicom/camelyon-he-multiframe.dcm",
        "openslide",
        "dicom",
        (1152, 700),
        1,
        28.969,
        None,
        "brightfield",
        (),
    ),
)

UNREADABLE = (
    "slides/dicom/label-only.dcm",
    "slides/dicom/tcga-he-missing-imagetype.dcm",
)
