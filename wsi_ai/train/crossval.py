"""``wsi-ai train``: k-fold cross-validation of a MIL aggregator and the run folder it leaves.

For each fold, a stratified part (``val_fraction``) of the training folds is held out for early
stopping, the rest trains the model, and the held-out fold is predicted (out-of-fold, OOF).
The temperature is fitted on the pooled OOF logits. The saved model is, by default
(``final="best-fold"``), the checkpoint of the fold with the lowest validation loss: a model
whose own held-out performance is part of the reported metrics and whose family the
temperature was fitted on. ``final="refit"`` instead trains once more on every labelled slide
for the median best epoch of the folds (no held-out data left to check it).

``RUNDIR`` (written to a temporary folder, renamed into place when complete):
``model.safetensors``, ``aggregator.toml`` (the card), ``metrics.json``,
``oof_predictions.csv``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from safetensors.torch import save_file

from wsi_ai import __version__
from wsi_ai.errors import InvalidInputError, ParameterError
from wsi_ai.nn.aggregator_card import (
    CARD_NAME,
    WEIGHTS_NAME,
    AggregatorCard,
    build_aggregator,
    full_hyperparameters,
)
from wsi_ai.nn.forward import resolve_device
from wsi_ai.nn.probabilities import calibrated, softmax
from wsi_ai.nn.weights import file_sha256
from wsi_ai.outputs import atomic_output, check_output
from wsi_ai.train.calibrate import fit_temperature
from wsi_ai.train.card import write_card
from wsi_ai.train.data import Dataset, load_dataset, make_folds, validation_split
from wsi_ai.train.loop import FitResult, TrainConfig, fit, seed_everything, slide_logits
from wsi_ai.train.metrics import auc, balanced_accuracy, ece, mean_sd, nll

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold logits ``[S, C]`` and fold id per slide, each fold's fit and metrics."""

    oof: NDArray[np.float64]
    oof_fold: NDArray[np.int64]
    fits: list[FitResult]
    folds: list[dict[str, Any]]


def _fold(
    data: Dataset, config: TrainConfig, k: int, train: NDArray, test: NDArray
) -> tuple[FitResult, NDArray]:
    """Train on ``train`` (minus a validation part) and return the fit and ``test``'s logits."""
    seed = config.seed + k
    try:
        inner, val = validation_split(data.y[train], config.val_fraction, seed)
    except ValueError as err:
        raise InvalidInputError(f"fold {k}: {err}; add slides or lower --folds") from err
    seed_everything(seed)
    model = build_aggregator(
        config.aggregator, data.in_dim, len(data.classes), config.hyperparameters
    )
    bags = data.bags
    result = fit(
        model,
        ([bags[i] for i in train[inner]], data.y[train[inner]]),
        ([bags[i] for i in train[val]], data.y[train[val]]),
        config,
        n_classes=len(data.classes),
        seed=seed,
    )
    logits = slide_logits(model, [bags[i] for i in test], resolve_device(config.device))
    return result, logits


def cross_validate(data: Dataset, config: TrainConfig) -> CrossValidation:
    """Run every fold (stratified k-fold, or the labels CSV's fold column)."""
    splits = make_folds(data, config.folds, config.seed)
    fold_ids = (
        sorted(set(data.folds.tolist())) if data.folds is not None else list(range(len(splits)))
    )
    oof = np.zeros((len(data.y), len(data.classes)))
    oof_fold = np.zeros(len(data.y), dtype=np.int64)
    fits: list[FitResult] = []
    rows: list[dict[str, Any]] = []
    for k, (train, test) in enumerate(splits):
        result, logits = _fold(data, config, k, train, test)
        oof[test], oof_fold[test] = logits, fold_ids[k]
        prob = softmax(logits)
        rows.append(
            {
                "fold": fold_ids[k],
                "n_train": len(train),
                "n_test": len(test),
                "auc": auc(data.y[test], prob),
                "balanced_accuracy": balanced_accuracy(data.y[test], prob),
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "val_loss": result.best_val_loss,
                "history": result.history,
            }
        )
        fits.append(result)
        log.info("fold %s: AUC %s, best epoch %d", fold_ids[k], rows[-1]["auc"], result.best_epoch)
    return CrossValidation(oof, oof_fold, fits, rows)


