"""Benchmark regions: threshold -> contours -> polygons -> QuPath GeoJSON on a big canvas.

Setup (the issue's target): a 20,000 x 20,000 float32 heatmap canvas with about 3,000 regions
(random ellipses, some with an elliptic hole, some touching and merging, values 0.55-1.0 on a
0.1 background), thresholded at 0.5 with ``threshold_regions`` (exact pixel-edge polygons,
statistics, light simplification) and written with ``write_geojson``. The target is under 5 s
for contours and GeoJSON together.

Reference, measured in the same run on the same mask: the bare ``cv2.findContours``
(``RETR_CCOMP``, ``CHAIN_APPROX_SIMPLE``) call, i.e. the tracing alone with no polygons, no
statistics and no output. The ratio says what the full export costs on top of tracing.

Run: ``.venv/bin/python benchmarks/bench_regions.py`` (``--size`` and ``--regions`` to vary).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import shapely

from wsi_ai.export.geojson import write_geojson
from wsi_ai.export.regions import threshold_mask, threshold_regions
from wsi_ai.stitch import Heatmap

MPP = 0.5  # slide level-0 µm/px
DOWNSAMPLE = 4.0  # level-0 px per canvas px


def make_canvas(size: int, n_regions: int, seed: int = 0) -> np.ndarray:
    """``[size, size, 1]`` float32 canvas: background 0.1, ``n_regions`` scored ellipses."""
    rng = np.random.default_rng(seed)
    canvas = np.full((size, size), 0.1, np.float32)
    for _ in range(n_regions):
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        ax, ay = (int(v) for v in rng.integers(8, 90, 2))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(canvas, (cx, cy), (ax, ay), angle, 0, 360, float(rng.uniform(0.55, 1.0)), -1)
        if rng.random() < 0.3 and min(ax, ay) > 20:
            hole = (ax // 3, ay // 3)
            cv2.ellipse(canvas, (cx, cy), hole, angle, 0, 360, 0.1, -1)
    return canvas[..., None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20_000, help="canvas side in px")
    parser.add_argument("--regions", type=int, default=3_000, help="ellipses drawn")
    args = parser.parse_args()

    canvas = make_canvas(args.size, args.regions)
    side = round(args.size * DOWNSAMPLE)
    heatmap = Heatmap(
        canvas=canvas,
        coverage=np.ones(canvas.shape[:2], bool),
        downsample=DOWNSAMPLE,
        mpp=MPP * DOWNSAMPLE,
        slide_size=(side, side),
        blend="mean",
        sigma=None,
        fill_value=float("nan"),
        n_patches=0,
        n_placed=0,
    )
    mask = threshold_mask(heatmap, 0.5).view(np.uint8)
    t0 = time.perf_counter()
    contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    reference = time.perf_counter() - t0
    del mask

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "regions.geojson"
        t0 = time.perf_counter()
        regions = threshold_regions(
            heatmap, threshold=0.5, mpp=MPP, classification="Tumor", min_area_um2=50.0
        )
        traced = time.perf_counter() - t0
        report = write_geojson(out, regions, provenance={"benchmark": "bench_regions"})
        total = time.perf_counter() - t0
        size_mb = out.stat().st_size / 2**20

    holed = sum(shapely.get_num_interior_rings(a.geometry) > 0 for a in regions)
    print(f"canvas {args.size} x {args.size} px, {len(contours)} contours traced by OpenCV")
    print(f"regions written: {report.written} ({holed} with holes), {size_mb:.1f} MB")
    print(f"reference  cv2.findContours alone        {reference:7.2f} s")
    print(f"wsi-ai     threshold + regions (+stats)  {traced:7.2f} s")
    print(f"wsi-ai     ... + write_geojson (total)   {total:7.2f} s  (target < 5 s)")
    print(f"ratio total / reference: {total / reference:.1f}x")


if __name__ == "__main__":
    main()
