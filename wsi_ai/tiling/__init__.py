"""Patch grids at a physical resolution, and the patch table that flows between stages."""

from wsi_ai.tiling.grid import GridSpec, PatchGrid, grid, read_patch
from wsi_ai.tiling.table import read_table, write_table

__all__ = ["GridSpec", "PatchGrid", "grid", "read_patch", "read_table", "write_table"]
