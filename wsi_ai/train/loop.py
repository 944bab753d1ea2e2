"""Training one aggregator: AdamW, one slide per step, token subsampling, early stopping.

Before the first step the aggregator's :class:`~wsi_ai.nn.mil.InputNorm` is measured on the
training slides' patches (never the validation or test slides). Each step draws at most
``max_tokens`` patches of one slide at random (positions are computed on the whole slide
first, so subsampling never shifts them); evaluation always uses every patch. The loss is
cross-entropy weighted by inverse class frequency in the training slides (``n / (C * n_c)``),
so a rare class counts as much as a common one. With a validation set, training stops once
the validation loss (same weighting) has not improved for ``patience`` epochs and the
weights of the best epoch are returned; without one it runs ``max_epochs``.

Seeds: :func:`seed_everything` seeds ``random``, NumPy and torch (weight init, dropout); the
slide order and token draws come from ``numpy.random.default_rng(seed)``. CPU runs repeat
bit for bit; CUDA kernels (attention backward) may differ in the last bits.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from wsi_ai.nn.forward import autocast, bag_tensors, resolve_device, run_bag
from wsi_ai.nn.mil import InputNorm
from wsi_ai.store.bags import SlideBag


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimiser, stopping and sampling settings (frozen; from CLI flags)."""

    aggregator: str = "abmil"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    folds: int = 5
    seed: int = 0
    max_epochs: int = 50
    patience: int = 10
    lr: float = 2e-4
    weight_decay: float = 1e-2
    max_tokens: int = 8192
    val_fraction: float = 0.2
    grad_clip: float = 1.0
    device: str = "cpu"
    final: str = "best-fold"  # or "refit"


@dataclass
class FitResult:
    """Weights (on CPU) of the best epoch, and the loss curve."""

    state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_loss: float | None
    epochs_run: int
    history: list[dict[str, float]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_weights(y: NDArray[np.integer], n_classes: int) -> torch.Tensor:
    """``n / (C * n_c)`` for classes present in ``y``, 0 for absent ones."""
    counts = np.bincount(np.asarray(y), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def slide_logits(model: nn.Module, bags: Sequence[SlideBag], device: torch.device) -> NDArray:
    """Slide logits ``[S, C]`` (float64) for every bag."""
    return np.stack([run_bag(model, b, device).logits.double().numpy() for b in bags])


def weighted_nll(logits: NDArray, y: NDArray[np.integer], weights: torch.Tensor) -> float:
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    loss = F.cross_entropy(torch.from_numpy(logits).float(), target, weight=weights)
    return float(loss)


def fit(
    model: nn.Module,
    train: tuple[Sequence[SlideBag], NDArray[np.integer]],
    val: tuple[Sequence[SlideBag], NDArray[np.integer]] | None,
    config: TrainConfig,
    *,
    n_classes: int,
    seed: int,
    epochs: int | None = None,
) -> FitResult:
    """Train ``model`` in place; early stopping on ``val`` when given, else ``epochs``
    (default ``config.max_epochs``) epochs. Returns the best (or last) weights.

    ``seed`` drives the slide order and token draws; seed torch (:func:`seed_everything`)
    before building the model, which fixes the initial weights and dropout."""
    device = resolve_device(config.device)
    bags, y = train
    norm = getattr(model, "input_norm", None)
    if isinstance(norm, InputNorm):  # standardise with the training patches only
        norm.fit(b.embeddings for b in bags)
    model.to(device)
    weights = class_weights(y, n_classes)
    w_dev = weights.to(device)
    target = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(seed)
    best_loss, best_epoch, stale = math.inf, 0, 0
    best_state = _cpu_state(model)
    history: list[dict[str, float]] = []
    epoch = 0
    for epoch in range(1, (epochs or config.max_epochs) + 1):
        model.train()
        total = 0.0
        for i in rng.permutation(len(bags)):
            x, pos = bag_tensors(bags[i], device, config.max_tokens, rng)
            with autocast(device):
                out = model(x, pos)
            logits = out.logits.float().unsqueeze(0)
            loss = w_dev[target[i]] * F.cross_entropy(logits, target[i : i + 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            total += float(loss.detach())
        record = {"epoch": float(epoch), "train_loss": total / max(1, len(bags))}
        if val is not None:
            val_loss = weighted_nll(slide_logits(model, val[0], device), val[1], weights)
            record["val_loss"] = val_loss
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = _cpu_state(model)
            else:
                stale += 1
        history.append(record)
        if val is not None and stale >= config.patience:
            break
    if val is None:
        best_epoch, best_state = epoch, _cpu_state(model)
    model.load_state_dict(best_state)
    return FitResult(
        state=best_state,
        best_epoch=best_epoch,
        best_val_loss=None if val is None else best_loss,
        epochs_run=epoch,
        history=history,
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
