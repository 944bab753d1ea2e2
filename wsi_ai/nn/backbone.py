"""Backbones from model cards: a timm architecture, local weights, one embedding per patch.

``build_backbone(card, weights, device=...)`` builds the card's architecture on the meta
device (no memory, no random init), loads the local weights file into it in place, on
the target device (a GPU run never builds the model on the CPU), and wraps it in a
:class:`Backbone` whose ``forward`` maps normalised images ``[B, 3, H, W]`` to
embeddings ``[B, embed_dim]`` with the card's readout. ``random_init=True`` gives the
same network with random weights for benchmarks and smoke tests; the backbone says so
in :meth:`Backbone.provenance`, and every output written from it must carry that flag.
Nothing is downloaded: timm is always called with ``pretrained=False``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_ai.errors import ModelError, ParameterError
from wsi_ai.nn.cards import ModelCard
from wsi_ai.nn.weights import LoadReport, load_weights

__all__ = [
    "Backbone",
    "LoadReport",
    "build_backbone",
    "create_architecture",
    "load_weights",
    "normalisation",
]

log = logging.getLogger(__name__)

Device = str | torch.device


def _offline() -> None:
    """Make sure no library underneath tries the Hugging Face hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def create_architecture(card: ModelCard, *, device: Device = "cpu") -> nn.Module:
    """The card's timm network with timm's own random init (or shapes only on ``"meta"``)."""
    _offline()
    import timm

    if not timm.is_model(card.architecture):
        raise ModelError(
            f"card {card.name!r}: timm {timm.__version__} has no architecture "
            f"{card.architecture!r}; check the name or upgrade timm",
            card.path,
        )
    kwargs = card.timm_kwargs()
    try:
        with torch.device(device):
            model = timm.create_model(card.architecture, pretrained=False, **kwargs)
    except Exception as err:  # timm raises many kinds for kwargs it cannot use
        raise ModelError(
            f"card {card.name!r}: timm cannot build {card.architecture} with the card's "
            f"kwargs ({type(err).__name__}: {err})",
            card.path,
        ) from err
    return model.eval()


def _readout_dim(card: ModelCard, model: nn.Module) -> tuple[int, int]:
    """(embedding length, number of prefix tokens) the readout gives on this model."""
    features = int(getattr(model, "num_features", 0))
    if card.readout == "pooled":
        return int(getattr(model, "head_hidden_size", None) or features), 0
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None or getattr(model, "cls_token", None) is None:
        raise ModelError(
            f"card {card.name!r}: readout {card.readout!r} needs a ViT with a class token; "
            f'{card.architecture} has none (use readout = "pooled")',
            card.path,
        )
    if card.num_prefix_tokens is not None and card.num_prefix_tokens != prefix:
        raise ModelError(
            f"card {card.name!r}: num_prefix_tokens is {card.num_prefix_tokens} but the "
            f"network has {prefix} (class token + registers)",
            card.path,
        )
    dim = 2 * features if card.readout == "cls+mean_patch" else features
    return dim, int(prefix)


def _build_device(device: Device) -> torch.device:
    """Where a model is materialised: ``device`` itself for the CPU and CUDA GPUs (a bare
    ``cuda`` made ``cuda:N``), else the CPU (the model is moved afterwards)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Random numbers drawn on ``device`` (and the CPU) seeded with ``seed``; the callers'
    generator states are restored afterwards. On a GPU the values differ from the CPU's
    for one seed, but are the same for every run on that GPU kind."""
    gpus = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.default_generator.manual_seed(seed)  # the CPU only (torch.manual_seed: all)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _random_weights(model: nn.Module, seed: int, device: Device = "cpu") -> bool:
    """Materialise a meta-device model on ``device`` with seeded random weights.

    Uses each layer's own ``reset_parameters`` (fast, unlike timm's truncated-normal
    init of a billion values) and N(0, 0.02) for loose tensors (class token, position
    embedding, registers), drawn on ``device`` itself. Returns False, leaving the model
    unusable, when some buffer would stay uninitialised; the caller then builds it the
    slow way.
    """
    device = torch.device(device)
    model.to_empty(device=device)
    covered: set[int] = set()
    resets = []
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            resets.append(reset)
            covered.update(id(t) for t in module.parameters(recurse=False))
            covered.update(id(t) for t in module.buffers(recurse=False))
    if any(id(b) not in covered for b in model.buffers()):
        return False
    with _seeded(seed, device), torch.no_grad():
        for reset in resets:
            reset()
        for param in model.parameters():
            if id(param) not in covered:
                param.normal_(0.0, 0.02)
    return True


