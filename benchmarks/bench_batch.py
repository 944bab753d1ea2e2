"""Batch layer overhead: ``run_batch`` over many slides vs the same slides one by one.

A deterministic cohort of small slides (``benchmarks/make_cohort.py``: real H&E tissue,
``labels.csv``) is written into ``OUT/slides/`` (reused when its parameters match). Then, per
pipeline:

- **reference**: :func:`wsi_ai.pipeline.run_slide` on each slide into a fresh folder, the
  per-slide wall times summed (no batch layer: no identity hashes, temporary folders and
  renames, ``slide.json``, ``summary.csv`` rewrites, log or lock);
- **batch**: :func:`wsi_ai.batch.run_batch` (scheduler ``threads``) over the same slides into
  a fresh folder, its wall time; then the same call again on that folder: the resume pass,
  every slide skipped.

Overhead = batch wall / summed per-slide - 1 (target: under 5 %). Both are measured in the
same process after a warm-up slide (imports, models; every file read once into the page
cache), ``--reps`` times (default 3), the order alternating (reference first, then batch
first, ...); the overhead is the median of the reps' ratios, the times the reps' medians.

Pipelines: ``he-density`` (no model) and ``mil-slide`` with a random-init ``resnet18`` on the
CPU and the grid at ``--mpp`` µm/px (default 1, to keep CPU time sane: at 2 µm/px a ~1500 px
slide has no 896 px patch with half its area tissue, and mil needs one). Its aggregator is
trained here: ``pipelines/features.toml`` through ``run_batch`` on ``--train-slides``
slides (half per label), then a 2-fold ABMIL, 3 epochs (``wsi_ai.train.train_run``, what
``wsi-ai train`` calls). The mil reference passes ``models=WORKER_MODELS`` (the batch's own
model cache, loaded before either is timed).

    python benchmarks/bench_batch.py [OUT] [--slides 20 --size 3000 --mil-slides 20]
    python benchmarks/bench_batch.py /tmp/bb --quick      # 4 slides of 1500 px, mil on 2
    ... --set export.report=false    # a pipeline override for both (here: no slide reports)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.make_cohort import make_cohort
from wsi_ai.batch import WORKER_MODELS, run_batch
from wsi_ai.inputs import SlideInput
from wsi_ai.pipeline import Models, run_slide
from wsi_ai.pipeline_config import Pipeline, load_pipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
TARGET = 0.05  # batch wall at most 5 % above the summed per-slide time


def cohort(root: Path, n: int, size: int, workers: int) -> list[SlideInput]:
    """The slides of a deterministic cohort, with their labels; written unless already there."""
    info = root / "cohort.json"
    params = {"size": size, "seed": 0, "patch_px": 112}
    old = json.loads(info.read_text()) if info.exists() else {}
    if any(old.get(k) != v for k, v in params.items()) or old.get("n_slides", 0) < n:
        start = time.perf_counter()
        make_cohort(root, n, size, seed=0, patch_px=112, overwrite=True, workers=workers)
        print(f"generated {n} slides of ~{size} px in {time.perf_counter() - start:.0f} s")
    rows = json.loads(info.read_text())["slides"]
    return [SlideInput(root / r["path"], label=r["label"]) for r in rows[:n]]


def reference(
    pipeline: Pipeline, items: Sequence[SlideInput], dest: Path, models: Models | None
) -> tuple[float, dict[str, float]]:
    """Summed wall time of ``run_slide`` on each slide (each into a fresh folder), and the
    per-stage seconds summed over the slides."""
    shutil.rmtree(dest, ignore_errors=True)
    total, stages = 0.0, dict[str, float]()
    for item in items:
        start = time.perf_counter()
        record = run_slide(
            item.path, pipeline, dest / item.name, slide_mpp=item.slide_mpp, models=models
        )
        total += time.perf_counter() - start
        for stage, seconds in record["stages"].items():
            stages[stage] = round(stages.get(stage, 0.0) + seconds, 3)
    return total, stages


def batch(
    pipeline: Pipeline, items: Sequence[SlideInput], dest: Path, fresh: bool = True
) -> tuple[float, dict[str, Any]]:
    """Wall time and run.json of one ``run_batch`` (into a fresh ``dest`` unless not ``fresh``)."""
    if fresh:
        shutil.rmtree(dest, ignore_errors=True)
    start = time.perf_counter()
    result = run_batch(items, pipeline, dest, scheduler="threads")
    seconds = time.perf_counter() - start
    if result.failed:
        raise RuntimeError(f"{dest}: {[o.error for o in result.failed]}")
    want = "done" if fresh else "skipped"
    if any(o.status != want for o in result.outcomes):
        raise RuntimeError(f"{dest}: expected every slide {want}")
    return seconds, {**result.run, "slide_s": sum(o.seconds for o in result.outcomes)}


def measure(
    name: str,
    pipeline: Pipeline,
    items: Sequence[SlideInput],
    work: Path,
    reps: int,
    models: Models | None,
) -> dict[str, Any]:
    """Warm-up, then ``reps`` alternating reference/batch pairs, then the resume pass."""
    for item in items:  # the files into the page cache: no side reads them cold
        item.path.read_bytes()
    # warm-up, both sides: imports (the batch's first call imports the engine's scheduler
    # module, dask and torch, once per process), models, caches
    first_ref, _ = reference(pipeline, items[:1], work / f"{name}-warmup-ref", models)
    first_batch, _ = batch(pipeline, items[:1], work / f"{name}-warmup-batch")
    refs: list[tuple[float, dict[str, float]]] = []
    walls: list[float] = []
    runs: list[tuple[float, dict[str, Any]]] = []
    for rep in range(reps):
        steps: list[Callable[[], None]] = [
            lambda: refs.append(reference(pipeline, items, work / f"{name}-ref", models)),
            lambda: runs.append(batch(pipeline, items, work / f"{name}-batch")),
        ]
        for step in steps if rep % 2 == 0 else steps[::-1]:
            step()
        walls.append(runs[-1][0])
        print(f"  {name} rep {rep + 1}: reference {refs[-1][0]:.1f} s, batch {walls[-1]:.1f} s")
    resume, _ = batch(pipeline, items, work / f"{name}-batch", fresh=False)
    sums = [r[0] for r in refs]
    wall, summed = statistics.median(walls), statistics.median(sums)
    ratios = [w / r - 1 for w, r in zip(walls, sums, strict=True)]
    outside = statistics.median(w - run["slide_s"] for w, run in runs)
    # per-slide work outside the stages: batch (slide.json, report, rename) minus reference
    extra = statistics.median(
        (run["slide_s"] - sum(run["stages"].values())) - (ref - sum(stages.values()))
        for (_, run), (ref, stages) in zip(runs, refs, strict=True)
    )
    return {
        "pipeline": name,
        "slides": len(items),
        "reps": reps,
        "batch_wall_s": round(wall, 2),
        "summed_per_slide_s": round(summed, 2),
        "overhead": round(statistics.median(ratios), 4),  # of the pairs, close in time
        "overhead_per_rep": [round(o, 4) for o in ratios],
        "batch_walls_s": [round(w, 2) for w in walls],
        "reference_sums_s": [round(r, 2) for r in sums],
        "slides_per_hour": round(len(items) / wall * 3600, 1),
        "outside_slides_s": round(outside, 3),
        "slide_extra_s": round(extra, 3),
        "resume_s": round(resume, 3),
        "warmup_s": {"reference": round(first_ref, 2), "batch": round(first_batch, 2)},
        "stages_s": {"batch": runs[-1][1].get("stages", {}), "reference": refs[-1][1]},
    }


def train_aggregator(
    items: Sequence[SlideInput], overrides: list[str], work: Path, n_train: int
) -> Path:
    """features.toml through ``run_batch`` on ``n_train`` slides (half per label), then ABMIL."""
    from wsi_ai.train import TrainConfig, train_run

    by_label: dict[str, list[SlideInput]] = {}
    for item in items:
        by_label.setdefault(item.label or "", []).append(item)
    half = n_train // 2
    picked = [s for group in sorted(by_label) for s in by_label[group][:half]]
    if len(by_label) != 2 or len(picked) != 2 * half or half < 3:
        raise SystemExit(f"need >= 3 slides per label to train, got {len(picked)}")
    feats, labels, run = work / "mil-features", work / "mil-labels.csv", work / "mil-run"
    start = time.perf_counter()
    features = load_pipeline(PIPELINES / "features.toml", overrides)
    if run_batch(picked, features, feats, scheduler="threads").failed:
        raise SystemExit(f"embedding failed on some slides: see {feats / 'errors.json'}")
    labels.write_text("slide,label\n" + "".join(f"{s.path.stem},{s.label}\n" for s in picked))
    config = TrainConfig(aggregator="abmil", folds=2, max_epochs=3, device="cpu")
    train_run(labels, feats, run, config, overwrite=True)
    print(
        f"  mil aggregator: {len(picked)} slides embedded + ABMIL trained in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return run


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "slides", "batch wall s", "summed per-slide s", "overhead", "slides/h",
        "outside slides s", "resume s",
    )  # fmt: skip
    lines = ["  ".join([f"{'pipeline':<10}", *(f"{h:>{len(h)}}" for h in head)])]
    for r in rows:
        cells = (
            r["slides"],
            f"{r['batch_wall_s']:.1f}",
            f"{r['summed_per_slide_s']:.1f}",
            f"{r['overhead']:+.1%}",
            f"{r['slides_per_hour']:.0f}",
            f"{r['outside_slides_s']:.2f}",
            f"{r['resume_s']:.2f}",
        )
        lines.append(
            "  ".join(
                [
                    f"{r['pipeline']:<10}",
                    *(f"{c:>{len(h)}}" for c, h in zip(cells, head, strict=True)),
                ]
            )
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", nargs="?", type=Path, default=REPO / "bench-out" / "batch")
    p.add_argument("--slides", type=int, default=20, help="slides in the batch")
    p.add_argument("--size", type=int, default=3000, help="nominal slide side, level-0 px")
    p.add_argument("--mil-slides", type=int, default=20, help="slides for mil-slide (0: skip)")
    p.add_argument("--train-slides", type=int, default=6, help="slides to train the aggregator")
    p.add_argument("--mpp", type=float, default=None, help="mil grid µm/px (default 1)")
    p.add_argument("--reps", type=int, default=3, help="reference/batch pairs (medians)")
    p.add_argument("--workers", type=int, default=2, help="threads generating slides")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 slides of 1500 px, mil 2")
    p.add_argument("--json", action="store_true", help="print the results as one JSON line")
    p.add_argument("--set", action="append", default=[], help="override for both, e.g. a.b=1")
    args = p.parse_args(argv)
    if args.quick:
        args.slides, args.size, args.mil_slides, args.reps = 4, 1500, 2, 1
    args.mpp = args.mpp or 1.0
    n_cohort = max(args.slides, args.mil_slides, args.train_slides if args.mil_slides else 0)
    items = cohort(args.out / "slides", n_cohort, args.size, args.workers)
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at start; {args.reps} rep(s), "
        "reference first on odd reps, batch first on even; overhead: median of the reps' ratios",
        flush=True,
    )
    he = load_pipeline(PIPELINES / "he-density.toml", args.set)
    rows = [measure("he-density", he, items[: args.slides], work, args.reps, None)]
    if args.mil_slides:
        common = ["model.random_init=true", "model.device='cpu'", f"grid.mpp={args.mpp}"]
        run = train_aggregator(items, common, work, args.train_slides)
        agg = [f"aggregator.run={json.dumps(str(run.absolute()))}", "aggregator.device='cpu'"]
        mil = load_pipeline(PIPELINES / "mil-slide.toml", [*common, *agg, *args.set])
        WORKER_MODELS.backbone(mil)  # loaded before anything is timed, shared by both sides
        WORKER_MODELS.aggregator(mil)
        mil_items = items[: args.mil_slides]
        rows.append(measure("mil-slide", mil, mil_items, work, args.reps, WORKER_MODELS))
    end = os.getloadavg()[0]
    print(
        f"\nload average {end:.2f} at the end ({os.cpu_count()} CPUs: a busy machine "
        "inflates both sides alike, but adds noise to their ratio)"
    )
    print(table(rows))
    print(
        f"target: overhead under {TARGET:.0%}; mil-slide: random-init resnet18 on the CPU, "
        f"grid {args.mpp:g} µm/px; slides ~{args.size} px (±20 %), he-density grid 0.5 µm/px.\n"
        "outside slides: batch wall minus its slides' own seconds (process_slide: run_slide, "
        "slide.json, rename), in the same call, so free of run-to-run drift: the batch's "
        "fixed cost (plan, lock, log, run.json, summary rewrites and pages)"
    )
    for r in rows:
        reps = ", ".join(f"{o:+.1%}" for o in r["overhead_per_rep"])
        w = r["warmup_s"]
        print(
            f"{r['pipeline']}: overhead per rep {reps}; first slide of the process (warm-up, "
            f"not counted): run_slide {w['reference']:.1f} s, run_batch {w['batch']:.1f} s; "
            f"per-slide work outside the stages, batch minus reference, summed over the slides: "
            f"{r['slide_extra_s']:.2f} s "
            "(slide.json, the slide report when export.report, the rename); "
            f"last rep's stages (s, summed over slides): {r['stages_s']}"
        )
    result = {
        "rows": rows,
        "load_start": load[0],
        "load_end": end,
        "cpus": os.cpu_count(),
        "size": args.size,
        "mil_mpp": args.mpp,
    }
    (args.out / "bench_batch.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    return 0  # a report, not a check: nothing here asserts a time


if __name__ == "__main__":
    raise SystemExit(main())
