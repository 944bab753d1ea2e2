"""Run every benchmark in its own process (own peak memory) and print what each reports.

    python benchmarks/run_all.py [--size 50000] [--only read tissue ...]

Generates the shared benchmark slide once (bench-out/generated-<size>.svs, real tissue
from ../shared/data mosaicked by benchmarks/make_slide.py, deterministic) and hands it to
the benchmarks that need a gigapixel slide. Each benchmark prints its target and its ratio
to a reference measured in the same run; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def benchmarks(slide: Path) -> dict[str, list[str]]:
    real = REPO.parent / "shared" / "data" / "slides"
    extra = [
        str(p)
        for p in (real / "CMU-1-Small-Region.svs", real / "ndpi-fluorescence-dapi.ndpi")
        if p.exists()
    ]
    bench = REPO / "benchmarks"
    table = {
        "read": [str(bench / "bench_read.py"), str(slide), *extra],
        "tissue": [str(bench / "bench_tissue.py"), str(slide)],
        "convert": [str(bench / "bench_convert.py"), "--slide", str(slide)],
        "stitch": [str(bench / "bench_stitch.py")],
        "regions": [str(bench / "bench_regions.py")],
        "aggregator": [str(bench / "bench_aggregator.py")],
        "engine": [str(bench / "bench_engine.py")],  # generates its own slides
        # the user command on the shared slide: every stage beside its limit
        "wsi-ai-bench": [
            "-c",
            "from wsi_ai.cli import main; main(prog_name='wsi-ai')",
            "bench",
            str(slide),
            "--model",
            "resnet50",
            "--random-init",
            "--max-patches",
            "512",
            "--json",
            str(REPO / "bench-out" / "wsi-ai-bench.json"),
        ],
        "peers": [str(bench / "bench_peers.py"), "--json", str(REPO / "bench-out" / "peers.json")],
        "scaling": [str(bench / "bench_scaling.py")],
        "proof": [str(bench / "bench_proof_of_learning.py"), str(REPO / "bench-out" / "proof")],
        "batch": [str(bench / "bench_batch.py"), str(REPO / "bench-out" / "batch")],
    }
    return {
        name: args
        for name, args in table.items()
        if not args[0].endswith(".py") or Path(args[0]).exists()
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=50_000, help="benchmark slide side (px)")
    parser.add_argument("--only", nargs="*", default=None, help="names of benchmarks to run")
    args = parser.parse_args()
    slide = REPO / "bench-out" / f"generated-{args.size}.svs"
    if not slide.exists():
        from benchmarks.make_slide import make_slide

        slide.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        make_slide(slide, args.size, seed=0)
        print(f"generated {slide} in {time.perf_counter() - start:.0f} s", flush=True)
    failed = []
    for name, command in benchmarks(slide).items():
        if args.only and name not in args.only:
            continue
        print(
            f"\n=== {name}: {' '.join(Path(c).name if c.endswith('.py') else c for c in command)}",
            flush=True,
        )
        start = time.perf_counter()
        code = subprocess.call([sys.executable, *command], cwd=REPO)
        print(f"=== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
