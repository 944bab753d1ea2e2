"""Tissue stage: a low-resolution level of the slide becomes a mask and level-0 polygons.

``detect_tissue(slide)`` -> :class:`TissueMask` (``mask``, ``polygons``, ``fraction()``,
``to_annotations()``); ``detect_tissue_rgb(image, modality)`` is the pure-array core.
:class:`TissueConfig` is what the stage is asked (on or off, the mask's resolution).
"""

from wsi_ai.tissue.config import TissueConfig
from wsi_ai.tissue.detect import detect_tissue, detect_tissue_rgb, plan_read
from wsi_ai.tissue.mask import TissueMask
from wsi_ai.tissue.polygons import mask_to_polygons

__all__ = [
    "TissueConfig",
    "TissueMask",
    "detect_tissue",
    "detect_tissue_rgb",
    "mask_to_polygons",
    "plan_read",
]
