"""Slide quality control: per-slide measures and cohort-level outliers.

``slide_qc(slide, tissue, patches)`` -> :class:`SlideQC` (tissue area in mm², blur, pen and
bubble fractions, Macenko H&E stain vectors; ``as_dict()`` for JSON, ``annotations`` with the
``"QC: pen"``, ``"QC: bubble"`` and ``"QC: blur"`` regions in level-0 px for QuPath).
``cohort_outliers(rows)`` names, per slide, the measures that stand out from the cohort by a
robust z-score. Thresholds and their reasons are in :mod:`wsi_ai.qc.measures` (focus),
:mod:`wsi_ai.qc.artefacts` (pen, bubbles), :mod:`wsi_ai.qc.stain` (Macenko) and
:mod:`wsi_ai.qc.cohort`.
"""

from wsi_ai.qc.artefacts import bubble_mask, pen_mask
from wsi_ai.qc.cohort import DEFAULT_KEYS, MIN_SLIDES, cohort_outliers
from wsi_ai.qc.measures import (
    BLUR_CLASS,
    BLUR_LAPLACIAN_VAR,
    BUBBLE_CLASS,
    PEN_CLASS,
    SlideQC,
    laplacian_variance,
    qc_annotations,
    sample_patches,
    slide_qc,
)
from wsi_ai.qc.stain import StainEstimate, macenko

__all__ = [
    "BLUR_CLASS",
    "BLUR_LAPLACIAN_VAR",
    "BUBBLE_CLASS",
    "DEFAULT_KEYS",
    "MIN_SLIDES",
    "PEN_CLASS",
    "SlideQC",
    "StainEstimate",
    "bubble_mask",
    "cohort_outliers",
    "laplacian_variance",
    "macenko",
    "pen_mask",
    "qc_annotations",
    "sample_patches",
    "slide_qc",
]
