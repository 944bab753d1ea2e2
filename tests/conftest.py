"""Shared fixtures: where the real test data lives, and how a missing file is handled.

Real slides and annotations live in ``../shared/data`` beside the checkout (or wherever
``WSI_AI_TEST_DATA`` points). A test that needs a file a clone lacks is skipped with a
reason naming that variable; with ``WSI_AI_REQUIRE_TEST_DATA=1`` (set by ``.ci/run``) it fails.
"""

from __future__ import annotations

import collections.abc
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "wsi_ai" / "data"


def data_root() -> Path:
    env = os.environ.get("WSI_AI_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def require_data() -> bool:
    return os.environ.get("WSI_AI_REQUIRE_TEST_DATA", "") not in ("", "0")


def shared_file(relpath: str) -> Path:
    """Path of a file in the shared test data; skip (or fail in CI) when it is missing."""
    path = data_root() / relpath
    if not path.exists():
        msg = (
            f"test data {relpath!r} not found under {data_root()}; "
            "set WSI_AI_TEST_DATA to the folder holding wsi-ai's shared test data"
        )
        if require_data():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared() -> Callable[[str], Path]:
    """``shared("slides/CMU-1-Small-Region.svs")`` gives the path or skips."""
    return shared_file


@pytest.fixture(scope="session")
def cmu_small() -> Path:
    """The bundled Aperio SVS (also in the wheel, so it never skips)."""
    return BUNDLED / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def skin_striped() -> Path:
    return BUNDLED / "skin-he-striped.tif"


@pytest.fixture(scope="session", autouse=True)
def _check_shared_checksums() -> None:
    """A corrupted copy of the shared data must fail loudly, not give odd results."""
    sums = data_root() / "SHA256SUMS"
    if not sums.exists():
        if require_data():
            pytest.fail(f"{sums} missing; set WSI_AI_TEST_DATA to wsi-ai's shared test data")
        return
    bad = []
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = data_root() / name.lstrip("*")
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name)
    if bad:
        pytest.fail(f"shared test data corrupted (sha256 mismatch): {', '.join(bad)}")


# ---- every GeoJSON a test leaves in its tmp_path must import into QuPath -------------------

_GEOJSON_SUFFIXES = (".geojson", ".geojson.gz")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "qupath_unchecked: the test writes GeoJSON QuPath rejects on purpose"
    )


@pytest.fixture(autouse=True)
def _geojson_in_tmp_path_imports_into_qupath(
    request: pytest.FixtureRequest,
) -> collections.abc.Iterator[None]:
    """After each test, check every *.geojson / *.geojson.gz under its ``tmp_path``.

    Files carrying wsi-ai's ``"wsi_ai"`` provenance member (written by our writer) are held
    to wsi-ai's strict rules, other files to QuPath's own (tests/qupath_rules.py). A test
    that writes bad GeoJSON on purpose is marked ``@pytest.mark.qupath_unchecked``.
    """
    yield
    tmp = getattr(request.node, "funcargs", {}).get("tmp_path")
    if tmp is None or request.node.get_closest_marker("qupath_unchecked") is not None:
        return
    from tests.qupath_rules import load, validate_qupath_geojson

    problems: list[str] = []
    for folder, subfolders, files in os.walk(tmp):
        subfolders[:] = [d for d in subfolders if not d.endswith(".zarr")]  # chunk trees
        for name in files:
            if not name.lower().endswith(_GEOJSON_SUFFIXES):
                continue
            path = Path(folder) / name
            try:
                doc = load(path)
            except (OSError, ValueError, EOFError) as err:
                problems.append(f"{path}: not readable as JSON: {err}")
                continue
            strict = isinstance(doc, dict) and "wsi_ai" in doc
            problems += [f"{path}: {p}" for p in validate_qupath_geojson(doc, strict=strict)[:5]]
    if problems:
        pytest.fail("GeoJSON that QuPath would not import:\n" + "\n".join(problems[:20]))
