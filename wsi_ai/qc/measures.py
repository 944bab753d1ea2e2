"""Per-slide quality control: tissue area, focus, pen ink, air bubbles and the H&E stain matrix.

:func:`slide_qc` is called once per slide by the batch pipeline, after the tissue stage and
the patch grid. It reads two things: one low-resolution image of the whole slide (about
``QC_MPP`` = 8 µm/px, the tissue stage's resolution, never coarser than a 512 px long side)
and at most ``max_patches`` grid patches at the grid's own resolution. The pure-array cores
(:func:`laplacian_variance`, :func:`~wsi_ai.qc.artefacts.pen_mask`,
:func:`~wsi_ai.qc.artefacts.bubble_mask`, :func:`~wsi_ai.qc.stain.macenko`) take RGB uint8
pixels and can be used without a slide.

Focus is measured here; pen ink, bubbles and their tissue fractions in
:mod:`wsi_ai.qc.artefacts`; the stain matrix and the glass colour in :mod:`wsi_ai.qc.stain`.
Each module's docstring gives its thresholds (OpenCV scales: H 0-180, S and V 0-255; RGB
0-255) and how they were chosen.

* **Blur.** A patch is out of focus when the variance of the Laplacian (4-neighbour 3x3
  kernel) of its grey image is below ``BLUR_LAPLACIAN_VAR`` = 100 grey levels², measured at
  ``BLUR_MPP`` = 0.5 µm/px: patches read finer are shrunk to 0.5 µm/px first, and patches
  whose pixels are really coarser (a grid upsampled from a coarse level) are shrunk to that
  real resolution; coarser grids are measured as read, which only makes the rule stricter
  about calling a patch blurry. Calibration on the bundled CMU-1 slide
  (49 tissue patches, 224 px at 0.5 µm/px): sharp patches 550-3,800 (median 1,770); the same
  patches under a Gaussian blur of sigma 1 px (0.5 µm, mildly soft) 78-385 (median 210); of
  sigma 2 px (1 µm, clearly out of focus) 10-57; of sigma 3 px 4-15. 100 sits 5x below the
  sharpest tissue's minimum and 2x above clearly blurred tissue. Pale, featureless tissue
  (fat, oedema) also has little high-frequency energy and can read as blurry: that is why
  only grid patches (at least the grid's ``min_tissue``) are sampled, and why the fraction,
  not any single patch, is the measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from shapely.geometry import box

from wsi_ai.annotations.model import RGB, Annotation
from wsi_ai.errors import ParameterError
from wsi_ai.qc.artefacts import ADJACENT_UM, artefact_fraction, bubble_mask, ink_pixels, pen_mask
from wsi_ai.qc.pixels import BoolMask, RGBImage, disk
from wsi_ai.qc.stain import (
    DEFAULT_BACKGROUND,
    MIN_STAIN_PIXELS,
    RUIFROK_E,
    RUIFROK_H,
    angle_deg,
    glass_background,
    macenko,
)
from wsi_ai.slide.slide import Slide, resize
from wsi_ai.tiling.grid import PatchGrid, read_patch
from wsi_ai.tissue.detect import plan_read
from wsi_ai.tissue.mask import TissueMask
from wsi_ai.tissue.polygons import mask_to_polygons

# Low-resolution image for pen, bubbles and the glass colour, µm/px (as the tissue stage).
QC_MPP = 8.0
# Blur: Laplacian variance threshold, calibrated at BLUR_MPP µm/px (see the module docstring).
BLUR_LAPLACIAN_VAR = 100.0
BLUR_MPP = 0.5
BLUR_MIN_SIDE = 16  # px: smallest image the focus score is taken on
# Pixels per sampled patch kept for the stain estimate.
STAIN_PIXELS_PER_PATCH = 4_096
# When the slide has no MPP, the low-resolution image is taken as this many µm/px.
FALLBACK_MPP = QC_MPP

PEN_CLASS, BUBBLE_CLASS, BLUR_CLASS = "QC: pen", "QC: bubble", "QC: blur"
PEN_COLOR: RGB = (0, 170, 0)
BUBBLE_COLOR: RGB = (0, 150, 255)
BLUR_COLOR: RGB = (255, 170, 0)


@dataclass(frozen=True, eq=False)
class SlideQC:
    """Quality measures of one slide; :meth:`as_dict` is the JSON-ready summary.

    Units: ``tissue_area_mm2`` in mm² (None without an MPP); the fractions are 0-1 (None when
    there is nothing to measure them on: no sampled patch, no tissue); ``stain_vectors`` are
    unit optical-density vectors (r, g, b); ``stain_max_concentrations`` are in OD units along
    those vectors; ``stain_h_angle`` / ``stain_e_angle`` are degrees between the slide's
    vectors and Ruifrok's reference ones; ``laplacian_var_median`` is the sampled patches'
    median focus score (grey levels², at 0.5 µm/px). ``background_rgb`` is the glass colour
    the optical densities are relative to.

    ``annotations`` (pen and bubble polygons, blurry sampled patches as rectangles; level-0 px)
    and the masks (``pen_mask``, ``bubble_mask``, True on the artefact, at ``mask_downsample``
    level-0 px per mask px in x and y) are for export and are not part of :meth:`as_dict`.
    """

    slide: str
    modality: str
    tissue_area_mm2: float | None
    blur_fraction: float | None
    pen_fraction: float | None
    bubble_fraction: float | None
    stain_vectors: dict[str, tuple[float, float, float]] | None
    stain_max_concentrations: dict[str, float] | None
    patches_sampled: int
    patches_blurry: int
    laplacian_var_median: float | None
    background_rgb: tuple[float, float, float] | None
    blur_threshold: float = BLUR_LAPLACIAN_VAR
    annotations: tuple[Annotation, ...] = field(default=(), repr=False)
    pen_mask: BoolMask | None = field(default=None, repr=False)
    bubble_mask: BoolMask | None = field(default=None, repr=False)
    mask_downsample: tuple[float, float] = (1.0, 1.0)

    @property
    def stain_h_angle(self) -> float | None:
        """Degrees between this slide's hematoxylin vector and Ruifrok's."""
        if self.stain_vectors is None:
            return None
        return angle_deg(self.stain_vectors["hematoxylin"], RUIFROK_H)

    @property
    def stain_e_angle(self) -> float | None:
        """Degrees between this slide's eosin vector and Ruifrok's."""
        if self.stain_vectors is None:
            return None
        return angle_deg(self.stain_vectors["eosin"], RUIFROK_E)

    def as_dict(self) -> dict[str, Any]:
        """The measures as plain JSON values, rounded to what the methods can resolve."""
        vectors = None
        if self.stain_vectors is not None:
            vectors = {k: [round(float(c), 4) for c in v] for k, v in self.stain_vectors.items()}
        background = None
        if self.background_rgb is not None:
            background = [round(float(c), 1) for c in self.background_rgb]
        maxima = None
        if self.stain_max_concentrations is not None:
            maxima = {k: round(float(v), 4) for k, v in self.stain_max_concentrations.items()}
        return {
            "slide": self.slide,
            "modality": self.modality,
            "tissue_area_mm2": _round(self.tissue_area_mm2, 4),
            "blur_fraction": _round(self.blur_fraction, 4),
            "pen_fraction": _round(self.pen_fraction, 5),
            "bubble_fraction": _round(self.bubble_fraction, 5),
            "stain_vectors": vectors,
            "stain_max_concentrations": maxima,
            "stain_h_angle": _round(self.stain_h_angle, 2),
            "stain_e_angle": _round(self.stain_e_angle, 2),
            "patches_sampled": int(self.patches_sampled),
            "patches_blurry": int(self.patches_blurry),
            "laplacian_var_median": _round(self.laplacian_var_median, 1),
            "blur_threshold": float(self.blur_threshold),
            "background_rgb": background,
        }


def _round(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


# -- focus -------------------------------------------------------------------------------------
def laplacian_variance(rgb: RGBImage) -> float:
    """Variance of the Laplacian (4-neighbour 3x3 kernel, OpenCV's ``ksize=1``) of the grey
    image, in grey levels²; low means blurred."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


# -- sampling ----------------------------------------------------------------------------------
def _morton(ix: NDArray[np.int64], iy: NDArray[np.int64]) -> NDArray[np.int64]:
    """Z-order keys of non-negative grid indices (< 2**31)."""
    key = np.zeros(ix.shape, dtype=np.int64)
    for bit in range(31):
        key |= ((ix >> bit) & 1) << (2 * bit)
        key |= ((iy >> bit) & 1) << (2 * bit + 1)
    return key


def sample_patches(table: pd.DataFrame, max_patches: int, seed: int = 0) -> NDArray[np.int64]:
    """Row positions of at most ``max_patches`` patches, spread over the slide.

    The patches are ordered along a Z-order curve of their grid position, cut into
    ``max_patches`` runs of (nearly) equal length, and one patch is drawn from each run with
    ``numpy.random.default_rng(seed)``: the same table and seed give the same patches, and
    every part of the tissue gets its share. All patches when there are no more than
    ``max_patches``. Sorted ascending.
    """
    n = len(table)
    if max_patches <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if n <= max_patches:
        return np.arange(n, dtype=np.int64)
    x = table["x"].to_numpy(dtype=np.int64)
    y = table["y"].to_numpy(dtype=np.int64)
    step_x = max(1, int(table["width"].min()))
    step_y = max(1, int(table["height"].min()))
    order = np.argsort(_morton((x - x.min()) // step_x, (y - y.min()) // step_y), kind="stable")
    bounds = np.linspace(0, n, max_patches + 1).round().astype(np.int64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(bounds[:-1], bounds[1:])
    return np.sort(order[picks])


# -- the slide ---------------------------------------------------------------------------------
def _low_res(slide: Slide) -> tuple[RGBImage, tuple[float, float], float]:
    """(image, level-0 px per image px in x and y, image µm/px) of the whole slide."""
    level, max_size = plan_read(slide, QC_MPP)
    image = slide.read_level(level, max_size)
    width, height = slide.dimensions
    ds = (width / image.shape[1], height / image.shape[0])
    mpp = FALLBACK_MPP if slide.mpp is None else slide.mpp.mean * (ds[0] + ds[1]) / 2
    return image, ds, mpp


def _tissue_on(tissue: TissueMask, shape: tuple[int, int]) -> BoolMask:
    """The tissue mask resampled onto an image of ``shape`` (h, w) over the same slide."""
    if tissue.shape == shape:
        return tissue.mask.astype(bool)
    resized = cv2.resize(
        tissue.mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST
    )
    return resized > 0


def _area_measurement(area_px: float, mpp: tuple[float, float] | None) -> dict[str, float]:
    if mpp is None:
        return {"Area px^2": float(area_px)}
    return {"Area µm^2": float(area_px * mpp[0] * mpp[1])}


def slide_qc(
    slide: Slide,
    tissue: TissueMask,
    patches: PatchGrid,
    *,
    max_patches: int = 64,
    seed: int = 0,
    blur_threshold: float = BLUR_LAPLACIAN_VAR,
) -> SlideQC:
    """Quality measures of one slide (see :class:`SlideQC` and the module docstring).

    ``tissue`` is the tissue stage's mask and ``patches`` the slide's patch grid (level-0
    px). At most ``max_patches`` patches (0: none, and ``blur_fraction`` is None) are read at
    the grid's resolution, drawn by :func:`sample_patches` with ``seed``; a patch whose
    Laplacian variance at 0.5 µm/px is below ``blur_threshold`` (grey levels²) is blurry.

    Pen, bubbles, stain and blur are brightfield measures: on a fluorescence slide
    (``tissue.modality``) they are None, and only the tissue area and the sampled patches'
    ``laplacian_var_median`` are reported.
    """
    if isinstance(max_patches, bool) or not isinstance(max_patches, int) or max_patches < 0:
        raise ParameterError(f"max_patches must be a whole number >= 0, got {max_patches!r}")
    if isinstance(blur_threshold, bool) or not (
        isinstance(blur_threshold, int | float) and math.isfinite(blur_threshold)
        and blur_threshold > 0
    ):  # fmt: skip
        raise ParameterError(f"blur_threshold must be a positive number, got {blur_threshold!r}")
    mpp_xy = tissue.mpp
    if mpp_xy is None and slide.mpp is not None:
        mpp_xy = (slide.mpp.x, slide.mpp.y)
    area_mm2 = None
    if mpp_xy is not None:
        px0 = float(tissue.mask.sum()) * tissue.downsample[0] * tissue.downsample[1]
        area_mm2 = px0 * mpp_xy[0] * mpp_xy[1] / 1e6
    brightfield = tissue.modality != "fluorescence"

    low = _low_res_measures(slide, tissue) if brightfield else None
    background = low.background if low is not None else (DEFAULT_BACKGROUND,) * 3
    focus = _patch_measures(
        slide, patches, max_patches, seed, blur_threshold, with_stain=brightfield
    )
    stain = None
    if brightfield:
        assert low is not None
        if len(focus.stain_pixels) >= MIN_STAIN_PIXELS:
            stain = macenko(focus.stain_pixels, background)
        if stain is None:  # too few patch pixels: the low-resolution tissue instead
            stain = macenko(low.image[low.tissue & ~low.pen], background)

    annotations: list[Annotation] = []
    if brightfield:
        for score, (x, y, w, h) in zip(focus.scores, focus.rects, strict=True):
            if score < blur_threshold:
                annotations.append(
                    Annotation(
                        geometry=box(x, y, x + w, y + h),
                        classification=BLUR_CLASS,
                        color=BLUR_COLOR,
                        measurements={"Laplacian variance": score},
                        properties={"qc_blur_threshold": float(blur_threshold)},
                    )
                )
    if low is not None:
        annotations.extend(_region_annotations(low.pen, low.ds, mpp_xy, PEN_CLASS, PEN_COLOR))
        annotations.extend(
            _region_annotations(low.bubbles, low.ds, mpp_xy, BUBBLE_CLASS, BUBBLE_COLOR)
        )
    scores = focus.scores
    blurry = sum(score < blur_threshold for score in scores) if brightfield else 0
    return SlideQC(
        slide=slide.path.name,
        modality=tissue.modality,
        tissue_area_mm2=area_mm2,
        blur_fraction=blurry / len(scores) if scores and brightfield else None,
        pen_fraction=None if low is None else artefact_fraction(low.pen, low.tissue, low.mpp),
        bubble_fraction=(
            None if low is None else artefact_fraction(low.bubbles, low.tissue, low.mpp)
        ),
        stain_vectors=(
            None if stain is None else {"hematoxylin": stain.hematoxylin, "eosin": stain.eosin}
        ),
        stain_max_concentrations=(
            None
            if stain is None
            else {"hematoxylin": stain.max_hematoxylin, "eosin": stain.max_eosin}
        ),
        patches_sampled=len(scores),
        patches_blurry=int(blurry),
        laplacian_var_median=float(np.median(scores)) if scores else None,
        background_rgb=None if low is None else low.background,
        blur_threshold=float(blur_threshold),
        annotations=tuple(annotations),
        pen_mask=None if low is None else low.pen,
        bubble_mask=None if low is None else low.bubbles,
        mask_downsample=(1.0, 1.0) if low is None else low.ds,
    )


@dataclass(frozen=True, eq=False)
class _LowRes:
    image: RGBImage
    ds: tuple[float, float]  # level-0 px per image px (x, y)
    mpp: float  # image µm/px
    tissue: BoolMask
    pen: BoolMask
    bubbles: BoolMask
    background: tuple[float, float, float]


def _low_res_measures(slide: Slide, tissue: TissueMask) -> _LowRes:
    """Pen, bubbles and the glass colour on one image of the whole slide at about QC_MPP."""
    image, ds, mpp = _low_res(slide)
    on_tissue = _tissue_on(tissue, (image.shape[0], image.shape[1]))
    pen = pen_mask(image, mpp)
    bubbles = bubble_mask(image, mpp, exclude=pen) & ~pen
    near_tissue = cv2.dilate(on_tissue.astype(np.uint8), disk(ADJACENT_UM / mpp)) > 0
    background = glass_background(image, near_tissue | pen)
    return _LowRes(image, ds, mpp, on_tissue, pen, bubbles, background)


@dataclass(frozen=True, eq=False)
class _Focus:
    scores: list[float]  # Laplacian variance per sampled patch
    rects: list[tuple[int, int, int, int]]  # their level-0 (x, y, width, height)
    stain_pixels: NDArray[np.uint8]  # (n, 3) RGB for the stain estimate, ink removed


def _patch_measures(
    slide: Slide,
    patches: PatchGrid,
    max_patches: int,
    seed: int,
    blur_threshold: float,
    *,
    with_stain: bool,
) -> _Focus:
    """Focus scores of the sampled patches and (``with_stain``) a pixel sample for Macenko."""
    table, spec = patches.table, patches.spec
    picks = sample_patches(table, max_patches, seed)
    rng = np.random.default_rng(seed)
    # Focus is judged at BLUR_MPP, or at the pixels' real resolution when that is coarser
    # (patches upsampled from a coarse level have no detail to be sharp with).
    measure_mpp = max(spec.effective_mpp, BLUR_MPP)
    side = max(BLUR_MIN_SIDE, round(spec.size * spec.mpp / measure_mpp))
    scores: list[float] = []
    rects: list[tuple[int, int, int, int]] = []
    stain_px: list[NDArray[np.uint8]] = [np.zeros((0, 3), dtype=np.uint8)]
    columns = [table[c].to_numpy(dtype=np.int64) for c in ("x", "y", "width", "height")]
    for row in picks:
        x, y, w, h = (int(c[row]) for c in columns)
        pixels = read_patch(slide, spec, x, y)
        measured = resize(pixels, (side, side)) if side < pixels.shape[1] else pixels
        scores.append(laplacian_variance(measured))
        rects.append((x, y, w, h))
        if with_stain:
            flat = pixels.reshape(-1, 3)[~ink_pixels(pixels).ravel()]
            if len(flat) > STAIN_PIXELS_PER_PATCH:
                flat = flat[rng.choice(len(flat), STAIN_PIXELS_PER_PATCH, replace=False)]
            stain_px.append(flat)
    return _Focus(scores, rects, np.concatenate(stain_px))


def _region_annotations(
    mask: BoolMask,
    downsample: tuple[float, float],
    mpp: tuple[float, float] | None,
    classification: str,
    color: RGB,
) -> list[Annotation]:
    return [
        Annotation(
            geometry=polygon,
            classification=classification,
            color=color,
            measurements=_area_measurement(polygon.area, mpp),
        )
        for polygon in mask_to_polygons(mask, downsample)
    ]


def qc_annotations(qc: SlideQC) -> list[Annotation]:
    """The QC regions for QuPath (level-0 px): ``"QC: pen"`` and ``"QC: bubble"`` polygons and
    ``"QC: blur"`` rectangles of the blurry sampled patches, each class in its own colour."""
    return list(qc.annotations)