class Backbone(nn.Module):
    """A frozen feature extractor: normalised images ``[B, 3, H, W]`` -> ``[B, embed_dim]``.

    Inputs are RGB scaled to [0, 1] then normalised with the card's mean/std (see
    :func:`normalisation`), patches of ``card.input_size`` px at ``card.mpp`` µm/px.
    """

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        *,
        num_prefix_tokens: int,
        random_init: bool,
        weights: Path | None,
        report: LoadReport | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.card = card
        self.num_prefix_tokens = num_prefix_tokens
        self.random_init = random_init
        self.weights = weights
        self.report = report

    @property
    def embed_dim(self) -> int:
        return self.card.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ParameterError(
                f"expected normalised RGB images [B, 3, H, W], got {tuple(images.shape)}"
            )
        model: Any = self.model  # a timm model: forward_features / forward_head
        features = model.forward_features(images)
        if self.card.readout == "pooled":
            return model.forward_head(features, pre_logits=True)
        cls = features[:, 0]
        if self.card.readout == "cls":
            return cls
        patches = features[:, self.num_prefix_tokens :].mean(dim=1)
        return torch.cat([cls, patches], dim=1)

    def provenance(self) -> dict[str, Any]:
        """What every output written from this backbone must record.

        ``weights_sha256`` identifies the weights file (``None`` for random weights);
        ``weights_sha256_checked`` says whether it was checked against an expected one.
        """
        return {
            "model": self.card.name,
            "card_hash": self.card.card_hash,
            "architecture": self.card.architecture,
            "weights": None if self.weights is None else str(self.weights),
            "weights_sha256": None if self.report is None else self.report.sha256,
            "weights_sha256_checked": self.report is not None and self.report.sha256_checked,
            "random_init": self.random_init,
        }


def build_backbone(
    card: ModelCard,
    weights: str | Path | None = None,
    *,
    random_init: bool = False,
    device: Device = "cpu",
    sha256: str | None = None,
    seed: int = 0,
) -> Backbone:
    """Build the card's network and load its local weights (or random ones) on ``device``.

    ``weights`` defaults to the card's ``weights``; ``sha256`` (else the card's) is
    checked when given, and the file's sha256 is recorded in :meth:`Backbone.provenance`
    either way (the file is hashed once). ``random_init=True`` uses seeded random
    weights instead and marks the backbone as such. Raises :class:`ModelError` for a missing or
    mismatching file, a wrong sha256, or a card whose readout does not fit.

    The network is built on the meta device and its tensors materialise on ``device``
    directly: the file's tensors are copied there, or the seeded random weights are drawn
    there (on a GPU they differ from the CPU's for one seed, and are the same run to run).
    """
    if random_init and weights is not None:
        raise ModelError(f"card {card.name!r}: give a weights file or random_init, not both")
    given = weights if weights is not None else card.weights
    path = None if random_init or given is None else Path(given).expanduser()
    if path is None and not random_init:
        raise ModelError(
            f"card {card.name!r} names no weights file: download the weights from "
            f"{card.source or 'the publisher'} and pass their path, or use --random-init "
            "for smoke tests and benchmarks",
            card.path,
        )
    model = create_architecture(card, device="meta")
    dim, prefix = _readout_dim(card, model)
    if dim != card.embed_dim:
        raise ModelError(
            f"card {card.name!r}: embed_dim is {card.embed_dim} but readout "
            f"{card.readout!r} of {card.architecture} gives {dim}",
            card.path,
        )
    report = None
    where = _build_device(device)
    if random_init:
        if not _random_weights(model, seed, where):
            with _seeded(seed, where):
                model = create_architecture(card, device=where)
        log.warning("card %s: RANDOM weights (random_init); outputs mean nothing", card.name)
    else:
        assert path is not None
        report = load_weights(model, card, path, sha256, device=where)
        tensors = itertools.chain(model.parameters(), model.buffers())
        if any(t.is_meta for t in tensors):  # non-persistent buffers: build for real
            model = create_architecture(card, device=where)
            report = load_weights(model, card, path, sha256, digest=report.sha256, device=where)
    model = model.to(device).eval().requires_grad_(False)
    backbone = Backbone(
        model,
        card,
        num_prefix_tokens=prefix,
        random_init=random_init,
        weights=path,
        report=report,
    )
    return backbone.eval()


def normalisation(
    card: ModelCard, device: Device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The card's mean and std as ``[1, 3, 1, 1]`` tensors for ``(x / 255 - mean) / std``."""
    mean = torch.tensor(card.mean, dtype=dtype, device=device).view(1, 3, 1, 1)
    std = torch.tensor(card.std, dtype=dtype, device=device).view(1, 3, 1, 1)
    return mean, std