def _final_state(
    data: Dataset, config: TrainConfig, cv: CrossValidation
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The weights to save and how they were chosen (module docstring)."""
    fits = cv.fits
    if config.final == "refit":
        epochs = max(1, int(np.median([f.best_epoch for f in fits])))
        seed_everything(config.seed + len(fits))
        model = build_aggregator(
            config.aggregator, data.in_dim, len(data.classes), config.hyperparameters
        )
        result = fit(
            model,
            (list(data.bags), data.y),
            None,
            config,
            n_classes=len(data.classes),
            seed=config.seed + len(fits),
            epochs=epochs,
        )
        return result.state, {"final": "refit", "final_epochs": epochs}
    losses = [np.inf if f.best_val_loss is None else f.best_val_loss for f in fits]
    best = int(np.argmin(losses))
    info = {"final": "best-fold", "final_fold": cv.folds[best]["fold"]}
    return fits[best].state, info


def _metrics(data: Dataset, cv: CrossValidation, temperature: float) -> dict[str, Any]:
    oof, y = cv.oof, data.y
    prob, cal = softmax(oof), calibrated(oof, temperature)
    return {
        "classes": list(data.classes),
        "n_slides": len(y),
        "n_per_class": data.class_counts(),
        "auc": mean_sd([r["auc"] for r in cv.folds]),
        "balanced_accuracy": mean_sd([r["balanced_accuracy"] for r in cv.folds]),
        "oof": {
            "auc": auc(y, prob),
            "balanced_accuracy": balanced_accuracy(y, prob),
            "nll": nll(y, oof),
            "nll_calibrated": nll(y, oof / temperature),
            "ece": ece(y, prob),
            "ece_calibrated": ece(y, cal),
        },
        "temperature": temperature,
        "features_model": dict(data.features_model),
        "random_init": data.features_model.get("random_init") == "true",
        "folds": cv.folds,
    }


def _oof_table(data: Dataset, cv: CrossValidation, temperature: float) -> pd.DataFrame:
    prob, cal = softmax(cv.oof), calibrated(cv.oof, temperature)
    table = pd.DataFrame(
        {
            "slide": [b.name for b in data.bags],
            "label": [data.classes[i] for i in data.y],
            "fold": cv.oof_fold,
            "predicted": [data.classes[i] for i in prob.argmax(axis=1)],
        }
    )
    for c, name in enumerate(data.classes):
        table[f"prob_{name}"] = prob[:, c]
    for c, name in enumerate(data.classes):
        table[f"calibrated_{name}"] = cal[:, c]
    return table


def train_run(
    labels_csv: Path, features: Path, rundir: Path, config: TrainConfig, overwrite: bool = False
) -> dict[str, Any]:
    """Cross-validate, calibrate, and write ``rundir``; returns the metrics written."""
    if config.final not in ("best-fold", "refit"):
        raise ParameterError(f"final must be 'best-fold' or 'refit', got {config.final!r}")
    check_output(rundir, overwrite)
    resolve_device(config.device)  # fail on a bad --device before loading anything
    hyper = full_hyperparameters(config.aggregator, config.hyperparameters)
    config = replace(config, hyperparameters=hyper)
    data = load_dataset(labels_csv, features, config.folds)
    cv = cross_validate(data, config)
    temperature = fit_temperature(cv.oof, data.y)
    metrics = _metrics(data, cv, temperature)
    state, final_info = _final_state(data, config, cv)
    settings = {k: v for k, v in asdict(config).items() if k not in ("hyperparameters", "device")}
    metrics.update(aggregator=config.aggregator, settings=settings, **final_info)
    with atomic_output(rundir, overwrite) as tmp:
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"aggregator": config.aggregator})
        card = AggregatorCard(
            aggregator=config.aggregator,
            in_dim=data.in_dim,
            classes=data.classes,
            hyperparameters=dict(config.hyperparameters),
            temperature=temperature,
            sha256=file_sha256(tmp / WEIGHTS_NAME),
            features_model=data.features_model,
            training={
                "wsi_ai_version": __version__,
                "labels": labels_csv.name,
                "n_slides": len(data.y),
                "fold_source": "column" if data.folds is not None else "stratified",
                "oof_auc": metrics["oof"]["auc"],
                **settings,
                **final_info,
            },
        )
        write_card(tmp / CARD_NAME, card)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        _oof_table(data, cv, temperature).to_csv(tmp / "oof_predictions.csv", index=False)
    return metrics
