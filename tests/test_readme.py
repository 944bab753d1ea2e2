"""The README's CLI tour must match what the commands print on the bundled slide."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from wsi_ai.cli import main

REPO = Path(__file__).resolve().parents[1]
BUNDLED = "wsi_ai/data/CMU-1-Small-Region.svs"


def tour_examples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for README commands on the bundled slide."""
    text = (REPO / "README.md").read_text()
    examples: list[tuple[str, list[str]]] = []
    for block in text.split("```console")[1:]:
        lines = block.split("```")[0].strip("\n").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("$ wsi-ai ") or BUNDLED not in line:
                continue
            output = []
            for follow in lines[i + 1 :]:
                if follow.startswith("$") or not follow.strip():
                    break
                output.append(follow.rstrip())
            if output:
                examples.append((line[2:].split("  #")[0], output))
    return examples


EXAMPLES = tour_examples()


def test_the_tour_has_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_readme_tour_matches_the_cli(
    command: str, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [str(REPO / a) if a == BUNDLED else a for a in shlex.split(command)[1:]]
    monkeypatch.chdir(tmp_path)  # outputs named in the tour land here
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    printed = [line.rstrip() for line in result.stdout.splitlines() if line.strip()]
    assert printed == expected
