"""Pipeline files: every shipped file parses, and every bad key or value is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_ai.errors import InvalidInputError
from wsi_ai.pipeline_config import load_pipeline, parse_pipeline

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
NEEDS = {  # what a shipped file leaves to the command line
    "patch-classifier": ["model.card='resnet18'"],
    "mil-slide": ["aggregator.run='/runs/x'"],
}


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_pipelines_parse(path: Path) -> None:
    pipeline = load_pipeline(path, NEEDS.get(path.stem, []))
    assert pipeline.name == path.stem
    assert pipeline.path == path.resolve()
    assert len(pipeline.config_hash()) == 64


@pytest.mark.parametrize(
    "path", [PIPELINES / "patch-classifier.toml", PIPELINES / "mil-slide.toml"]
)
def test_what_a_shipped_file_leaves_out_is_asked_for(path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"--model|--aggregator") as err:
        load_pipeline(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"grid": {"sizee": 224}}, r"unknown key \[grid\] 'sizee'; allowed: mpp, size"),
        ({"grid": {"size": "abc"}}, r"\[grid\] size must be an integer, got 'abc'"),
        ({"grid": {"size": 2.5}}, r"\[grid\] size must be an integer"),
        ({"grid": {"min_tissue": 1.5}}, r"\[grid\] min_tissue must be between 0 and 1"),
        ({"grid": {"size": 64, "overlap": 64}}, r"overlap must be smaller than size"),
        ({"tissue": {"enabled": "yes"}}, r"\[tissue\] enabled must be true or false"),
        ({"score": {"kind": "magic"}}, r"kind must be one of 'none', 'he', 'embed'"),
        ({"stitch": {"threshold": "high"}}, r"threshold must be a number or 'otsu'"),
        ({"stitch": {"columns": "a"}}, r"columns must be a list of strings"),
        ({"stitch": {"blend": "sum"}}, r"blend must be one of 'mean', 'max', 'gaussian'"),
        ({"scores": {}}, r"unknown key 'scores'; allowed: name, description, \[tissue\]"),
        ({"grid": 3}, r"\[grid\] must be a table"),
        ({"score": {"kind": "embed"}}, r"needs a model: set \[model\] card"),
        ({"model": {"card": "x", "random_init": True, "sha256": "0" * 64}}, r"random_init"),
        ({"name": ""}, r"needs a name"),
    ],
)
def test_bad_values_name_the_file_key_and_allowed_values(data: dict, expected: str) -> None:
    with pytest.raises(InvalidInputError, match=expected) as err:
        parse_pipeline({"name": "t", **data}, "lab.toml")
    assert str(err.value).startswith("lab.toml: ")


def test_overrides_win_and_change_the_hash(tmp_path: Path) -> None:
    file = tmp_path / "p.toml"
    file.write_text('name = "p"\n# a comment\n[grid]\nmpp = 0.5\n[model]\nweights = "w/x.bin"\n')
    base = load_pipeline(file)
    assert base.model.weights == str(tmp_path / "w" / "x.bin")  # relative to the file
    file.write_text(file.read_text() + "# another comment\n")
    assert load_pipeline(file).config_hash() == base.config_hash()  # comments do not count
    changed = load_pipeline(file, ["grid.mpp=1", "stitch.blend=max", "stitch.columns=['a']"])
    assert (changed.grid.mpp, changed.stitch.blend, changed.stitch.columns) == (1.0, "max", ("a",))
    assert changed.config_hash() != base.config_hash()
    with pytest.raises(InvalidInputError, match=r"section\.key=value"):
        load_pipeline(file, ["mpp=1"])
    with pytest.raises(InvalidInputError, match="unknown section 'gird'"):
        load_pipeline(file, ["gird.mpp=1"])


def test_unreadable_or_invalid_toml_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot read the pipeline file"):
        load_pipeline(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(InvalidInputError, match="not valid TOML"):
        load_pipeline(bad)
