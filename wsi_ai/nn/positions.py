"""Positional codes for the MIL aggregators: patch grid positions -> 2-D sin/cos codes.

The grid positions themselves (level-0 boxes -> patch units, resolution-independent) come
with the bag: :func:`wsi_ai.store.bags.grid_positions`.
"""

from __future__ import annotations

import math

import torch

from wsi_ai.errors import ParameterError


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
