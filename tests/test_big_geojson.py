"""A 50 MB QuPath GeoJSON export (44,000 polygons) converts in bounded memory.

The file is generated (deterministic, QuPath-like detections); each conversion runs in a
subprocess whose peak resident memory is read with ``getrusage(RUSAGE_CHILDREN)``. Before the
reader streamed features and the ASAP writer streamed annotations, the conversion itself took
~0.5 GB (to .geojson) and ~1.35 GB (to .xml); now ~0.2 GB, the command's start-up included.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

MB = 1 << 20
N_POLYGONS = 44_000
VERTICES = 46  # with the properties below: a ~50 MB file
CLASSES = (("Tumor", (200, 0, 0)), ("Stroma", (150, 200, 150)), ("Immune cells", (160, 90, 160)))


def write_big_geojson(path: Path, n: int = N_POLYGONS, vertices: int = VERTICES) -> Path:
    """A QuPath-like FeatureCollection of ``n`` star-shaped (simple, valid) polygons of
    ``vertices`` vertices with a UUID, a class, and measurements; the same bytes every time."""
    rng = np.random.default_rng(20240501)
    angles = np.linspace(0.0, 2.0 * np.pi, vertices, endpoint=False)
    centres = rng.uniform(1_000, 99_000, (n, 2))
    radii = rng.uniform(20, 40, (n, 1)) * (1 + 0.2 * rng.uniform(-1, 1, (n, vertices)))
    xs = np.round(centres[:, :1] + radii * np.cos(angles), 2)
    ys = np.round(centres[:, 1:] + radii * np.sin(angles), 2)
    scores = np.round(rng.uniform(size=n), 4)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"type":"FeatureCollection","features":[')
        for i in range(n):
            ring = list(zip(xs[i].tolist(), ys[i].tolist(), strict=True))
            ring.append(ring[0])
            name, color = CLASSES[i % len(CLASSES)]
            properties = {
                "objectType": "detection",
                "classification": {"name": name, "color": list(color)},
                "measurements": {
                    "Area px^2": round(float(np.pi * radii[i].mean() ** 2), 2),
                    "Score": scores[i],
                },
            }
            feature = (
                f'{{"type":"Feature","id":"{uuid.UUID(int=i, version=4)}",'
                '"geometry":{"type":"Polygon","coordinates":[['
                + ",".join(f"[{x:.2f},{y:.2f}]" for x, y in ring)
                + "]]},"
                f'"properties":{json.dumps(properties, separators=(",", ":"))}}}'
            )
            f.write(("," if i else "") + "\n" + feature)
        f.write("\n]}\n")
    return path


def peak_rss(args: list[str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Peak resident memory (MB) and wall time (s) of ``args`` run in a fresh process (a
    wrapper measures its only child, so earlier children do not count)."""
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr,\n"
        "    'seconds': time.perf_counter() - t,\n"
        "    'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *args], capture_output=True, text=True, timeout=300
    )
    result = json.loads(done.stdout)
    child = subprocess.CompletedProcess(args, result["rc"], result["out"], result["err"])
    return result["kb"] / 1024, result["seconds"], child


CLI = [sys.executable, "-c", "from wsi_ai.cli import main; main()"]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_big_geojson(tmp_path_factory.mktemp("big") / "big.geojson")


def test_the_generated_export_is_what_the_test_needs(tmp_path: Path) -> None:
    small = write_big_geojson(tmp_path / "small.geojson", n=30)
    doc = json.loads(small.read_text())
    assert (
        len(doc["features"]) == 30
        and small.read_bytes() == write_big_geojson(tmp_path / "again.geojson", n=30).read_bytes()
    )
    from wsi_ai.annotations import read_qupath_geojson

    got = read_qupath_geojson(small)
    assert all(a.geometry.is_valid and len(a.geometry.exterior.coords) == VERTICES + 1 for a in got)
    assert {a.classification for a in got} == {name for name, _ in CLASSES}


@pytest.mark.slow
@pytest.mark.qupath_unchecked  # the writer's output is checked in test_geojson_writer.py: 50 MB
@pytest.mark.parametrize("suffix", [".geojson", ".xml"])
def test_a_50_mb_export_converts_in_under_500_mb(big: Path, tmp_path: Path, suffix: str) -> None:
    """``wsi-ai annotations convert big.geojson -o out.geojson`` (and ``-o out.xml``)."""
    assert 45 * MB < big.stat().st_size < 60 * MB
    out = tmp_path / f"out{suffix}"
    peak, seconds, done = peak_rss([*CLI, "annotations", "convert", str(big), "-o", str(out)])
    assert done.returncode == 0, done.stderr
    assert f"{N_POLYGONS} object(s) from {N_POLYGONS} read" in done.stdout
    assert out.stat().st_size > 30 * MB
    print(f"convert to {suffix}: peak {peak:.0f} MB, {seconds:.1f} s")
    assert peak < 500, f"converting a 50 MB export to {suffix} took {peak:.0f} MB"
