"""What every MIL aggregator shares: its output and the handling of batched or single bags.

An aggregator takes one slide's patch embeddings ``[N, D]`` (or a padded batch ``[B, N, D]``
with a ``mask [B, N]``, True for real patches) and patch grid positions ``[N, 2]`` (see
:mod:`wsi_ai.nn.positions`), and returns a :class:`MILOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MILOutput:
    """Slide logits and per-patch read-outs (leading ``B`` only when the input was batched).

    - ``logits``: ``[C]`` (or ``[B, C]``) slide logits.
    - ``patch_logits``: ``[N, C]`` per-patch logits: the slide classifier applied to each
      patch's representation (what per-class heatmaps show).
    - ``attention``: ``[N]`` non-negative weights summing to 1 over the real patches (0 on
      masked ones): where the aggregator looked.
    """

    logits: torch.Tensor
    patch_logits: torch.Tensor
    attention: torch.Tensor


@dataclass(frozen=True)
class Bag:
    """Inputs brought to batched form: ``x [B, N, D]``, ``positions [B, N, 2] | None``,
    ``mask [B, N] bool | None``; ``batched`` says whether the caller passed a batch."""

    x: torch.Tensor
    positions: torch.Tensor | None
    mask: torch.Tensor | None
    batched: bool


def as_bag(x: torch.Tensor, positions: torch.Tensor | None, mask: torch.Tensor | None) -> Bag:
    """Check shapes and add a batch dimension to single-slide inputs."""
    if x.dim() not in (2, 3):
        raise ValueError(f"embeddings must be [N, D] or [B, N, D], got {tuple(x.shape)}")
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(0)
        positions = None if positions is None else positions.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    b, n, _ = x.shape
    if positions is not None and tuple(positions.shape) != (b, n, 2):
        raise ValueError(f"positions must be [N, 2] matching embeddings, got {positions.shape}")
    if mask is not None:
        if tuple(mask.shape) != (b, n):
            raise ValueError(f"mask must be [N] matching embeddings, got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
    return Bag(x, positions, mask, batched)


def unbatch(out: MILOutput, batched: bool) -> MILOutput:
    """Drop the batch dimension again for single-slide callers."""
    if batched:
        return out
    return MILOutput(out.logits[0], out.patch_logits[0], out.attention[0])


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dimension, with masked entries at exactly 0."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights if mask is None else weights.masked_fill(~mask, 0.0)
