"""Patch positions for the MIL aggregators: level-0 boxes -> grid units -> 2-D sin/cos codes.

A patch's grid position is its centre divided by its own size, ``((x + w/2) / w,
(y + h/2) / h)``, so neighbouring patches are one unit apart whatever the MPP or patch size
the grid was cut at (the encoding is resolution-independent). The minimum over the slide is
subtracted, so positions are relative to the top-left of the tissue, not of the glass.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import NDArray

from wsi_ai.errors import ParameterError


def grid_positions(coords: NDArray[np.integer] | NDArray[np.floating]) -> NDArray[np.float32]:
    """Grid positions ``[N, 2]`` (x, y in patch units) from level-0 ``x, y, width, height``.

    ``coords`` is ``[N, 4]`` in level-0 pixels (a features store's ``coords``). Compute this
    on the whole slide before any token subsampling, so positions stay comparable.
    """
    boxes = np.asarray(coords, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ParameterError(
            f"coords must be [N, 4] level-0 x, y, width, height, got {boxes.shape}"
        )
    if boxes.shape[0] == 0:
        return np.zeros((0, 2), np.float32)
    size = np.maximum(boxes[:, 2:4], 1.0)
    grid = (boxes[:, 0:2] + size / 2) / size
    grid -= grid.min(axis=0, keepdims=True)
    return grid.astype(np.float32)


def sincos_2d(positions: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Fixed 2-D sinusoidal codes ``[..., dim]`` for positions ``[..., 2]`` in grid units.

    A quarter of the channels each hold sin(x), cos(x), sin(y), cos(y) at geometrically spaced
    frequencies from 1 to ``1 / max_period`` cycles per radian; ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ParameterError(f"positional code width must be a multiple of 4, got {dim}")
    quarter = dim // 4
    exponent = torch.arange(quarter, device=positions.device, dtype=torch.float32) / quarter
    freqs = torch.exp(-math.log(max_period) * exponent)
    pos = positions.to(torch.float32)
    ax = pos[..., 0:1] * freqs
    ay = pos[..., 1:2] * freqs
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=-1)
