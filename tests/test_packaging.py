"""Packaging: the wheel ships the model cards, and an installed wheel finds them.

The cards' single source is the repository's ``models/`` folder; pyproject.toml maps it
onto the package ``wsi_ai.models``. A source checkout (or editable install) reads
``<repo>/models`` directly; a wheel installed into a fresh venv reads
``site-packages/wsi_ai/models``. ``$WSI_AI_MODELS_DIR`` wins over both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from wsi_ai.nn import cards

REPO = Path(__file__).resolve().parents[1]
REPO_CARDS = sorted((REPO / "models").glob("*.toml"))
# what a wheel build reads; copied so that the build leaves no build/ or egg-info behind
# in the checkout and stale files from earlier builds cannot slip into the wheel
BUILD_INPUTS = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md", "LICENSE")
BUILD_DIRS = ("wsi_ai", "models")
PIP = (sys.executable, "-m", "pip")
OFFLINE = ("--quiet", "--no-deps", "--no-index")

# Run by the fresh venv's python: wsi_ai must come from the wheel; the main venv's
# site-packages goes after the fresh one, only for third-party imports (torch, which
# wsi_ai/nn/__init__.py pulls in). sys.path.append processes no .pth file there, so the
# main venv's editable-install finder never loads.
PROBE = """
import json, os, sys
sys.path.extend(sys.argv[1].split(os.pathsep))
import wsi_ai
from wsi_ai.nn import cards
out = {
    "wsi_ai": wsi_ai.__file__,
    "cards": cards.__file__,
    "models_dir": str(cards.models_dir()),
    "stems": [p.stem for p in cards.card_files()],
    "names": [c.name for c in cards.list_cards()],
}
os.environ[cards.MODELS_DIR_ENV] = sys.argv[2]
out["env_models_dir"] = str(cards.models_dir())
print(json.dumps(out))
"""


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", cards.MODELS_DIR_ENV)
    }
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    return env


def _source_modules(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in (root / "wsi_ai").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }


def test_source_checkout_reads_repo_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dev checkout: the cards are read from <repo>/models, never from a copy in wsi_ai/."""
    assert REPO_CARDS, "no model cards in models/"
    assert not (REPO / "wsi_ai" / "models").exists(), "models/ must stay the cards' only copy"
    monkeypatch.delenv(cards.MODELS_DIR_ENV, raising=False)
    assert cards.models_dir() == REPO / "models"
    assert [p.stem for p in cards.card_files()] == [p.stem for p in REPO_CARDS]
    monkeypatch.setenv(cards.MODELS_DIR_ENV, str(REPO / "elsewhere"))
    assert cards.models_dir() == REPO / "elsewhere"


@pytest.mark.slow
def test_installed_wheel_ships_and_finds_model_cards(tmp_path: Path) -> None:
    env = _clean_env()
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in BUILD_DIRS:
        shutil.copytree(REPO / name, src / name, ignore=ignore)

    # build offline, with the setuptools of the running (dev) venv
    dist = tmp_path / "dist"
    _run(
        [*PIP, "wheel", *OFFLINE, "--no-build-isolation", "--wheel-dir", str(dist), str(src)],
        cwd=src,
        env=env,
    )
    (wheel,) = dist.glob("wsi_ai-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for card in REPO_CARDS:
            assert archive.read(f"wsi_ai/models/{card.name}") == card.read_bytes()
    assert {n for n in names if n.startswith("wsi_ai/models/")} == {
        f"wsi_ai/models/{p.name}" for p in REPO_CARDS
    }
    missing = _source_modules(src) - names
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing}"

    # a plain venv (no system site-packages), the wheel installed offline by the dev pip
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _run(
        [*PIP, "--python", str(python), "install", *OFFLINE, str(wheel)],
        cwd=tmp_path,
        env=env,
    )
    deps = os.pathsep.join(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    other = tmp_path / "other-cards"
    out = _run([str(python), "-c", PROBE, deps, str(other)], cwd=tmp_path, env=env)
    found = json.loads(out.strip().splitlines()[-1])

    fresh = venv.resolve()
    package = Path(found["wsi_ai"]).resolve().parent
    assert package.is_relative_to(fresh), f"wsi_ai imported from {package}, not the wheel"
    assert Path(found["cards"]).resolve().is_relative_to(package)
    assert Path(found["models_dir"]) == package / "models"
    assert found["stems"] == [p.stem for p in REPO_CARDS]
    assert found["names"] == [tomllib.loads(p.read_text("utf-8"))["name"] for p in REPO_CARDS]
    assert found["names"] == found["stems"]
    assert Path(found["env_models_dir"]) == other
