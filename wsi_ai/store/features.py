"""The per-slide features store: ``OUT/<slide-stem>.zarr``.

What inference writes and what training, prediction and the stitcher read:

- ``coords``: int64 ``[N, 4]``, each patch's level-0 ``x, y, width, height``;
- ``level`` (int64 ``[N]``) and ``tissue_fraction`` (float32 ``[N]``) from the patch table;
- ``embeddings``: float16 ``[N, D]`` (optional);
- ``scores``: float32 ``[N, C]`` (optional), with class names in the attributes;
- attributes under ``wsi_ai``: the slide's name and identity (``slide_identity``: name,
  level-0 dimensions, fingerprint; see :mod:`wsi_ai.slide.identity`, which ``wsi-ai stitch``
  checks), the model card's name and hash, every parameter, and ``random_init`` when the
  weights were random (benchmarks, smoke tests).

The store is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from numpy.typing import NDArray

from wsi_ai.errors import InvalidInputError
from wsi_ai.outputs import atomic_output

META_KEY = "wsi_ai"
COORDS = ("x", "y", "width", "height")


@dataclass(frozen=True)
class SlideFeatures:
    """One slide's patches and what a model made of them."""

    name: str
    coords: NDArray[np.int64]  # [N, 4] level-0 x, y, width, height
    embeddings: NDArray[np.floating] | None = None  # [N, D]
    scores: NDArray[np.float32] | None = None  # [N, C]
    level: NDArray[np.int64] | None = None
    tissue_fraction: NDArray[np.float32] | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def table(self) -> pd.DataFrame:
        """The patch table (level-0 columns plus one column per score class)."""
        data: dict[str, Any] = {c: self.coords[:, i] for i, c in enumerate(COORDS)}
        if self.level is not None:
            data["level"] = self.level
        if self.tissue_fraction is not None:
            data["tissue_fraction"] = self.tissue_fraction
        if self.scores is not None:
            names = list(self.attrs.get("classes") or [])
            if len(names) != self.scores.shape[1]:
                names = [f"score_{i}" for i in range(self.scores.shape[1])]
            for i, name in enumerate(names):
                data[str(name)] = self.scores[:, i]
        return pd.DataFrame(data)


def features_path(out_dir: Path, slide_path: Path) -> Path:
    return out_dir / f"{slide_path.stem}.zarr"


def write_features(
    path: Path,
    table: pd.DataFrame,
    *,
    embeddings: NDArray[np.floating] | None = None,
    scores: NDArray[np.floating] | None = None,
    classes: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one slide's features store atomically."""
    n = len(table)
    coords = table[list(COORDS)].to_numpy(dtype=np.int64)
    meta = dict(attrs or {})
    if classes is not None:
        meta["classes"] = list(classes)
    with atomic_output(path, overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs[META_KEY] = meta
        rows = max(1, min(n, 16384))
        group.create_array("coords", data=coords, chunks=(rows, 4))
        if "level" in table:
            group.create_array("level", data=table["level"].to_numpy(np.int64), chunks=(rows,))
        if "tissue_fraction" in table:
            values = table["tissue_fraction"].to_numpy(np.float32)
            group.create_array("tissue_fraction", data=values, chunks=(rows,))
        if embeddings is not None:
            emb = np.asarray(embeddings, dtype=np.float16)
            if emb.shape[0] != n:
                raise ValueError(f"{emb.shape[0]} embeddings for {n} patches")
            group.create_array("embeddings", data=emb, chunks=(rows, emb.shape[1]))
        if scores is not None:
            sc = np.asarray(scores, dtype=np.float32).reshape(n, -1)
            group.create_array("scores", data=sc, chunks=(rows, sc.shape[1]))
    return path


def read_features(path: str | Path, *, with_embeddings: bool = True) -> SlideFeatures:
    """Read a features store written by :func:`write_features`."""
    src = Path(path)
    if not src.exists():
        raise InvalidInputError("no such features store; run `wsi-ai embed` first", src)
    try:
        group = zarr.open_group(src, mode="r")
        stored = group.attrs.get(META_KEY)
        attrs = dict(stored) if isinstance(stored, dict) else {}
        keys = set(group.array_keys())
        if "coords" not in keys:
            raise KeyError("coords")

        def get(name: str) -> Any:
            if name not in keys:
                return None
            array: Any = group[name]
            return np.asarray(array[...])

        return SlideFeatures(
            name=src.name.removesuffix(".zarr"),
            coords=get("coords").astype(np.int64),
            embeddings=get("embeddings") if with_embeddings else None,
            scores=get("scores"),
            level=get("level"),
            tissue_fraction=get("tissue_fraction"),
            attrs=attrs,
        )
    except Exception as err:
        raise InvalidInputError(
            f"not a wsi-ai features store ({type(err).__name__}: {err}); "
            "point at the OUT/<slide>.zarr folders `wsi-ai embed` writes",
            src,
        ) from err
