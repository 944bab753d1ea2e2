"""Training data: ``labels.csv`` (``slide,label[,fold]``) + a folder of features stores.

``slide`` names a features store ``<stem>.zarr`` in the features folder; the slide's file
name with its extension (``a.svs``) or the store's name (``a.zarr``) are accepted too.
Labels are read as text; classes are their sorted unique values. Everything that would make
training meaningless (a slide without features, a class with one slide, mixed embedding
models) is an :class:`~wsi_ai.errors.InvalidInputError` naming the CSV and what is wrong.
Embeddings stay float16 in memory (``N x D x 2`` bytes per slide); each store is read as a
:class:`~wsi_ai.store.bags.SlideBag` (:func:`~wsi_ai.store.bags.load_bag`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.model_selection import StratifiedKFold, train_test_split

from wsi_ai.errors import InvalidInputError
from wsi_ai.store.bags import SlideBag, find_stores, load_bag

# Patch-table columns a class name must not shadow (the stitcher treats them as geometry).
RESERVED_COLUMNS = frozenset(
    {"x", "y", "width", "height", "level", "tissue_fraction", "attention", "slide"}
)


@dataclass(frozen=True)
class LabelTable:
    path: Path
    slides: tuple[str, ...]
    labels: tuple[str, ...]
    folds: tuple[int, ...] | None


@dataclass(frozen=True)
class Dataset:
    """Labelled bags: ``y`` indexes ``classes``; ``folds`` is the CSV's fold column or None."""

    bags: tuple[SlideBag, ...]
    y: NDArray[np.int64]
    classes: tuple[str, ...]
    folds: NDArray[np.int64] | None
    in_dim: int
    features_model: Mapping[str, str]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.y, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}


