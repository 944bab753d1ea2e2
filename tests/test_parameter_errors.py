"""A bad parameter or input raises ParameterError / InvalidInputError, not a bare ValueError.

The CLI prints a :class:`~wsi_ai.errors.WsiAiError` on one line and calls anything else a
bug, so validation of what a caller passes must use the hierarchy. Both classes also
subclass ``ValueError``, so older ``except ValueError`` callers keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch

from wsi_ai.errors import InvalidInputError, ParameterError, WsiAiError
from wsi_ai.export.ome_zarr import write_ome_zarr
from wsi_ai.nn.mil import InputNorm, as_bag
from wsi_ai.nn.vit_mil import ViTMIL
from wsi_ai.slide import open_slide
from wsi_ai.stitch.contours import trace_regions
from wsi_ai.store.bags import grid_positions
from wsi_ai.tissue.detect import detect_tissue_rgb
from wsi_ai.tissue.polygons import mask_to_polygons
from wsi_ai.train.calibrate import fit_temperature

Case = Callable[[Path, Path], object]


def _read_bad_level(tmp: Path, slide_path: Path) -> object:
    with open_slide(slide_path) as slide:
        return slide.read_region((0, 0), slide.level_count, (8, 8))


CASES: list[tuple[str, Case, type[WsiAiError]]] = [
    (
        "tissue image not uint8",
        lambda tmp, s: detect_tissue_rgb(np.zeros((8, 8, 3), np.float32), "brightfield"),
        ParameterError,
    ),
    (
        "tissue modality",
        lambda tmp, s: detect_tissue_rgb(np.zeros((8, 8, 3), np.uint8), "phase-contrast"),
        ParameterError,
    ),
    (
        "polygons of a 3-D mask",
        lambda tmp, s: mask_to_polygons(np.zeros((2, 2, 2), bool), (1.0, 1.0)),
        ParameterError,
    ),
    ("contours of a 1-D mask", lambda tmp, s: trace_regions(np.zeros(4, bool)), ParameterError),
    ("grid positions [N, 2]", lambda tmp, s: grid_positions(np.zeros((3, 2))), ParameterError),
    ("vit heads", lambda tmp, s: ViTMIL(8, 2, width=36, heads=8), ParameterError),
    (
        "bag mask shape",
        lambda tmp, s: as_bag(torch.zeros(5, 4), None, torch.ones(4, dtype=torch.bool)),
        ParameterError,
    ),
    ("input norm, no patches", lambda tmp, s: InputNorm(4).fit([]), InvalidInputError),
    (
        "temperature, logits and labels differ",
        lambda tmp, s: fit_temperature(np.zeros((3, 2)), np.zeros(2, int)),
        ParameterError,
    ),
    (
        "ome-zarr ngff",
        lambda tmp, s: write_ome_zarr(
            [da.zeros((3, 8, 8), dtype=np.uint8)],
            tmp / "a.zarr",
            scales_um=[(1.0, 1.0)],
            name="x",
            ngff="0.6",  # type: ignore[arg-type]
        ),
        ParameterError,
    ),
    ("slide backend", lambda tmp, s: open_slide(s, backend="bioformats"), ParameterError),
    ("slide mpp", lambda tmp, s: open_slide(s, mpp_override=-0.25), ParameterError),
    ("slide level", _read_bad_level, ParameterError),
]


@pytest.mark.parametrize(("call", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_values_raise_the_hierarchy(
    call: Case, error: type[WsiAiError], tmp_path: Path, cmu_small: Path
) -> None:
    with pytest.raises(error) as info:
        call(tmp_path, cmu_small)
    assert isinstance(info.value, ValueError)  # old `except ValueError` callers still work
    assert str(info.value).strip()
