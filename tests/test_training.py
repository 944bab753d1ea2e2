"""Training and prediction: metrics, temperature scaling, labels checks, cross-validation on a
tiny synthetic set of features stores, and the ``train``/``predict`` commands end to end.

The synthetic set: 24 slides of 50-200 patches with 32-d Gaussian embeddings; class ``pos``
slides have 4-9 "planted" patches shifted along a fixed direction. A working MIL model finds
them: high out-of-fold AUC, and attention that ranks the planted patches first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from wsi_ai.cli.common import setup_logging
from wsi_ai.cli.train_cmds import predict, train
from wsi_ai.errors import InvalidInputError, ModelError
from wsi_ai.nn.predict import load_run
from wsi_ai.nn.probabilities import softmax
from wsi_ai.store import write_features
from wsi_ai.train import TrainConfig, train_run
from wsi_ai.train.calibrate import fit_temperature
from wsi_ai.train.data import load_dataset, make_folds
from wsi_ai.train.metrics import auc, balanced_accuracy, mean_sd, nll

MODEL = {"name": "toy-encoder", "sha256": "ab12cd"}
FAST = ["--folds", "3", "--epochs", "15", "--patience", "5", "--lr", "5e-3", "--width", "32"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli() -> click.Group:
    """The real ``wsi-ai`` group once it registers these commands, else a stand-in."""
    from wsi_ai.cli import main

    if "train" in main.commands and "predict" in main.commands:
        return main

    @click.group()
    @click.option("--debug", is_flag=True)
    def group(debug: bool) -> None:
        setup_logging(False)

    group.add_command(train)
    group.add_command(predict)
    return group


def write_slide(
    path: Path, emb: np.ndarray, model: dict[str, str] = MODEL, random_init: bool | None = None
) -> None:
    """A features store as the engine writes it (``random_init``: as ``--random-init`` marks
    it; None: a store from before that mark)."""
    idx = np.arange(len(emb))
    table = pd.DataFrame(
        {"x": idx % 16 * 224 + 1000, "y": idx // 16 * 224, "width": 224, "height": 224}
    )
    attrs: dict[str, object] = {"model": model}
    if random_init is not None:
        attrs["random_init"] = random_init
        attrs["backbone"] = {
            "random_init": random_init,
            "weights_sha256": None if random_init else "ee",
        }
    write_features(path, table, embeddings=emb, attrs=attrs)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """``(folder, planted patch indices by slide)``; labels.csv names slides with ``.svs``."""
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    direction = np.r_[np.full(16, 2.0), np.zeros(16)]
    rows, planted = [], {}
    for i in range(24):
        n = int(rng.integers(50, 201))
        emb = rng.normal(size=(n, 32))
        label = "pos" if i % 2 else "neg"
        hits = rng.choice(n, int(rng.integers(4, 10)), replace=False) if i % 2 else []
        emb[hits] += direction
        write_slide(root / f"s{i:02d}.zarr", emb)
        rows.append((f"s{i:02d}.svs", label, i % 3))
        planted[f"s{i:02d}"] = np.asarray(hits, dtype=int)
    pd.DataFrame(rows, columns=["slide", "label", "fold"]).to_csv(root / "folds.csv", index=False)
    pd.DataFrame(rows, columns=["slide", "label", "fold"]).drop(columns="fold").to_csv(
        root / "labels.csv", index=False
    )
    return root, planted


# --- metrics and calibration ----------------------------------------------------------------


def test_auc_and_balanced_accuracy_match_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    prob = np.c_[1 - p1, p1]
    assert auc(y, prob) == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered
    assert balanced_accuracy(y, prob) == pytest.approx(0.75)  # recalls 1.0 and 0.5
    assert auc(np.array([1, 1]), prob[:2]) is None  # undefined on one class
    y3 = np.array([0, 1, 2, 2, 1, 0])
    prob3 = softmax(np.random.default_rng(1).normal(size=(6, 3)))
    expected = roc_auc_score(y3, prob3, multi_class="ovr", average="macro")
    assert auc(y3, prob3) == pytest.approx(expected)
    perfect = np.eye(3)[y3]
    assert auc(y3, perfect) == 1.0
    assert balanced_accuracy(np.array([0, 0, 0, 1]), np.eye(2)[[0, 0, 1, 1]]) == pytest.approx(
        (2 / 3 + 1) / 2
    )
    assert mean_sd([1.0, 2.0, 3.0, None]) == {"mean": 2.0, "sd": 1.0, "n": 3}


def test_temperature_scaling_tames_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(2000, 3)) * 1.5
    y = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    overconfident = 4.0 * true_logits
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(4.0, rel=0.15)
    assert nll(y, overconfident / t) < 0.6 * nll(y, overconfident)
    assert fit_temperature(true_logits / 3, y) == pytest.approx(1 / 3, rel=0.15)


# --- labels checks -----------------------------------------------------------------------------


def labels_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_bad_labels_csv_is_invalid_input(synthetic: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = synthetic
    good = "".join(f"s{i:02d},{'pos' if i % 2 else 'neg'}\n" for i in range(10))
    cases = {
        "missing column": ("slide,diagnosis\n" + good, "lacks column"),
        "unknown slide": ("slide,label\n" + good + "ghost.svs,pos\n", "ghost.svs"),
        "single example": ("slide,label\n" + good + "s11,rare\n", "single slide: rare"),
        "too few for folds": ("slide,label\ns00,neg\ns01,pos\ns02,neg\ns03,pos\n", "fewer than"),
        "duplicate": ("slide,label\n" + good + "s00,pos\n", "more than once"),
        "same store twice": ("slide,label\n" + good + "s00.svs,neg\n", "same features store"),
        "class shadows a column": ("slide,label\n" + good + "s11,level\n", "clash"),
    }
    for name, (text, match) in cases.items():
        path = labels_file(tmp_path, text)
        with pytest.raises(InvalidInputError, match=match) as info:
            load_dataset(path, root, folds=3)
        assert info.value.path == path, name
    with pytest.raises(InvalidInputError, match="not found"):
        load_dataset(tmp_path / "nope.csv", root, folds=3)


def test_mixed_embedding_models_are_rejected(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        model = MODEL if i else {"name": "other", "sha256": "ff"}
        write_slide(tmp_path / f"m{i}.zarr", rng.normal(size=(20, 8)), model)
    path = labels_file(tmp_path, "slide,label\nm0,a\nm1,b\nm2,a\nm3,b\n")
    with pytest.raises(InvalidInputError, match="different model cards"):
        load_dataset(path, tmp_path, folds=2)


def test_fold_column_is_honoured(synthetic: tuple[Path, dict]) -> None:
    root, _ = synthetic
    data = load_dataset(root / "folds.csv", root, folds=5)
    splits = make_folds(data, 5, seed=0)
    assert len(splits) == 3
    for k, (train_idx, test_idx) in enumerate(splits):
        np.testing.assert_array_equal(test_idx, np.arange(k, 24, 3))
        assert set(train_idx).isdisjoint(test_idx)
    stratified = make_folds(load_dataset(root / "labels.csv", root, folds=4), 4, seed=0)
    for _, test_idx in stratified:
        assert np.bincount(data.y[test_idx]).tolist() == [3, 3]


# --- training and prediction --------------------------------------------------------------------


def test_train_and_predict_end_to_end(synthetic: tuple[Path, dict], tmp_path: Path) -> None:
    root, planted = synthetic
    runner = CliRunner()
    rundir, out = tmp_path / "run", tmp_path / "pred"
    args = ["train", "--features", str(root), "--labels", str(root / "labels.csv")]
    args += ["--aggregator", "abmil", *FAST, "-o", str(rundir)]
    result = runner.invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "pooled out-of-fold AUC" in result.output
    assert {p.name for p in rundir.iterdir()} == {
        ".wsi-ai-output",
        "model.safetensors",
        "aggregator.toml",
        "metrics.json",
        "oof_predictions.csv",
    }
    metrics = json.loads((rundir / "metrics.json").read_text())
    assert metrics["oof"]["auc"] >= 0.9
    assert metrics["n_per_class"] == {"neg": 12, "pos": 12}
    assert len(metrics["folds"]) == 3 and metrics["auc"]["n"] == 3
    assert {"auc", "balanced_accuracy", "best_epoch", "val_loss"} <= set(metrics["folds"][0])
    oof = pd.read_csv(rundir / "oof_predictions.csv")
    assert sorted(oof["slide"]) == sorted(planted) and set(oof["fold"]) == {0, 1, 2}
    run = load_run(rundir, "cpu")
    assert run.card.features_model == MODEL and run.card.classes == ("neg", "pos")
    assert run.card.temperature == metrics["temperature"]

    again = runner.invoke(cli(), args)  # RUNDIR exists, no --overwrite
    assert again.exit_code == 1 and "--overwrite" in again.output

    pred_args = ["predict", "--model", str(rundir), "--features", str(root), "-o", str(out)]
    result = runner.invoke(cli(), pred_args)
    assert result.exit_code == 0, result.output
    ranks = []
    for name, hits in planted.items():
        record = json.loads((out / f"{name}.json").read_text())
        assert record["class"] in ("neg", "pos") and 0.5 <= record["probability"] <= 1
        assert record["confidence"] == pytest.approx(
            record["calibrated_probabilities"][record["class"]]
        )
        assert record["model"]["sha256"] == run.card.sha256
        table = pd.read_csv(out / f"{name}.patch_scores.csv")
        assert list(table.columns) == ["x", "y", "width", "height", "neg", "pos", "attention"]
        assert table["attention"].sum() == pytest.approx(1.0, abs=1e-4)
        if len(hits):
            truth = np.zeros(len(table))
            truth[hits] = 1
            ranks.append(roc_auc_score(truth, table["attention"]))
    assert np.mean(ranks) >= 0.9
    assert runner.invoke(cli(), pred_args).exit_code == 1  # outputs exist


def test_vit_with_fold_column_and_refit(synthetic: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = synthetic
    config = TrainConfig(
        aggregator="vit",
        hyperparameters={"width": 32, "depth": 1, "heads": 4},
        folds=5,
        max_epochs=12,
        patience=5,
        lr=5e-3,
        max_tokens=64,  # subsampling in training; prediction sees every patch
        final="refit",
    )
    metrics = train_run(root / "folds.csv", root, tmp_path / "vit", config)
    assert [f["fold"] for f in metrics["folds"]] == [0, 1, 2]
    assert metrics["oof"]["auc"] >= 0.9
    assert metrics["final"] == "refit" and metrics["final_epochs"] >= 1
    oof = pd.read_csv(tmp_path / "vit" / "oof_predictions.csv")
    assert (oof["fold"] == oof["slide"].str[1:].astype(int) % 3).all()
    run = load_run(tmp_path / "vit", "cpu")
    assert run.card.aggregator == "vit" and run.card.hyperparameters["depth"] == 1


def test_same_seed_same_model_and_tampered_weights(
    synthetic: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = synthetic
    config = TrainConfig(hyperparameters={"width": 16}, folds=2, max_epochs=2, lr=1e-3)
    first = train_run(root / "labels.csv", root, tmp_path / "a", config)
    second = train_run(root / "labels.csv", root, tmp_path / "b", config)
    assert first["oof"] == second["oof"]
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("a", "b")]
    assert weights[0] == weights[1]
    (tmp_path / "a" / "model.safetensors").write_bytes(weights[0][:-4] + b"\0\0\0\0")
    with pytest.raises(ModelError, match="sha256"):
        load_run(tmp_path / "a", "cpu")


def test_predict_rejects_features_of_another_model(
    synthetic: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = synthetic
    config = TrainConfig(hyperparameters={"width": 16}, folds=2, max_epochs=1)
    train_run(root / "labels.csv", root, tmp_path / "run", config)
    other = tmp_path / "other"
    write_slide(other / "x.zarr", np.zeros((5, 32)), {"name": "another", "sha256": "00"})
    write_slide(other / "y.zarr", np.zeros((5, 32)))
    args = ["predict", "--model", str(tmp_path / "run"), "--features", str(other)]
    result = CliRunner().invoke(cli(), [*args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "x.zarr" in errors[0] and "another" in errors[0]
    assert (tmp_path / "out" / "y.json").exists()  # the other slide still done


def test_train_bad_labels_exit_1_with_one_line(
    synthetic: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = synthetic
    path = labels_file(tmp_path, "slide,label\ns00,neg\ns01,pos\ns02,neg\ns03,odd\n")
    args = ["train", "--features", str(root), "--labels", str(path), "-o", str(tmp_path / "r")]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "odd" in result.output
    assert not (tmp_path / "r").exists()


def test_temperature_prior_keeps_separable_sets_finite() -> None:
    y = np.array([0, 1] * 12)
    logits = np.where(np.eye(2)[y] > 0, 4.0, -4.0)  # every slide right, with p = 0.9997
    assert fit_temperature(logits, y, prior_sd=None) == pytest.approx(0.05, rel=0.01)
    assert 0.3 < fit_temperature(logits, y) <= 1.0


@pytest.mark.parametrize("aggregator", ["abmil", "vit"])
def test_embedding_scale_does_not_matter(
    synthetic: tuple[Path, dict], tmp_path: Path, aggregator: str
) -> None:
    """A random-init ResNet gives embeddings around 0.04, UNI around 1: the same features at
    1/50 the scale must train as well (before InputNorm, both aggregators stayed at chance
    on such features with a rate that suits unit-scale ones)."""
    root, _ = synthetic
    small = tmp_path / "small"
    data = load_dataset(root / "labels.csv", root, 3)
    for bag in data.bags:
        write_slide(small / f"{bag.name}.zarr", bag.embeddings.astype(np.float32) / 50)
    config = TrainConfig(
        aggregator=aggregator,
        hyperparameters={"width": 32, **({"depth": 1, "heads": 4} if aggregator == "vit" else {})},
        folds=3,
        max_epochs=12,
        patience=12,
        lr=1e-3 if aggregator == "abmil" else 5e-3,
    )
    metrics = [
        train_run(root / "labels.csv", feats, tmp_path / name, config)
        for name, feats in (("unit", root), ("tiny", small))
    ]
    print([m["oof"]["auc"] for m in metrics])
    assert metrics[1]["oof"]["auc"] >= 0.9
    assert metrics[1]["oof"]["auc"] == pytest.approx(metrics[0]["oof"]["auc"], abs=0.05)
    # the statistics travel with the weights and come from training patches only
    run = load_run(tmp_path / "tiny", "cpu")
    norm = run.model.input_norm
    every = np.concatenate([b.embeddings for b in load_dataset(root / "labels.csv", small, 3).bags])
    assert float(norm.std.mean()) == pytest.approx(
        float(every.astype(np.float64).std(0).mean()), rel=0.2
    )
    assert float(norm.std.mean()) < 0.1  # measured on the tiny features, not left at 1


def test_random_weights_are_never_mixed_and_always_said(
    synthetic: tuple[Path, dict], tmp_path: Path
) -> None:
    """Features from ``--random-init`` carry that mark through train and predict, and are
    not mixed with (or predicted against) features from real weights of the same card."""
    root, _ = synthetic
    data = load_dataset(root / "labels.csv", root, 3)
    rand, mixed = tmp_path / "random", tmp_path / "mixed"
    for i, bag in enumerate(data.bags):
        write_slide(rand / f"{bag.name}.zarr", bag.embeddings, random_init=True)
        write_slide(mixed / f"{bag.name}.zarr", bag.embeddings, random_init=bool(i % 5))
    with pytest.raises(InvalidInputError, match="random weights"):
        load_dataset(root / "labels.csv", mixed, 3)

    args = ["train", "--features", str(rand), "--labels", str(root / "labels.csv")]
    result = CliRunner().invoke(cli(), [*args, *FAST, "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "RANDOM weights" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["random_init"] is True
    assert metrics["features_model"]["random_init"] == "true"
    assert load_run(tmp_path / "run", "cpu").card.features_model["random_init"] == "true"

    real = tmp_path / "real"
    write_slide(real / "r.zarr", data.bags[0].embeddings, random_init=False)
    pred = ["predict", "--model", str(tmp_path / "run"), "-o", str(tmp_path / "pred")]
    result = CliRunner().invoke(
        cli(), [*pred, "--features", str(rand / "s00.zarr"), "--features", str(real)]
    )
    assert result.exit_code == 1 and "random_init" in result.output
    record = json.loads((tmp_path / "pred" / "s00.json").read_text())
    assert record["random_init"] is True and "RANDOM" in record["warning"]
    assert not (tmp_path / "pred" / "r.json").exists()
