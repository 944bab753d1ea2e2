"""Benchmark the Numba stitcher against a per-patch numpy loop measured in the same run.

Setup (the issue's target): 1,000,000 patches of 224 level-0 px on a 1000 x 1000 grid (a
224,000 px square slide at 0.5 MPP), one random float32 value each, "mean" blending.
Two canvas scales: downsample 56 (each patch covers 4 x 4 canvas px, a thumbnail heatmap)
and downsample 16 (14 x 14 canvas px per patch).

The numpy reference computes the canvas spans vectorised, then loops over patches with slice
additions into float32 sum/count canvases, then divides. Its loop is timed on a random subset
(default 20,000 patches) and extrapolated linearly to all patches; the final division is timed
on the full canvas. The stitcher is timed on all patches after a warm-up call (JIT).

Run: ``.venv/bin/python benchmarks/bench_stitch.py`` (``NUMBA_NUM_THREADS`` sets the threads).
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from wsi_ai.stitch import canvas_spans, stitch

PATCH = 224


def numpy_reference_seconds(
    x: np.ndarray, y: np.ndarray, values: np.ndarray, slide: int, ds: float, n_sub: int
) -> tuple[float, float, float]:
    """Seconds for (subset loop, extrapolated full loop + division, division alone).

    All canvases are allocated and touched before timing, so page faults are not counted.
    """
    height = width = int(np.ceil(slide / ds))
    acc = np.ones((height, width), np.float32)
    count = np.ones((height, width), np.float32)
    canvas = np.ones((height, width), np.float32)
    acc[:] = 0
    count[:] = 0
    sub = np.random.default_rng(1).choice(x.size, n_sub, replace=False)
    t0 = time.perf_counter()
    c0, c1 = canvas_spans(x[sub], np.full(n_sub, PATCH), ds, width)
    r0, r1 = canvas_spans(y[sub], np.full(n_sub, PATCH), ds, height)
    for i in range(n_sub):
        acc[r0[i] : r1[i], c0[i] : c1[i]] += values[sub[i]]
        count[r0[i] : r1[i], c0[i] : c1[i]] += 1
    loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(acc, count, out=canvas)
    divide = time.perf_counter() - t0
    return loop, loop * x.size / n_sub + divide, divide


def time_stitch(args: tuple, kwargs: dict, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds (all threads) of each call."""
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        stitch(*args, **kwargs)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def bench(n_side: int, ds: float, n_sub: int, repeats: int) -> None:
    slide = n_side * PATCH
    gy, gx = np.divmod(np.arange(n_side * n_side, dtype=np.int64), n_side)
    x, y = gx * PATCH, gy * PATCH
    values = np.random.default_rng(0).random(x.size, dtype=np.float32)
    side = int(np.ceil(slide / ds))
    px_side = round(PATCH / ds)
    updates = x.size * px_side**2
    threads = numba.get_num_threads()
    args = (x, y, PATCH, PATCH, values)
    kwargs: dict = {"slide_size": (slide, slide), "downsample": ds}

    # Steady state: output canvases allocated (and their pages touched) once, then reused.
    out = np.ones((side, side, 1), np.float32)
    cov = np.ones((side, side), np.bool_)
    warm = time_stitch(args, {**kwargs, "out": out, "coverage_out": cov}, repeats)
    assert cov.all() and np.array_equal(out[::px_side, ::px_side, 0].ravel(), values)
    del out, cov
    # Fresh: each call allocates its canvas, so the OS page-faults it in (slow in this VM).
    fresh = time_stitch(args, kwargs, repeats)
    loop, ref, divide = numpy_reference_seconds(x, y, values, slide, ds, n_sub)

    def show(label: str, timed: tuple[list[float], list[float]]) -> None:
        times, cpus = timed
        best, med = min(times), float(np.median(times))
        print(
            f"numba, {label}: best {best:.3f} s, median {med:.3f} s of {len(times)} "
            f"({', '.join(f'{t:.3f}' for t in times)})"
        )
        print(f"  patches/s (best)            : {x.size / best:,.0f}")
        print(
            f"  patch-px updates/s per core : {updates / best / threads / 1e6:,.1f} M best, "
            f"{updates / med / threads / 1e6:,.1f} M median ({threads} numba threads)"
        )
        print(f"  patch-px updates per CPU-s  : {updates / min(cpus) / 1e6:,.1f} M (best)")
        print(f"  ratio numpy / numba         : {ref / best:.1f} x best, {ref / med:.1f} x median")

    print(
        f"\n== downsample {ds:g}: {x.size:,} patches of {PATCH} px, {px_side} x {px_side} "
        f"canvas px each, canvas {side} x {side}, {updates:,} patch-px updates"
    )
    print(
        f"numpy per-patch loop: {ref:.3f} s, EXTRAPOLATED from {n_sub:,} random patches "
        f"({loop:.3f} s, {n_sub / loop:,.0f} patches/s) x {x.size / n_sub:g} "
        f"+ {divide:.3f} s final division"
    )
    show("reused out=", warm)
    show("fresh canvas", fresh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-side", type=int, default=1000, help="grid side (patches)")
    parser.add_argument("--subset", type=int, default=20_000, help="patches for numpy loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--downsample", type=float, nargs="+", default=[56.0, 16.0])
    args = parser.parse_args()

    t0 = time.perf_counter()
    stitch([0, 100], [0, 50], 224, 224, [1.0, 2.0], slide_size=(500, 500), downsample=7)
    print(
        f"warm-up call (JIT or cache load): {time.perf_counter() - t0:.2f} s; "
        f"numba threads: {numba.get_num_threads()} (threading layer after first run: "
        f"{numba.threading_layer()})"
    )
    for ds in args.downsample:
        bench(args.n_side, ds, min(args.subset, args.n_side**2), args.repeats)


if __name__ == "__main__":
    main()
