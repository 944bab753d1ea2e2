"""The proof-of-learning cohort generator: deterministic, balanced, planted share capped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.make_cohort import main, make_cohort
from wsi_ai.errors import InvalidInputError, OutputExistsError


@pytest.fixture(scope="module")
def sources(cmu_small: Path, skin_striped: Path) -> tuple[list[Path], Path]:
    """Background: the bundled CMU slide; planted: the bundled skin slide."""
    return [cmu_small], skin_striped


def test_same_arguments_same_bytes_and_capped_planted_share(
    tmp_path: Path, sources: tuple[list[Path], Path]
) -> None:
    bg, planted = sources
    kw = dict(sources=bg, planted_source=planted, patch_px=112, seed=3)
    a = make_cohort(tmp_path / "a", 6, 2000, **kw)
    b = make_cohort(tmp_path / "b", 6, 2000, **kw)
    files = [sorted((tmp_path / d).iterdir()) for d in "ab"]
    for x, y in zip(*files, strict=True):
        assert x.name == y.name and x.read_bytes() == y.read_bytes(), x.name
    labels = pd.read_csv(a.labels_csv)
    assert list(labels.columns) == ["slide", "label"]
    assert sorted(labels["label"]) == ["negative"] * 3 + ["positive"] * 3
    for s in a.slides:
        mask = a.planted_mask(s.name)
        if s.label == "negative":
            assert not mask.any() and s.planted_patches == 0
        else:
            assert mask.any() and 0 < s.planted_patches <= 0.1 * s.tissue_patches
    manifest = json.loads(a.manifest.read_text())
    assert manifest["planted_source"] == planted.name
    assert manifest["background_sources"] == [bg[0].name]
    assert [s.name for s in b.slides] == [s.name for s in a.slides]


def test_bad_arguments_are_one_line_errors(
    tmp_path: Path, sources: tuple[list[Path], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bg, planted = sources
    with pytest.raises(InvalidInputError, match="both classes"):
        make_cohort(tmp_path / "c", 1, 2000, sources=bg, planted_source=planted)
    with pytest.raises(InvalidInputError, match="max_planted"):
        make_cohort(
            tmp_path / "c", 4, 2000, sources=bg, planted_source=planted,
            max_planted_patch_fraction=0.9,
        )  # fmt: skip
    make_cohort(tmp_path / "c", 2, 1500, sources=bg, planted_source=planted, patch_px=112)
    with pytest.raises(OutputExistsError):
        make_cohort(tmp_path / "c", 2, 1500, sources=bg, planted_source=planted, patch_px=112)
    args = [str(tmp_path / "c"), "--slides", "2", "--size", "1500", "--planted", str(planted)]
    assert main([*args, "--source", str(bg[0])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "overwrite" in err
    assert np.load(tmp_path / "c" / "slide_000.planted.npy").dtype == bool
