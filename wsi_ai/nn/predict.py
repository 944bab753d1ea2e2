"""``wsi-ai predict``: a trained aggregator run folder applied to features stores.

For each ``<slide>.zarr`` it writes

- ``OUT/<slide>.patch_scores.csv``: the patch table the stitcher reads: level-0 ``x, y,
  width, height``, one column per class with the patch's probability (softmax of the
  aggregator's per-patch logits, uncalibrated) and ``attention`` (sums to 1 over the slide);
- ``OUT/<slide>.json``: the slide's predicted ``class``, its ``probability`` (softmax of the
  slide logits), the ``confidence`` (the same probability after temperature scaling),
  both probability vectors, the temperature and the model's sha256.

The two are one unit (:func:`wsi_ai.outputs.atomic_outputs`), the JSON its marker: a reader
treats ``<slide>.json`` as "finished" and the CSV beside it as its own (:func:`read_prediction`).
Both are written complete under temporary names, then renamed, the CSV first. What a reader
finds at every instant of a run, killed at any point:

- before the first rename: the old pair (``--overwrite``) or nothing;
- an old JSON is moved aside (``.<slide>.json.old-<8 hex>``): no JSON, so no prediction; the
  old CSV, then the new one, may be there: a left-over, not a result (the stitcher reads a
  patch_scores.csv alone; it is always a whole table);
- the JSON renamed into place: the new pair, finished.

The next run for the slide removes what a killed one left (the journal
``.<slide>.json.unit-<8 hex>`` names its CSV), with no ``--overwrite`` needed for a unit whose
JSON never arrived.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch import nn

from wsi_ai import __version__
from wsi_ai.errors import InvalidInputError, ModelError
from wsi_ai.nn.aggregator_card import CARD_NAME, AggregatorCard, read_card
from wsi_ai.nn.forward import resolve_device, run_bag
from wsi_ai.nn.mil import MILOutput
from wsi_ai.nn.probabilities import calibrated, softmax
from wsi_ai.nn.weights import NonFiniteOutputError, file_sha256
from wsi_ai.outputs import atomic_outputs, prepare_outputs
from wsi_ai.store.bags import SlideBag, load_bag

RANDOM_WARNING = (
    "trained on features from a backbone with RANDOM weights (--random-init): "
    "for benchmarks and smoke tests only, the prediction means nothing clinically"
)


@dataclass(frozen=True)
class TrainedAggregator:
    """A run folder loaded for prediction."""

    rundir: Path
    card: AggregatorCard
    model: nn.Module
    device: torch.device


def load_run(rundir: Path, device: str = "auto") -> TrainedAggregator:
    """Load ``aggregator.toml`` and its weights, checked against the card's sha256."""
    card = read_card(rundir / CARD_NAME)
    weights = rundir / card.weights
    if not weights.is_file():
        raise ModelError(f"weights {card.weights} named by the card are missing", rundir)
    if card.sha256 and file_sha256(weights) != card.sha256:
        raise ModelError("weights do not match the card's sha256; retrain or restore them", weights)
    model = card.build()
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError, ValueError) as err:
        raise ModelError(
            f"weights do not fit the card's {card.aggregator}: {err}", weights
        ) from err
    dev = resolve_device(device)
    model.to(dev).eval()
    return TrainedAggregator(rundir, card, model, dev)


def check_compatible(
    run: TrainedAggregator, bag: SlideBag, ident: dict[str, str], path: Path
) -> None:
    """The features must come from the embedding model the aggregator was trained on."""
    if bag.embeddings.shape[1] != run.card.in_dim:
        raise InvalidInputError(
            f"embeddings are {bag.embeddings.shape[1]}-d, the model expects {run.card.in_dim}-d; "
            "embed with the model the aggregator was trained on",
            path,
        )
    trained = run.card.features_model
    for key in ("name", "sha256", "random_init", "weights_sha256"):
        if key in trained and key in ident and trained[key] != ident[key]:
            raise InvalidInputError(
                f"features made with embedding model {key} {ident[key]!r}, "
                f"the aggregator was trained on {trained[key]!r}; embed with the same model",
                path,
            )