def _names(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def read_labels(path: Path) -> LabelTable:
    """Read and check ``labels.csv``: columns ``slide``, ``label`` and optionally ``fold``."""
    if not path.is_file():
        raise InvalidInputError("labels CSV not found", path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:
        raise InvalidInputError(f"cannot read labels CSV: {err}", path) from err
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("slide", "label") if c not in table.columns]
    if missing:
        raise InvalidInputError(
            f"labels CSV lacks column(s) {', '.join(missing)}; expected slide,label[,fold]", path
        )
    table = table.apply(lambda col: col.str.strip())
    if table.empty:
        raise InvalidInputError("labels CSV has no rows", path)
    empty = table.index[(table["slide"] == "") | (table["label"] == "")].tolist()
    if empty:
        rows = _names([str(i + 2) for i in empty])
        raise InvalidInputError(f"empty slide or label on line(s) {rows}", path)
    dup = sorted(k for k, n in Counter(table["slide"]).items() if n > 1)
    if dup:
        raise InvalidInputError(f"slide(s) listed more than once: {_names(dup)}", path)
    clash = sorted(set(table["label"]) & RESERVED_COLUMNS)
    if clash:
        raise InvalidInputError(f"class name(s) {_names(clash)} clash with patch columns", path)
    folds = None
    if "fold" in table.columns:
        try:
            folds = tuple(int(v) for v in table["fold"])
        except ValueError as err:
            raise InvalidInputError("fold column must hold integers", path) from err
    return LabelTable(path, tuple(table["slide"]), tuple(table["label"]), folds)


def match_store(name: str, stores: Mapping[str, Path]) -> Path | None:
    """The store for a labels-CSV slide name (with or without extension)."""
    for key in (name, name.removesuffix(".zarr"), Path(name).stem):
        if key in stores:
            return stores[key]
    return None


def describe_mix(identities: list[dict[str, str]]) -> str:
    """Why a set of features-store identities is not one embedding model, in a few words."""
    if len({i.get("random_init") for i in identities}) > 1:
        return "some stores were embedded with random weights (--random-init), some with real ones"
    for key, what in (("name", "model cards"), ("sha256", "card versions")):
        values = sorted({i[key] for i in identities if key in i})
        if len(values) > 1:
            return f"different {what} ({_names(values)})"
    if len({i.get("weights_sha256") for i in identities}) > 1:
        return "the same card with different weights files"
    return f"different embedding models ({_names(sorted(map(str, identities)))})"


def load_dataset(labels_csv: Path, features: Path, folds: int) -> Dataset:
    """Match the labels to features stores and check that ``folds``-fold CV is possible."""
    table = read_labels(labels_csv)
    stores = find_stores(features)
    paths = [match_store(s, stores) for s in table.slides]
    lost = [s for s, p in zip(table.slides, paths, strict=True) if p is None]
    if lost:
        raise InvalidInputError(
            f"no features store in {features} for slide(s) {_names(lost)}", labels_csv
        )
    by_store: dict[Path, list[str]] = {}
    for slide, found in zip(table.slides, paths, strict=True):
        by_store.setdefault(Path(str(found)), []).append(slide)
    twice = [" and ".join(names) for names in by_store.values() if len(names) > 1]
    if twice:
        raise InvalidInputError(
            f"rows {_names(twice)} name the same features store; list each slide once",
            labels_csv,
        )
    counts = Counter(table.labels)
    classes = tuple(sorted(counts))
    if len(classes) < 2:
        raise InvalidInputError(f"only one class ({classes[0]}); need at least two", labels_csv)
    single = sorted(c for c, n in counts.items() if n < 2)
    if single:
        raise InvalidInputError(
            f"class(es) with a single slide: {_names(single)}; each class needs at least 2",
            labels_csv,
        )
    if table.folds is None and min(counts.values()) < folds:
        small = min(counts, key=lambda c: counts[c])
        raise InvalidInputError(
            f"class {small} has {counts[small]} slides, fewer than --folds {folds}; "
            "lower --folds or add slides",
            labels_csv,
        )
    if table.folds is not None and len(set(table.folds)) < 2:
        raise InvalidInputError("fold column names a single fold; need at least two", labels_csv)
    bags: list[SlideBag] = []
    identities: dict[str, dict[str, str]] = {}
    for path in paths:
        assert path is not None
        bag, ident = load_bag(path)
        if bags and bag.embeddings.shape[1] != bags[0].embeddings.shape[1]:
            raise InvalidInputError(
                f"embedding width {bag.embeddings.shape[1]} differs from "
                f"{bags[0].name}'s {bags[0].embeddings.shape[1]}; use one embedding model",
                path,
            )
        bags.append(bag)
        identities[bag.name] = ident
    models = {tuple(sorted(v.items())) for v in identities.values() if v}
    if len(models) > 1:
        raise InvalidInputError(
            f"features do not come from one embedding model: "
            f"{describe_mix([dict(m) for m in sorted(models)])}; embed every slide with one model",
            features,
        )
    y = np.array([classes.index(label) for label in table.labels], dtype=np.int64)
    return Dataset(
        bags=tuple(bags),
        y=y,
        classes=classes,
        folds=None if table.folds is None else np.asarray(table.folds, dtype=np.int64),
        in_dim=int(bags[0].embeddings.shape[1]),
        features_model=dict(next(iter(models))) if models else {},
    )


def make_folds(
    data: Dataset, k: int, seed: int
) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """``(train, test)`` index pairs: the CSV's fold column when given, else stratified k-fold
    (``StratifiedKFold(k, shuffle=True, random_state=seed)``)."""
    if data.folds is not None:
        return [
            (np.flatnonzero(data.folds != f), np.flatnonzero(data.folds == f))
            for f in sorted(set(data.folds.tolist()))
        ]
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    index = np.arange(len(data.y))
    return [(a.astype(np.int64), b.astype(np.int64)) for a, b in split.split(index, data.y)]


def validation_split(
    y: NDArray[np.int64], fraction: float, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Positions into ``y`` held out for early stopping: stratified when every class has two
    slides, at least one slide per class when possible; random otherwise."""
    index = np.arange(len(y))
    n_classes = len(set(y.tolist()))
    n_val = max(n_classes, round(fraction * len(y)))
    if n_val >= len(y):
        raise ValueError(f"cannot hold out {n_val} of {len(y)} training slides for validation")
    present = np.bincount(y)
    present = present[present > 0]
    ok = present.min() >= 2 and len(y) - n_val >= n_classes
    stratify = y if ok else None
    train, val = train_test_split(index, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)
