"""Gated-attention MIL (ABMIL; Ilse, Tomczak and Welling, ICML 2018): the baseline aggregator.

Each patch embedding ``e_i`` (standardised, see :class:`~wsi_ai.nn.mil.InputNorm`) is
mapped to ``h_i = dropout(GELU(W e_i))``; its attention score is
``a_i = w^T (tanh(V h_i) * sigmoid(U h_i))``, softmax over the slide's patches; the slide
representation is ``z = sum_i a_i h_i`` and the slide logits ``classifier(z)``.

Read-out: ``attention`` is ``a``; ``patch_logits`` is ``classifier(h_i)``. The classifier is
linear, so the slide logits are exactly the attention-weighted mean of the patch logits:
a patch's contribution to a class is ``a_i * patch_logits[i]``. Positions are ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from wsi_ai.nn.mil import InputNorm, MILOutput, as_bag, masked_softmax, unbatch


class GatedABMIL(nn.Module):
    """Gated-attention MIL over patch embeddings ``[N, in_dim]`` -> ``n_classes`` logits."""

    kind = "abmil"

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        width: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.input_norm = InputNorm(in_dim)
        self.embed = nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(width, attention_dim)
        self.attention_u = nn.Linear(width, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(width, n_classes)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> MILOutput:
        """``x``: ``[N, D]`` or ``[B, N, D]``; ``mask``: True for real patches.

        ``positions`` is accepted for interface parity with the ViT and ignored.
        """
        bag = as_bag(x, positions, mask)
        h = self.embed(self.input_norm(bag.x))  # [B, N, width]
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        scores = self.attention_w(gate).squeeze(-1)  # [B, N]
        attention = masked_softmax(scores, bag.mask)
        pooled = torch.einsum("bn,bnd->bd", attention, h)
        out = MILOutput(
            logits=self.classifier(pooled),
            patch_logits=self.classifier(h),
            attention=attention,
        )
        return unbatch(out, bag.batched)
