"""The aggregator card ``RUNDIR/aggregator.toml`` and the registry of aggregators it names.

A card says what a trained MIL model is and how to rebuild it: type, hyper-parameters, input
width, classes, temperature, weights' sha256, the embedding model its features came from,
how it was trained. :func:`read_card` reads one; :func:`build_aggregator` makes a fresh
model of a registered type (``abmil``, ``vit``). Writing a card is training's
(:func:`wsi_ai.train.card.write_card`).
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from wsi_ai.errors import ModelError
from wsi_ai.nn.abmil import GatedABMIL
from wsi_ai.nn.vit_mil import ViTMIL

CARD_NAME = "aggregator.toml"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "wsi-ai aggregator card 1"
AGGREGATORS: dict[str, type[nn.Module]] = {"abmil": GatedABMIL, "vit": ViTMIL}


def build_aggregator(
    kind: str, in_dim: int, n_classes: int, hyperparameters: Mapping[str, Any]
) -> nn.Module:
    """A fresh aggregator of ``kind`` (``abmil`` or ``vit``) with the given keyword options."""
    if kind not in AGGREGATORS:
        raise ModelError(f"unknown aggregator {kind!r}; expected one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[kind](in_dim, n_classes, **dict(hyperparameters))


def full_hyperparameters(kind: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every keyword option of ``kind``'s constructor: ``given`` over the defaults (so a card
    rebuilds the same model even if a default changes later). Unknown names are an error."""
    if kind not in AGGREGATORS:
        raise ModelError(f"unknown aggregator {kind!r}; expected one of {sorted(AGGREGATORS)}")
    params = inspect.signature(AGGREGATORS[kind]).parameters
    defaults = {
        name: p.default for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ModelError(f"{kind} has no option(s) {', '.join(unknown)}")
    return {**defaults, **given}


@dataclass(frozen=True)
class AggregatorCard:
    aggregator: str
    in_dim: int
    classes: tuple[str, ...]
    hyperparameters: Mapping[str, Any]
    temperature: float = 1.0
    weights: str = WEIGHTS_NAME
    sha256: str = ""
    features_model: Mapping[str, str] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return build_aggregator(
            self.aggregator, self.in_dim, len(self.classes), self.hyperparameters
        )


def read_card(path: Path) -> AggregatorCard:
    """Read ``aggregator.toml``; a missing or malformed card is a :class:`ModelError`."""
    if not path.is_file():
        raise ModelError(f"no {CARD_NAME} here; point --model at a `wsi-ai train` run", path.parent)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return AggregatorCard(
            aggregator=str(data["aggregator"]),
            in_dim=int(data["in_dim"]),
            classes=tuple(str(c) for c in data["classes"]),
            hyperparameters=dict(data.get("hyperparameters", {})),
            temperature=float(data.get("temperature", 1.0)),
            weights=str(data.get("weights", WEIGHTS_NAME)),
            sha256=str(data.get("sha256", "")),
            features_model={str(k): str(v) for k, v in data.get("features_model", {}).items()},
            training=dict(data.get("training", {})),
        )
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as err:
        raise ModelError(f"malformed aggregator card ({type(err).__name__}: {err})", path) from err
