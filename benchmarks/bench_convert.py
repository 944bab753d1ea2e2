"""Benchmark ``convert_slide`` (slide -> on-disk OME-Zarr): throughput and peak memory.

Setup (the issue's target): a 50,000 x 50,000 synthetic Aperio SVS of real H&E tissue made by
``benchmarks/make_slide.py`` (cached under ``--cache``), converted to NGFF 0.4 with 512-px
chunks and Blosc zstd. Target: peak RSS under 1 GiB.

Reference, measured in the same run with the same Dask thread count: decoding the same
pixels (every level, 512-px chunks) through the lazy pyramid ``Slide.as_zarr()`` without
writing anything. The ratio ``convert rate / decode rate`` says how much writing (compression
and disk) costs on top of reading the slide.

The reference runs before and after the conversion and the faster run counts, so a cold
page cache does not flatter the conversion. Each phase runs in its own process, so each
peak RSS (``ru_maxrss``) is that phase's alone.
Rates are MB/s of raw RGB pixels (1 MB = 1e6 bytes) summed over the levels read.

Run: ``.venv/bin/python benchmarks/bench_convert.py [--size 50000] [--workers 2]``
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from wsi_ai.export.ome_zarr import convert_slide
from wsi_ai.slide.slide import open_slide

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _raw_mb(slide_path: Path) -> float:
    with open_slide(slide_path) as slide:
        return sum(lv.width * lv.height * 3 for lv in slide.levels) / 1e6


def _checksum(block: np.ndarray) -> np.ndarray:
    return np.array([[[int(block[:, :1, :1].sum())]]], dtype=np.int64)


def phase_decode(slide_path: Path, workers: int, chunk: int) -> dict[str, Any]:
    """Read every level's chunks through the lazy pyramid; keep nothing."""
    t0 = time.perf_counter()
    with open_slide(slide_path) as slide:
        group = slide.as_zarr()
        parts = []
        for lv in slide.levels:
            arr = da.from_zarr(group[str(lv.index)], chunks=(chunk, chunk, 3))
            touched = arr.map_blocks(_checksum, chunks=(1, 1, 1), dtype=np.int64)
            parts.append(touched.sum())
        dask.compute(*parts, scheduler="threads", num_workers=workers)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu": _cpu_seconds(), "peak_rss": _peak_rss_bytes()}


def phase_convert(
    slide_path: Path, out: Path, workers: int, chunk: int, ngff: str
) -> dict[str, Any]:
    t0 = time.perf_counter()
    with open_slide(slide_path) as slide:
        convert_slide(
            slide,
            out,
            ngff="0.5" if ngff == "0.5" else "0.4",
            chunk=chunk,
            num_workers=workers,
            overwrite=True,
        )
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "seconds": seconds,
        "cpu": _cpu_seconds(),
        "peak_rss": _peak_rss_bytes(),
        "out_bytes": size,
    }


def _seconds(result: dict[str, Any]) -> float:
    return float(result["seconds"])


def _run_phase(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", *args]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def ensure_slide(size: int, cache: Path) -> Path:
    path = cache / f"synthetic-{size}-seed0.svs"
    if path.exists():
        return path
    sys.path.insert(0, str(REPO))
    from benchmarks.make_slide import make_slide

    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_slide(path, size, seed=0)
    print(f"made {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=50_000, help="level-0 side of the slide, px")
    p.add_argument("--slide", type=Path, help="convert this slide instead of a synthetic one")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "wsi-ai-bench")
    p.add_argument("--workers", type=int, default=2, help="Dask threads (both phases)")
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--ngff", choices=["0.4", "0.5"], default="0.4")
    p.add_argument("--keep", action="store_true", help="keep the written OME-Zarr")
    p.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.phase:  # child process: one phase, one JSON line on stdout
        kind, slide_path = args.phase[0], Path(args.phase[1])
        if kind == "decode":
            result = phase_decode(slide_path, args.workers, args.chunk)
        else:
            out = Path(args.phase[2])
            result = phase_convert(slide_path, out, args.workers, args.chunk, args.ngff)
        print(json.dumps(result))
        return 0

    slide_path = args.slide or ensure_slide(args.size, args.cache)
    raw = _raw_mb(slide_path)
    out = args.cache / f"{slide_path.stem}.ome.zarr"
    common = ["--workers", str(args.workers), "--chunk", str(args.chunk), "--ngff", args.ngff]
    # the reference runs before and after the conversion; the faster run counts (warm caches)
    decode = _run_phase(["decode", str(slide_path), *common])
    convert = _run_phase(["convert", str(slide_path), str(out), *common])
    decode = min(decode, _run_phase(["decode", str(slide_path), *common]), key=_seconds)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)

    decode_rate, convert_rate = raw / decode["seconds"], raw / convert["seconds"]
    print(f"slide: {slide_path.name}, {raw:.0f} MB raw RGB over all levels")
    print(f"workers {args.workers}, chunk {args.chunk}, NGFF {args.ngff}")
    print(
        f"reference (decode only): {decode['seconds']:.1f} s ({decode['cpu']:.1f} s CPU), "
        f"{decode_rate:.1f} MB/s, "
        f"peak RSS {decode['peak_rss'] / GIB:.2f} GiB"
    )
    print(
        f"convert:                 {convert['seconds']:.1f} s ({convert['cpu']:.1f} s CPU), "
        f"{convert_rate:.1f} MB/s, "
        f"peak RSS {convert['peak_rss'] / GIB:.2f} GiB, output {convert['out_bytes'] / 1e9:.2f} GB"
    )
    print(f"ratio convert / decode rate: {convert_rate / decode_rate:.2f}")
    print(f"ratio decode / convert CPU:  {decode['cpu'] / convert['cpu']:.2f}")
    ok = convert["peak_rss"] < GIB
    print(f"peak RSS under 1 GiB: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
