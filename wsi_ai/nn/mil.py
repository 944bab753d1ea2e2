"""What every MIL aggregator shares: its output and the handling of batched or single bags.

An aggregator takes one slide's patch embeddings ``[N, D]`` (or a padded batch ``[B, N, D]``
with a ``mask [B, N]``, True for real patches) and patch grid positions ``[N, 2]`` (see
:func:`wsi_ai.store.bags.grid_positions`), and returns a :class:`MILOutput`.

Every aggregator first standardises its input with :class:`InputNorm`: per-dimension mean and
standard deviation measured on the training patches (buffers, so they travel with the
weights). Embedding scales differ by orders of magnitude between backbones (a random-init
ResNet gives values around 0.04, UNI around 1, some models hundreds); without this the
first layer's learning rate and the ViT's positional code would mean different things for
each backbone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from wsi_ai.errors import InvalidInputError, ParameterError


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
        raise ParameterError(f"embeddings must be [N, D] or [B, N, D], got {tuple(x.shape)}")
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(0)
        positions = None if positions is None else positions.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    b, n, _ = x.shape
    if positions is not None and tuple(positions.shape) != (b, n, 2):
        raise ParameterError(
            f"positions must be [N, 2] matching embeddings {tuple(x.shape[1:2])}, "
            f"got {tuple(positions.shape)}"
        )
    if mask is not None:
        if tuple(mask.shape) != (b, n):
            raise ParameterError(
                f"mask must be [N] matching embeddings {tuple(x.shape[1:2])}, "
                f"got {tuple(mask.shape)}"
            )
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


class InputNorm(nn.Module):
    """``(x - mean) / std`` per embedding dimension; identity until :meth:`fit` is called."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    @torch.no_grad()
    def fit(self, embeddings: Iterable[NDArray[np.floating]], eps: float = 1e-6) -> None:
        """Measure mean and std over every patch of ``embeddings`` (one ``[N, D]`` array per
        slide; float64 sums, one pass). Constant dimensions keep std 1."""
        total = 0
        s1 = np.zeros(self.mean.shape[0])
        s2 = np.zeros(self.mean.shape[0])
        for emb in embeddings:
            a = np.asarray(emb, dtype=np.float64)
            if a.ndim != 2 or a.shape[1] != s1.shape[0]:
                raise InvalidInputError(
                    f"embeddings must be [N, {s1.shape[0]}], got {a.shape}; "
                    "are all feature stores from the same backbone?"
                )
            total += a.shape[0]
            s1 += a.sum(axis=0)
            s2 += np.square(a).sum(axis=0)
        if total == 0:
            raise InvalidInputError(
                "no patches to measure the input statistics on: every training slide's "
                "feature store is empty; extract features with tissue patches first"
            )
        mean = s1 / total
        std = np.sqrt(np.maximum(s2 / total - mean**2, 0.0))
        std[std < eps] = 1.0
        self.mean.copy_(torch.from_numpy(mean))
        self.std.copy_(torch.from_numpy(std))
