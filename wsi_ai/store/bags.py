"""A features store read as a bag: one slide's patches as the MIL aggregators see them.

:func:`load_bag` reads ``<slide>.zarr`` (see :mod:`.features`) into a :class:`SlideBag`
(float16 embeddings, grid positions, level-0 boxes) plus the identity of the embedding model
that made it; :func:`find_stores` finds the stores in a folder or a ``wsi-ai run`` output.
Torch-free: training and prediction turn a bag into tensors themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wsi_ai.errors import InvalidInputError, ParameterError
from wsi_ai.store.features import read_features


@dataclass(frozen=True)
class SlideBag:
    """One slide's patches as the aggregators see them."""

    name: str
    embeddings: NDArray[np.float16]  # [N, D]
    positions: NDArray[np.float32]  # [N, 2] grid units (patch centres / patch size)
    coords: NDArray[np.int64]  # [N, 4] level-0 x, y, width, height


def grid_positions(coords: NDArray[np.integer] | NDArray[np.floating]) -> NDArray[np.float32]:
    """Grid positions ``[N, 2]`` (x, y in patch units) from level-0 ``x, y, width, height``.

    A patch's grid position is its centre divided by its own size, ``((x + w/2) / w,
    (y + h/2) / h)``, so neighbouring patches are one unit apart whatever the MPP or patch
    size the grid was cut at (the encoding is resolution-independent). The minimum over the
    slide is subtracted, so positions are relative to the top-left of the tissue, not of the
    glass. ``coords`` is ``[N, 4]`` in level-0 pixels (a features store's ``coords``).
    Compute this on the whole slide before any token subsampling, so positions stay
    comparable.
    """
    boxes = np.asarray(coords, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ParameterError(
            f"coords must be [N, 4] level-0 x, y, width, height, got {boxes.shape}"
        )
    if boxes.shape[0] == 0:
        return np.zeros((0, 2), np.float32)
    size = np.maximum(boxes[:, 2:4], 1.0)
    grid = (boxes[:, 0:2] + size / 2) / size
    grid -= grid.min(axis=0, keepdims=True)
    return grid.astype(np.float32)


def features_identity(attrs: Mapping[str, Any]) -> dict[str, str]:
    """What made a features store's embeddings: card ``name`` and ``sha256``, whether the
    backbone had ``random_init`` weights (``"true"``/``"false"``) and the ``weights_sha256``
    of the weights file, as far as the store's attributes say.

    Accepts ``model`` as a name or a table with ``name``/``sha256``, and flat ``model_name``,
    ``model_sha256``/``model_hash``/``card_sha256`` keys; absent values are left out.
    """
    found: dict[str, str] = {}
    model = attrs.get("model")
    if isinstance(model, Mapping):
        for key in ("name", "sha256"):
            if model.get(key):
                found[key] = str(model[key])
    elif model:
        found["name"] = str(model)
    for key in ("model_name", "card", "card_name"):
        if attrs.get(key) and "name" not in found:
            found["name"] = str(attrs[key])
    for key in ("model_sha256", "model_hash", "card_sha256", "card_hash"):
        if attrs.get(key) and "sha256" not in found:
            found["sha256"] = str(attrs[key])
    backbone = attrs.get("backbone")
    backbone = backbone if isinstance(backbone, Mapping) else {}
    random_init = attrs.get("random_init", backbone.get("random_init"))
    if isinstance(random_init, bool):
        found["random_init"] = "true" if random_init else "false"
    if backbone.get("weights_sha256"):
        found["weights_sha256"] = str(backbone["weights_sha256"])
    return found


def load_bag(path: Path) -> tuple[SlideBag, dict[str, str]]:
    """Read one features store as a :class:`SlideBag` plus its embedding model's identity."""
    feats = read_features(path)
    if feats.embeddings is None or len(feats) == 0:
        raise InvalidInputError("features store has no patch embeddings", path)
    emb = np.asarray(feats.embeddings, dtype=np.float16)
    bag = SlideBag(feats.name, emb, grid_positions(feats.coords), feats.coords)
    return bag, features_identity(feats.attrs)


def find_stores(features: Path) -> dict[str, Path]:
    """Features stores by slide stem: ``features`` is a folder of ``*.zarr``, one store, or a
    ``wsi-ai run`` output folder (``slides/<slide>/features.zarr``)."""
    if features.suffix == ".zarr" and features.is_dir():
        return {features.name.removesuffix(".zarr"): features}
    if not features.is_dir():
        raise InvalidInputError("features folder not found; run `wsi-ai embed` first", features)
    run = sorted((features / "slides").glob("*/features.zarr"))
    if run:
        return {Path(p.parent.name).stem: p for p in run}
    stores = {p.name.removesuffix(".zarr"): p for p in sorted(features.glob("*.zarr"))}
    if not stores:
        raise InvalidInputError("no <slide>.zarr features stores in this folder", features)
    return stores
