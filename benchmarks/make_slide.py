"""Deterministic gigapixel test slides made of real H&E tissue, for benchmarks and cohorts.

Tissue islands (thresholded low-frequency noise with soft, wobbly edges) lie on glass
(about RGB 240 with a little noise). Each island is filled by tiling crops of one real H&E
source (random positions, flips and 90° turns). The result is an Aperio-style BigTIFF SVS:
level 0 in JPEG tiles, a strip thumbnail as page 2, levels at downsample 4, 16 and 64, then
label and macro images. It is made band by band: level 0 is never held whole (a 50,000² slide
peaks well under 1 GB). The same arguments give byte-identical files.

Coordinates are level-0 pixels. Masks are at downsample ``MASK_DOWNSAMPLE`` (64): mask pixel
(i, j) covers level-0 x in [64 j, 64 j + 64) and y in [64 i, 64 i + 64).

    python benchmarks/make_slide.py OUT.svs --size 50000 --seed 0
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.synth_paint import (
    MASK_DOWNSAMPLE,
    BandPainter,
    Layout,
    artefact_mask,
    check_size,
    pen_stroke,
    tissue_layout,
)
from benchmarks.synth_sources import TissueSource, default_sources, load_source
from benchmarks.synth_svs import label_image, write_svs
from wsi_ai.errors import InvalidInputError, OutputExistsError, WsiAiError

__all__ = [
    "MASK_DOWNSAMPLE",
    "Layout",
    "SlideSpec",
    "TissueSource",
    "default_sources",
    "load_source",
    "main",
    "make_slide",
    "tissue_layout",
]


@dataclass(frozen=True, eq=False)
class SlideSpec:
    """What was written, with ground truth at downsample 64 (``mask_downsample``)."""

    path: Path
    width: int  # level-0 px
    height: int
    mpp: float  # µm per level-0 pixel
    seed: int
    tissue_mask: np.ndarray  # bool (ceil(H/64), ceil(W/64)): tissue islands
    artefact_mask: np.ndarray  # bool, same grid: pen stroke and dark border, drawn over all
    plant_masks: tuple[np.ndarray, ...]  # bool, same grid: planted regions within tissue
    sources: tuple[str, ...]  # names of the tissue sources used
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per pyramid level
    mask_downsample: int = MASK_DOWNSAMPLE

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.width, self.height


def make_slide(
    out: Path,
    size: int | tuple[int, int] = 50_000,
    *,
    seed: int = 0,
    mpp: float = 0.5,
    tile: int = 256,
    quality: int = 80,
    tissue_fraction: float = 0.3,
    pen_marks: bool = False,
    dark_border: bool = False,
    sources: Sequence[Path | TissueSource] | None = None,
    plant: Sequence[tuple[np.ndarray, Path | TissueSource]] | None = None,
    jpeg_rgb: bool = False,
    associated: bool = True,
    overwrite: bool = False,
    workers: int = 2,
) -> SlideSpec:
    """Write a synthetic Aperio SVS of real tissue; ``size`` is level-0 px (w or (w, h)).

    ``sources``: slides, images or patch folders of real H&E (default: ``default_sources()``),
    resampled to ``mpp`` µm/px where their MPP is known (else assumed 0.5). ``plant``: pairs of
    (bool region on the downsample-64 mask grid, e.g. from ``tissue_layout(...).mask``, source)
    whose tissue replaces the islands' own inside the region. ``jpeg_rgb`` stores tiles as
    Aperio does (RGB JPEG, no chroma subsampling) instead of YCbCr 4:2:0.
    """
    out = Path(out)
    w, h = check_size(size)
    if tile % 16 or not 64 <= tile <= 1024:
        raise InvalidInputError(f"tile {tile} must be a multiple of 16 in [64, 1024]")
    if not (1 <= quality <= 100 and mpp > 0):
        raise InvalidInputError(f"need 1 <= quality <= 100 and mpp > 0, got {quality}, {mpp}")
    if out.exists() and not overwrite:
        raise OutputExistsError(
            "output exists; pass overwrite=True (--overwrite) to replace it", out
        )
    srcs = [
        s if isinstance(s, TissueSource) else load_source(s, mpp)
        for s in sources or default_sources()
    ]
    layout = tissue_layout((w, h), seed, tissue_fraction)
    plants, plant_masks = [], []
    for region, src in plant or ():
        region = np.asarray(region, bool)
        if region.shape != layout.field.shape:
            raise InvalidInputError(
                f"plant region shape {region.shape} is not the mask grid "
                f"{layout.field.shape} (downsample {MASK_DOWNSAMPLE})"
            )
        field = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 0.7)
        plants.append((field, src if isinstance(src, TissueSource) else load_source(src, mpp)))
        plant_masks.append(region & layout.mask)
    pen = pen_stroke(layout, np.random.default_rng([seed, 4]), w, h) if pen_marks else None
    painter = BandPainter(
        layout,
        srcs,
        seed=seed,
        cell=2 * tile,
        width=w,
        plants=plants,
        pen=pen,
        dark_border=dark_border,
    )
    names = tuple(s.name for s in srcs)
    props = (
        f"AppMag = {round(10 / mpp)}|MPP = {mpp:g}|ScanScope ID = WSI-AI-SYNTHETIC"
        f"|Filename = synthetic-{w}x{h}-seed{seed}|Title = wsi-ai synthetic H&E from real tissue"
        f"|Left = 0|Top = 0|Synthetic Seed = {seed}|Synthetic Sources = {';'.join(names)}"
    )
    label = label_image(seed, w, h) if associated else None
    tmp = out.with_name(out.name + ".partial")
    try:
        dims = write_svs(
            tmp, painter.band, (w, h), band_height=painter.cell, tile=tile, quality=quality,
            jpeg_rgb=jpeg_rgb, properties=props, label=label, workers=max(1, workers),
        )  # fmt: skip
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return SlideSpec(
        out,
        w,
        h,
        mpp,
        seed,
        layout.mask,
        artefact_mask(layout.field.shape, pen, painter.border_px),
        tuple(plant_masks),
        names,
        tuple(dims),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; prints what was written, the time taken and the peak RSS."""
    p = argparse.ArgumentParser(description="Write a synthetic Aperio SVS made of real H&E tissue.")
    p.add_argument("out", type=Path, help="output .svs path")
    p.add_argument("--size", default="50000", help="level-0 px: N (square) or WIDTHxHEIGHT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 px (default 0.5)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--tissue-fraction", type=float, default=0.3)
    p.add_argument("--pen-marks", action="store_true", help="draw a dark pen stroke")
    p.add_argument("--dark-border", action="store_true", help="darken the left slide edge")
    p.add_argument("--jpeg-rgb", action="store_true", help="RGB JPEG tiles as Aperio writes")
    p.add_argument("--source", type=Path, action="append", help="tissue source (repeatable)")
    p.add_argument("--workers", type=int, default=2, help="threads painting and encoding")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", args.size)
    if not m:
        p.error(f"--size {args.size!r}: give N or WIDTHxHEIGHT")
    size = (int(m[1]), int(m[2] or m[1]))
    t0 = time.perf_counter()
    try:
        spec = make_slide(
            args.out,
            size,
            seed=args.seed,
            mpp=args.mpp,
            tile=args.tile,
            quality=args.quality,
            tissue_fraction=args.tissue_fraction,
            pen_marks=args.pen_marks,
            dark_border=args.dark_border,
            sources=args.source,
            jpeg_rgb=args.jpeg_rgb,
            overwrite=args.overwrite,
            workers=args.workers,
        )
    except WsiAiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{spec.path}: {spec.width}x{spec.height} px at {spec.mpp} µm/px, "
        f"levels {spec.level_dimensions}, "
        f"tissue {spec.tissue_mask.mean():.1%} from {', '.join(spec.sources)}; "
        f"{seconds:.1f} s, {spec.path.stat().st_size / 1e6:.0f} MB, peak RSS {peak_mb:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