def check_finite(run: TrainedAggregator, bag: SlideBag, out: MILOutput) -> None:
    """Raise :class:`NonFiniteOutputError` when a logit or an attention weight is NaN or
    infinite, saying whether the features or the weights are to blame."""
    if all(bool(torch.isfinite(t).all()) for t in (out.logits, out.patch_logits, out.attention)):
        return
    if not np.isfinite(bag.embeddings).all():
        advice = "the features store holds NaN or infinite embeddings; re-embed the slide"
    else:
        advice = "the weights are corrupt or the training diverged; retrain or restore them"
    raise NonFiniteOutputError(run.rundir / run.card.weights, bag.name, advice)


def predict_bag(run: TrainedAggregator, bag: SlideBag) -> tuple[dict[str, Any], pd.DataFrame]:
    """The slide's prediction record and its patch-score table (non-finite outputs raise
    :class:`~wsi_ai.nn.weights.NonFiniteOutputError`)."""
    out = run_bag(run.model, bag, run.device)
    check_finite(run, bag, out)
    logits = out.logits.double().numpy()[None]
    prob, cal = softmax(logits)[0], calibrated(logits, run.card.temperature)[0]
    top = int(prob.argmax())
    classes = run.card.classes
    record = {
        "slide": bag.name,
        "class": classes[top],
        "probability": float(prob[top]),
        "confidence": float(cal[top]),
        "probabilities": {c: float(p) for c, p in zip(classes, prob, strict=True)},
        "calibrated_probabilities": {c: float(p) for c, p in zip(classes, cal, strict=True)},
        "logits": [float(v) for v in logits[0]],
        "temperature": run.card.temperature,
        "n_patches": int(bag.embeddings.shape[0]),
        "model": {
            "run": run.rundir.name,
            "aggregator": run.card.aggregator,
            "sha256": run.card.sha256,
        },
        "features_model": dict(run.card.features_model),
        "random_init": run.card.features_model.get("random_init") == "true",
        "wsi_ai_version": __version__,
    }
    if record["random_init"]:
        record["warning"] = RANDOM_WARNING
    table = pd.DataFrame(bag.coords, columns=["x", "y", "width", "height"])
    patch_prob = softmax(out.patch_logits.double().numpy())
    for c, name in enumerate(classes):
        table[name] = patch_prob[:, c].astype(np.float32)
    table["attention"] = out.attention.numpy().astype(np.float32)
    return record, table


def prediction_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    """``(patch_scores.csv, json)`` of slide ``name`` in ``out_dir``: the unit's order."""
    return out_dir / f"{name}.patch_scores.csv", out_dir / f"{name}.json"


def predict_store(
    run: TrainedAggregator, store: Path, out_dir: Path, overwrite: bool = False
) -> dict[str, Any]:
    """Predict one features store and write its two outputs into ``out_dir``, as one unit
    (the module's docstring); both are checked before the store is read."""
    name = store.name.removesuffix(".zarr")
    csv_path, json_path = prediction_paths(out_dir, name)
    prepare_outputs([csv_path, json_path], overwrite)
    bag, ident = load_bag(store)
    check_compatible(run, bag, ident, store)
    record, table = predict_bag(run, bag)
    with atomic_outputs([csv_path, json_path], overwrite) as (csv_tmp, json_tmp):
        table.to_csv(csv_tmp, index=False)
        json_tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def read_prediction(out_dir: Path, name: str) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """Slide ``name``'s finished prediction in ``out_dir``: its record and patch scores; None
    when it has no ``<slide>.json`` (never predicted, or a run stopped before the end, even
    with a ``patch_scores.csv`` there)."""
    csv_path, json_path = prediction_paths(Path(out_dir), name)
    try:
        text = json_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError as err:
        raise InvalidInputError(f"not a prediction record ({err})", json_path) from err
    if not isinstance(record, dict):
        raise InvalidInputError("not a prediction record (not a JSON object)", json_path)
    if not csv_path.is_file():
        raise InvalidInputError(
            f"a prediction without its {csv_path.name} (removed?): predict the slide again",
            json_path,
        )
    return record, pd.read_csv(csv_path)
