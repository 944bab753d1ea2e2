"""Patch grids at a physical resolution: the patch table every later stage extends.

:func:`plan_patches` (tissue, grid, "no patch" error) is what the stages call;
:func:`grid` lays a grid; :func:`read_patch` reads one patch. The patch table's file
formats live in :mod:`wsi_ai.store`.
"""

from wsi_ai.tiling.grid import GridSpec, PatchGrid, grid, read_patch
from wsi_ai.tiling.plan import GridConfig, plan_patches

__all__ = ["GridConfig", "GridSpec", "PatchGrid", "grid", "plan_patches", "read_patch"]
