"""Scorers without a model: per-patch values computed from the pixels themselves.

:mod:`.he` scores each patch of a patch table by its mean hematoxylin density
(``wsi-ai score-he``).
"""

from wsi_ai.score.he import COLUMN, hematoxylin_density, hematoxylin_map, patch_hematoxylin

__all__ = ["COLUMN", "hematoxylin_density", "hematoxylin_map", "patch_hematoxylin"]
