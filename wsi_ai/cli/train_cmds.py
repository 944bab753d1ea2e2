"""MIL commands: ``train`` (cross-validated aggregator) and ``predict`` (slides -> JSON + patch
scores). Torch is imported only when one of them runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from wsi_ai.cli.common import (
    INPUT_PATH,
    echo_json,
    json_option,
    log,
    out_option,
    overwrite_option,
    run_each,
)
from wsi_ai.errors import InvalidInputError

DEVICE = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when available), cpu, cuda or cuda:N.",
)


def _fmt(stat: dict[str, Any]) -> str:
    if stat.get("mean") is None:
        return "n/a"
    sd = stat.get("sd")
    return f"{stat['mean']:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


@click.command()
@click.option(
    "--features",
    required=True,
    type=INPUT_PATH,
    help="Folder of <slide>.zarr features stores (from `wsi-ai embed`).",
)
@click.option(
    "--labels",
    required=True,
    type=INPUT_PATH,
    help="CSV with columns slide,label[,fold]; slide is the store's stem (extension optional).",
)
@click.option(
    "--aggregator",
    type=click.Choice(["vit", "abmil"]),
    default="vit",
    show_default=True,
    help="vit: transformer over patch tokens with 2-D positions; abmil: gated attention "
    "(much faster on CPU).",
)
@click.option(
    "--folds",
    type=click.IntRange(2, 100),
    default=5,
    show_default=True,
    help="k of stratified k-fold (ignored when the CSV has a fold column).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Maximum epochs per fold.",
)
@click.option(
    "--patience",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Stop after this many epochs without a lower validation loss.",
)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-4, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-2, show_default=True)
@click.option(
    "--dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Dropout rate [default: vit 0.1, abmil 0.25].",
)
@click.option(
    "--width",
    type=click.IntRange(4),
    default=None,
    help="Hidden width [default: vit 512, abmil 256].",
)
@click.option("--depth", type=click.IntRange(1), default=None, help="ViT layers [default: 4].")
@click.option("--heads", type=click.IntRange(1), default=None, help="ViT heads [default: 8].")
@click.option(
    "--max-tokens",
    type=click.IntRange(0),
    default=8192,
    show_default=True,
    help="Patches drawn per slide per training step (0: all).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Part of the training folds held out for early stopping.",
)
@click.option(
    "--final",
    type=click.Choice(["best-fold", "refit"]),
    default="best-fold",
    show_default=True,
    help="Saved model: the fold checkpoint with the lowest validation loss, or a "
    "refit on all slides for the median best epoch.",
)
@DEVICE
@out_option("RUNDIR")
@overwrite_option
@json_option
def train(
    features: Path,
    labels: Path,
    aggregator: str,
    folds: int,
    seed: int,
    epochs: int,
    patience: int,
    lr: float,
    weight_decay: float,
    dropout: float | None,
    width: int | None,
    depth: int | None,
    heads: int | None,
    max_tokens: int,
    val_fraction: float,
    final: str,
    device: str,
    out: Path,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Train a MIL aggregator with k-fold cross-validation; write RUNDIR.

    RUNDIR holds model.safetensors, aggregator.toml (its card, with the temperature fitted
    on out-of-fold predictions), metrics.json (AUC and balanced accuracy per fold, mean ±
    sd, pooled out-of-fold AUC) and oof_predictions.csv.

    \b
    Example:
      wsi-ai train --features feats/ --labels labels.csv --aggregator vit --folds 5 -o run1
    """
    if aggregator == "abmil" and (depth is not None or heads is not None):
        raise click.UsageError("--depth and --heads apply to --aggregator vit only")
    given = {"width": width, "depth": depth, "heads": heads, "dropout": dropout}
    hyper = {k: v for k, v in given.items() if v is not None}
    result: dict[str, Any] = {}

    def work(_: Path) -> None:
        from wsi_ai.train import TrainConfig, train_run

        config = TrainConfig(
            aggregator=aggregator,
            hyperparameters=hyper,
            folds=folds,
            seed=seed,
            max_epochs=epochs,
            patience=patience,
            lr=lr,
            weight_decay=weight_decay,
            max_tokens=max_tokens,
            val_fraction=val_fraction,
            device=device,
            final=final,
        )
        result.update(train_run(labels, features, out, config, overwrite=overwrite))

    code = run_each([labels], work)
    if result:
        if as_json:
            echo_json(
                {k: v for k, v in result.items() if k != "folds"}
                | {
                    "folds": [
                        {k: v for k, v in f.items() if k != "history"} for f in result["folds"]
                    ]
                }
            )
        else:
            oof = result["oof"]
            click.echo(
                f"{len(result['folds'])}-fold CV: AUC {_fmt(result['auc'])}, balanced accuracy "
                f"{_fmt(result['balanced_accuracy'])}; pooled out-of-fold AUC "
                f"{'n/a' if oof['auc'] is None else format(oof['auc'], '.3f')}; "
                f"temperature {result['temperature']:.3g} -> {out}"
            )
        if result.get("random_init"):
            log.warning("features from a backbone with RANDOM weights: a benchmark, not a model")
    raise SystemExit(code)


@click.command()
@click.option(
    "--model",
    "rundir",
    required=True,
    type=INPUT_PATH,
    help="RUNDIR written by `wsi-ai train`.",
)
@click.option(
    "--features",
    required=True,
    multiple=True,
    type=INPUT_PATH,
    help="A <slide>.zarr features store or a folder of them (repeatable).",
)
@DEVICE
@out_option("Folder for <slide>.json and <slide>.patch_scores.csv.")
@overwrite_option
@json_option
def predict(
    rundir: Path,
    features: tuple[Path, ...],
    device: str,
    out: Path,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Predict slides with a trained aggregator.

    Writes OUT/<slide>.json (class, probability, calibrated confidence, model sha256) and
    OUT/<slide>.patch_scores.csv (level-0 x, y, width, height, a probability column per
    class and attention): the patch table the stitcher turns into heatmaps. The two are one
    output: both are checked before the slide is predicted, and the JSON appears last, so a
    <slide>.json means a finished slide; a rerun clears what a stopped one left.

    \b
    Example:
      wsi-ai predict --model run1 --features feats/ -o predictions/
    """
    from wsi_ai.nn.predict import RANDOM_WARNING, load_run, predict_store
    from wsi_ai.store.bags import find_stores

    loaded: list[Any] = []
    code = run_each([rundir], lambda p: loaded.append(load_run(p, device)))
    if not loaded:
        raise SystemExit(code)
    run = loaded[0]
    stores: list[Path] = []

    def collect(path: Path) -> None:
        if not path.exists():
            raise InvalidInputError("no such features store or folder", path)
        stores.extend(find_stores(path).values())

    code = max(code, run_each(features, collect))
    records: list[dict[str, Any]] = []

    def one(store: Path) -> None:
        records.append(predict_store(run, store, out, overwrite))

    code = max(
        code,
        run_each(
            stores,
            one,
            on_error=lambda p, m: records.append(
                {"slide": p.name.removesuffix(".zarr"), "error": m}
            ),
        ),
    )
    if as_json:
        echo_json(records)
    else:
        for r in records:
            if "error" not in r:
                click.echo(
                    f"{r['slide']}: {r['class']} (p={r['probability']:.3f}, "
                    f"calibrated {r['confidence']:.3f})"
                )
    if run.card.features_model.get("random_init") == "true":
        log.warning("%s", RANDOM_WARNING)
    raise SystemExit(code)
