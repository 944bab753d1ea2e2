"""A deterministic labelled cohort of synthetic slides for proof-of-learning runs.

Every slide is mosaicked from the same real H&E background sources (by default every shared
real H&E source but the planted one: the CMU and skin slides and the 8 CRC patch classes, one
source per tissue island), with slide size and tissue fraction drawn the same way for both
classes. Positive slides also carry 1-3 planted blobs of one real tissue that negatives never
contain (by default crops of the TCGA slide, a squamous carcinoma), augmented per slide (colour
jitter, and rescaling of small images; ``make_slide`` adds flips and quarter turns), covering
at most ``max_planted_patch_fraction`` of the slide's tissue patches on a grid of
``patch_px`` level-0 px (a patch is planted when its centre's mask pixel is). So nothing but
the planted tissue tells the classes apart.

Written into ``out_dir``: ``<stem>.svs`` per slide, ``<stem>.planted.npy`` (bool, downsample
64: mask pixel (i, j) covers level-0 x in [64 j, 64 j + 64), y in [64 i, 64 i + 64); all
False on negatives), ``labels.csv`` (``slide,label`` with ``negative``/``positive``) and
``cohort.json`` (every parameter and, per slide, size, tissue fraction, seed and planted
patch counts). The same arguments give byte-identical files.

    python benchmarks/make_cohort.py OUT_DIR --slides 40 --size 2500 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.make_slide import MASK_DOWNSAMPLE, make_slide, tissue_layout
from benchmarks.synth_sources import TissueSource, default_sources, load_source
from wsi_ai.errors import InvalidInputError, OutputExistsError, WsiAiError

__all__ = ["Cohort", "CohortSlide", "default_planted_source", "main", "make_cohort"]

LABELS = ("negative", "positive")
DS = MASK_DOWNSAMPLE
PLANTED_DEFAULT = "tcga-cr-7395-01a-01-ts1.svs"  # no MPP stated: read as 0.5 µm/px
AUGMENT_CROP = 2048  # px: side of the crop of a large planted source made per slide


@dataclass(frozen=True)
class CohortSlide:
    """One slide of the cohort; sizes in level-0 px, patch counts on the ``patch_px`` grid."""

    name: str  # file stem, the ``slide`` column of labels.csv
    path: Path
    label: str
    width: int
    height: int
    tissue_fraction: float  # asked of the layout (fraction of the slide area)
    seed: int
    planted_mask: Path  # <stem>.planted.npy, bool at downsample 64
    tissue_patches: int  # patches at least half tissue by the layout mask
    planted_patches: int  # of those, the ones whose centre lies in the planted mask
    blobs: int


@dataclass(frozen=True)
class Cohort:
    """What :func:`make_cohort` wrote."""

    root: Path
    slides: tuple[CohortSlide, ...]
    labels_csv: Path
    manifest: Path
    mpp: float  # µm per level-0 px
    patch_px: int  # level-0 px side of the patch grid the planted fractions refer to

    def planted_mask(self, name: str) -> np.ndarray:
        return np.load(self.root / f"{name}.planted.npy")


def default_planted_source() -> Path:
    """The TCGA slide of the shared data (``PLANTED_DEFAULT``)."""
    for src in default_sources():
        if src.name == PLANTED_DEFAULT:
            return src
    raise InvalidInputError(
        f"{PLANTED_DEFAULT} not among the default sources; pass planted_source (--planted) "
        "or set WSI_AI_TEST_DATA to the shared test data"
    )


def _background(planted: Path) -> list[Path]:
    """The default sources with patch folders split per class, minus the planted source."""
    out: list[Path] = []
    for src in default_sources():
        classes = sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
        out += [p for p in classes or [src] if p.resolve() != planted.resolve()]
    return out


def augmented(source: TissueSource, rng: np.random.Generator, copies: int = 4) -> TissueSource:
    """One group of colour-jittered copies of every image of ``source``: per channel gain
    ±6 %, brightness ±6, saturation ±15 %. Small images (patches) give ``copies`` copies,
    each also rescaled by 0.9-1.1; a large one (a slide) gives one random crop of at most
    ``AUGMENT_CROP`` px a side. Orientation is left to ``TissueSource.crop``."""
    images: list[np.ndarray] = []
    for im in (im for group in source.groups for im in group):
        big = max(im.shape[:2]) > AUGMENT_CROP
        for _ in range(1 if big else copies):
            if big:
                y, x = (int(rng.integers(max(1, n - AUGMENT_CROP + 1))) for n in im.shape[:2])
                im = im[y : y + AUGMENT_CROP, x : x + AUGMENT_CROP]
            a = im.astype(np.float32)
            grey = a.mean(axis=2, keepdims=True)
            a = grey + (a - grey) * rng.uniform(0.85, 1.15)
            a = a * rng.uniform(0.94, 1.06, size=3) + rng.uniform(-6, 6)
            a = np.clip(a, 0, 255).astype(np.uint8)
            if not big:
                s = rng.uniform(0.9, 1.1)
                a = cv2.resize(a, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
            images.append(a)
    return TissueSource(f"{source.name}-augmented", [images])


def _patch_grid(tissue: np.ndarray, size: tuple[int, int], patch_px: int) -> tuple[np.ndarray, ...]:
    """Mask-grid (row, col) of the centres of the tissue patches (at least half tissue on an
    8 x 8 sampling) of a ``patch_px`` grid from (0, 0), patches wholly inside the slide."""
    w, h = size
    xs = np.arange(0, w - patch_px + 1, patch_px)
    ys = np.arange(0, h - patch_px + 1, patch_px)
    off = (np.arange(8) + 0.5) * patch_px / 8
    py = (ys[:, None] + off[None, :]) // DS  # [ny, 8] mask rows
    px = (xs[:, None] + off[None, :]) // DS
    frac = tissue[py[:, None, :, None].astype(int), px[None, :, None, :].astype(int)].mean((2, 3))
    iy, ix = np.nonzero(frac >= 0.5)
    return (ys[iy] + patch_px // 2) // DS, (xs[ix] + patch_px // 2) // DS, frac[iy, ix]


def _planted_region(
    tissue: np.ndarray,
    centres: tuple[np.ndarray, ...],
    rng: np.random.Generator,
    n_blobs: int,
    count: int,
    most: int,
) -> tuple[np.ndarray, int]:
    """``n_blobs`` wobbly blobs inside ``tissue`` (mask grid) grown until the painted part
    holds ``count`` patch centres (or the most up to ``most``). Returns (region, count)."""
    cy, cx, frac = centres
    full = np.flatnonzero(frac >= 0.99) if (frac >= 0.99).any() else np.arange(len(cy))
    seeds = [int(rng.choice(full))]
    for _ in range(n_blobs - 1):  # further blobs as far as possible from the first ones
        d = np.min([np.hypot(cy[full] - cy[s], cx[full] - cx[s]) for s in seeds], axis=0)
        far = full[d >= np.quantile(d, 0.7)]
        seeds.append(int(rng.choice(far)))
    yy, xx = np.mgrid[0 : tissue.shape[0], 0 : tissue.shape[1]]
    wobble = cv2.GaussianBlur(rng.standard_normal(tissue.shape).astype(np.float32), (0, 0), 2)
    wobble /= max(float(np.abs(wobble).max()), 1e-6)
    dist = np.min([np.hypot(yy - cy[s], xx - cx[s]) for s in seeds], axis=0)
    dist = dist * (1 + 0.3 * wobble)
    best, n_best = np.zeros_like(tissue), 0
    for r in np.arange(0.5, max(tissue.shape), 0.25):
        region = (dist <= r) & tissue
        n = int(painted(region, tissue)[cy, cx].sum())
        if n > most:
            break
        if n:
            best, n_best = region, n
        if n >= count:
            break
    return best, n_best


def painted(region: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Where ``make_slide`` paints a plant region at least half opaque (mask grid): it blurs
    the region (Gaussian, sigma 0.7 mask px) and blends with weight 0.5 at field 0.5."""
    field = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 0.7)
    return (field >= 0.5) & tissue


