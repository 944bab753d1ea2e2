"""Writing the aggregator card ``RUNDIR/aggregator.toml`` at the end of a training run.

What a card holds, and reading it back, is :mod:`wsi_ai.nn.aggregator_card`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsi_ai.nn.aggregator_card import FORMAT, AggregatorCard


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(data: Mapping[str, Any]) -> str:
    """TOML for flat keys plus one level of tables; ``None`` values are left out."""
    lines = [
        f"{k} = {_value(v)}"
        for k, v in data.items()
        if v is not None and not isinstance(v, Mapping)
    ]
    for key, table in data.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{key}]"]
            lines += [
                f"{json.dumps(str(k))} = {_value(v)}" for k, v in table.items() if v is not None
            ]
    return "\n".join(lines) + "\n"


def write_card(path: Path, card: AggregatorCard) -> None:
    data = {
        "format": FORMAT,
        "aggregator": card.aggregator,
        "in_dim": card.in_dim,
        "classes": list(card.classes),
        "temperature": card.temperature,
        "weights": card.weights,
        "sha256": card.sha256,
        "hyperparameters": dict(card.hyperparameters),
        "features_model": dict(card.features_model),
        "training": dict(card.training),
    }
    path.write_text(dumps_toml(data), encoding="utf-8")
