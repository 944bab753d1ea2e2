"""One slide's bag through an aggregator: the device, bfloat16 autocast, the bag's tensors.

Training (:mod:`wsi_ai.train.loop`) and prediction (:mod:`wsi_ai.nn.predict`) share these, so
a slide is fed to the model the same way in both.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from wsi_ai.errors import InvalidInputError
from wsi_ai.nn.mil import MILOutput
from wsi_ai.store.bags import SlideBag


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InvalidInputError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA (flash attention), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bag_tensors(
    bag: SlideBag,
    device: torch.device,
    max_tokens: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``[n, D]`` float32 and positions ``[n, 2]`` on ``device``; ``n`` is at most
    ``max_tokens`` (random patches, kept in slide order) when ``max_tokens > 0`` and ``rng``."""
    n = bag.embeddings.shape[0]
    emb, pos = bag.embeddings, bag.positions
    if rng is not None and 0 < max_tokens < n:
        pick = np.sort(rng.choice(n, size=max_tokens, replace=False))
        emb, pos = emb[pick], pos[pick]
    x = torch.from_numpy(np.ascontiguousarray(emb)).to(device=device, dtype=torch.float32)
    return x, torch.from_numpy(np.ascontiguousarray(pos)).to(device)


@torch.no_grad()
def run_bag(model: nn.Module, bag: SlideBag, device: torch.device) -> MILOutput:
    """One slide through the model in eval mode with every patch; outputs float32 on CPU."""
    model.eval()
    x, pos = bag_tensors(bag, device)
    with autocast(device):
        out = model(x, pos)
    return MILOutput(*(t.float().cpu() for t in (out.logits, out.patch_logits, out.attention)))