def make_cohort(
    out_dir: Path,
    n_slides: int = 40,
    size: int = 2500,
    *,
    positive_fraction: float = 0.5,
    seed: int = 0,
    planted_source: Path | None = None,
    sources: Sequence[Path] | None = None,
    max_planted_patch_fraction: float = 0.1,
    patch_px: int = 224,
    size_jitter: float = 0.2,
    tissue_fraction: tuple[float, float] = (0.25, 0.45),
    mpp: float = 0.5,
    overwrite: bool = False,
    workers: int = 2,
) -> Cohort:
    """Write the cohort (module docstring) and return it.

    ``size``: nominal slide side in level-0 px; each side is drawn from ``size * (1 ±
    size_jitter)`` and the tissue fraction from ``tissue_fraction``, independently of the
    label. ``sources``: background tissue (default: the shared real H&E minus the planted
    source). ``patch_px``: level-0 px side of the patch grid that ``max_planted_patch_fraction``
    refers to (224: 224 px at 0.5 µm/px, or 112 px at 1.0 µm/px).
    """
    out_dir = Path(out_dir)
    n_pos = round(n_slides * positive_fraction)
    if n_slides < 2 or not 0 < n_pos < n_slides:
        raise InvalidInputError(f"need both classes: {n_slides} slides, {n_pos} positive")
    if not (0 < max_planted_patch_fraction <= 0.5 and 0 <= size_jitter < 0.5 and patch_px > 0):
        raise InvalidInputError(
            "need 0 < max_planted_patch_fraction <= 0.5, 0 <= size_jitter < 0.5"
        )
    if (out_dir / "cohort.json").exists() and not overwrite:
        raise OutputExistsError("cohort exists; pass overwrite=True (--overwrite)", out_dir)
    planted = Path(planted_source) if planted_source is not None else default_planted_source()
    plant_src = load_source(planted, mpp)
    bg_paths = list(sources) if sources is not None else _background(planted)
    bg = [load_source(p, mpp) for p in bg_paths]
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    labels = np.zeros(n_slides, dtype=int)
    labels[rng.permutation(n_slides)[:n_pos]] = 1
    slides: list[CohortSlide] = []
    for i in range(n_slides):
        r = np.random.default_rng([seed, 1, i])  # size and layout: the same draws for both labels
        w, h = (round(size * r.uniform(1 - size_jitter, 1 + size_jitter)) for _ in "wh")
        frac = float(r.uniform(*tissue_fraction))
        slide_seed = int(r.integers(1 << 31))
        layout = tissue_layout((w, h), slide_seed, frac)
        centres = _patch_grid(layout.mask, (w, h), patch_px)
        n_tissue = len(centres[0])
        region, n_planted, blobs = np.zeros_like(layout.mask), 0, 0
        plant = []
        if labels[i]:
            pr = np.random.default_rng([seed, 2, i])
            most = int(np.floor(max_planted_patch_fraction * n_tissue))
            if most < 1:
                raise InvalidInputError(
                    f"slide {i}: {n_tissue} tissue patches of {patch_px} px leave no room for a "
                    f"planted patch at {max_planted_patch_fraction:.0%}; raise size or tissue"
                )
            # 70-90% of the cap: slack, as the engine's tissue grid is not the layout's
            count = max(1, round(most * pr.uniform(0.7, 0.9)))
            blobs = int(min(max(1, count // 3), pr.integers(1, 4)))  # >= 3 patches a blob
            region, n_planted = _planted_region(layout.mask, centres, pr, blobs, count, most)
            if not n_planted:
                raise InvalidInputError(
                    f"slide {i}: no planted region fits {most} of {n_tissue} patches of "
                    f"{patch_px} px; raise size or lower patch_px"
                )
            plant = [(region, augmented(plant_src, pr))]
        name = f"slide_{i:03d}"
        spec = make_slide(
            out_dir / f"{name}.svs", (w, h), seed=slide_seed, mpp=mpp, tissue_fraction=frac,
            sources=bg, plant=plant, overwrite=overwrite, workers=workers,
        )  # fmt: skip
        np.save(out_dir / f"{name}.planted.npy", painted(region, spec.tissue_mask))
        slides.append(
            CohortSlide(
                name,
                spec.path,
                LABELS[labels[i]],
                w,
                h,
                frac,
                slide_seed,
                out_dir / f"{name}.planted.npy",
                n_tissue,
                n_planted,
                blobs,
            )
        )
    labels_csv = out_dir / "labels.csv"
    rows = "".join(f"{s.name},{s.label}\n" for s in slides)
    labels_csv.write_text("slide,label\n" + rows, encoding="utf-8")
    manifest = out_dir / "cohort.json"
    info = {
        "n_slides": n_slides,
        "size": size,
        "size_jitter": size_jitter,
        "tissue_fraction": list(tissue_fraction),
        "positive_fraction": positive_fraction,
        "seed": seed,
        "mpp": mpp,
        "patch_px": patch_px,
        "max_planted_patch_fraction": max_planted_patch_fraction,
        "mask_downsample": DS,
        "planted_source": planted.name,
        "background_sources": [s.name for s in bg],
        "slides": [
            {k: (v.name if isinstance(v, Path) else v) for k, v in asdict(s).items()}
            for s in slides
        ],
    }
    manifest.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return Cohort(out_dir, tuple(slides), labels_csv, manifest, mpp, patch_px)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; prints what was written and the time taken."""
    p = argparse.ArgumentParser(description="Write a labelled cohort of synthetic slides.")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--slides", type=int, default=40)
    p.add_argument("--size", type=int, default=2500, help="nominal side, level-0 px")
    p.add_argument("--positive-fraction", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--planted", type=Path, help="planted tissue (default: the TCGA slide)")
    p.add_argument("--source", type=Path, action="append", help="background tissue (repeatable)")
    p.add_argument("--max-planted", type=float, default=0.1, help="of tissue patches")
    p.add_argument("--patch-px", type=int, default=224, help="patch side, level-0 px")
    p.add_argument("--mpp", type=float, default=0.5, help="µm per level-0 px")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        cohort = make_cohort(
            args.out, args.slides, args.size, positive_fraction=args.positive_fraction,
            seed=args.seed, planted_source=args.planted, sources=args.source,
            max_planted_patch_fraction=args.max_planted, patch_px=args.patch_px, mpp=args.mpp,
            overwrite=args.overwrite, workers=args.workers,
        )  # fmt: skip
    except WsiAiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    pos = [s for s in cohort.slides if s.label == "positive"]
    share = [s.planted_patches / s.tissue_patches for s in pos]
    print(
        f"{cohort.root}: {len(cohort.slides)} slides ({len(pos)} positive), planted "
        f"{min(share):.1%}-{max(share):.1%} of tissue patches; "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
