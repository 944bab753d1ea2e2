"""Inference engine throughput: the model alone vs the whole pipeline on a generated slide.

For each model (default resnet50 and vit_base_patch16_224, random weights, the engine's own
precision: bf16 under autocast where the device supports it, channels-last):

- **model only**: random uint8 patches already on the device, through the engine's model
  call (normalisation + backbone, same batch size, dtype and memory format, compiled with
  ``--compile``): the ceiling;
- **end to end**: a generated gigapixel-style slide (``benchmarks/make_slide.py``, real H&E
  tissue) from the file to the features store: tissue detection, grid, tile decoding in
  read threads, prefetch, pinned non-blocking copies, the model, streaming Zarr writes;

and prints both rates in patches/s and their ratio (the target on a GPU: end to end at
least 80% of model only). Then, in fresh processes, the peak host memory (``ru_maxrss``) of
``embed_slide`` on two slide sizes, to show it stays bounded as the slide grows: nothing
slide-sized is ever held (patches stream in bounded batches, outputs stream to Zarr).

CPU (this machine; the patch count is capped so it finishes in minutes)::

    .venv/bin/python benchmarks/bench_engine.py

GPU (H100; it has Python 3.12 and torch, not the slide stack). Here, fetch cp312 wheels in
two folders under 64 MiB each (OpenCV alone is 58 MiB)::

    PIP="--only-binary=:all: --no-deps --python-version 3.12 --implementation cp
         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any"
    .venv/bin/pip download $PIP -d bench-out/wheels-a opencv-python-headless
    .venv/bin/pip download $PIP -d bench-out/wheels-b openslide-bin openslide-python \
        tifffile imagecodecs zarr numcodecs donfig google-crc32c typing_extensions dask \
        cloudpickle toolz partd locket fsspec pyyaml distributed msgpack tblib zict \
        sortedcontainers tornado psutil jinja2 markupsafe shapely defusedxml click rich \
        markdown-it-py mdurl pygments timm safetensors huggingface_hub
    # add pandas python-dateutil tzdata pillow torchvision==0.26.* if the machine lacks them

then on the machine, one call per folder (``carry`` it), installing into an ignored folder
that stays between calls, a call to generate the slides, and the benchmark::

    pip install -q --no-deps --no-index --target bench-out/site bench-out/wheels-a/*.whl
    pip install -q --no-deps --no-index --target bench-out/site bench-out/wheels-b/*.whl
    PYTHONPATH=bench-out/site:. python benchmarks/make_slide.py \
        bench-out/generated-60000.svs --size 60000 --workers 14   # and --size 30000
    PYTHONPATH=bench-out/site:. python benchmarks/bench_engine.py --device cuda \
        --slide-size 60000 --memory-sizes 30000 60000 --read-threads 12 --compile

Both rates are measured in the same run, model only first (which also warms up the model,
and with ``--compile`` compiles it), so their ratio is what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from wsi_ai.engine import EngineConfig, embed_slide  # noqa: E402
from wsi_ai.engine.embed import prepare_slide, run_prepared  # noqa: E402
from wsi_ai.engine.loader import PatchBatches  # noqa: E402
from wsi_ai.engine.runner import InferenceModel, load_model  # noqa: E402
from wsi_ai.tiling import PatchGrid  # noqa: E402

MIB = 2**20


def _sync(model: InferenceModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def model_only_rate(model: InferenceModel, batches: int) -> float:
    """Patches/s of the engine's model call on random uint8 patches already on the device."""
    shape = (model.batch_size, model.size, model.size, 3)
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, device=model.device)
    for _ in range(2):  # warm-up (and compilation)
        model(pixels)
    _sync(model)
    start = time.perf_counter()
    for _ in range(batches):
        model(pixels)
    _sync(model)
    return batches * model.batch_size / (time.perf_counter() - start)


def end_to_end(
    model: InferenceModel, config: EngineConfig, slide_path: Path, out: Path, cap: int | None
) -> tuple[int, float]:
    """(patches, seconds) from the slide file to the renamed store; ``cap`` patches at most."""
    start = time.perf_counter()
    if cap is None:  # the real thing
        result = embed_slide(slide_path, out, config, model, overwrite=True, raise_errors=True)
        return result.patches, time.perf_counter() - start
    # embed_slide's own two steps, on the first ``cap`` rows of the patch table
    prepared = prepare_slide(slide_path, config, config.mpp or model.card.mpp, model.size)
    full = prepared.patches
    capped = PatchGrid(full.table.head(cap).reset_index(drop=True), full.spec)
    patches = run_prepared(replace(prepared, patches=capped), out, config, model, overwrite=True)
    return patches, time.perf_counter() - start


def read_only_rate(
    model: InferenceModel, config: EngineConfig, slide_path: Path, cap: int | None
) -> float:
    """Patches/s of the read threads alone (decode, assemble, resize into the batch buffers)."""
    from wsi_ai.slide import open_slide
    from wsi_ai.tiling import GridConfig, plan_patches
    from wsi_ai.tissue import TissueConfig

    with open_slide(slide_path) as slide:
        grid = GridConfig(mpp=config.mpp or model.card.mpp, size=model.size)
        full = plan_patches(slide, TissueConfig(), grid)
        table = full.table if cap is None else full.table.head(cap)
        batches = PatchBatches(
            slide,
            full.spec,
            table,
            model.batch_size,
            threads=config.read_threads,
            pin_memory=model.device.type == "cuda",
        )
        start = time.perf_counter()
        for _ in batches:
            pass
        return len(table) / (time.perf_counter() - start)


def ensure_slide(size: int) -> Path:
    from benchmarks.make_slide import make_slide

    path = REPO / "bench-out" / f"generated-{size}.svs"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        make_slide(path, size, seed=0, workers=max(2, (os.cpu_count() or 2) // 2))
        print(f"generated {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def _rss_mib() -> float:
    """The process's current resident set (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_memory(args: argparse.Namespace) -> None:
    """In a fresh process: resident memory while embed_slide runs on one whole slide.

    Samples VmRSS every 20 ms (the high-water mark ``ru_maxrss`` is set by loading the
    model and would hide the slide's share) and prints JSON on stdout.
    """
    import threading

    config = _config(args, args.memory_mpp)
    model = load_model(config)
    model_only_rate(model, 1)  # one batch: the model's own working memory
    before = _rss_mib()
    samples = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            samples.append(_rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        result = embed_slide(args.child, Path(tmp) / "s.zarr", config, model, raise_errors=True)
    stop.set()
    sampler.join()
    row = {
        "patches": result.patches,
        "before": before,
        "during": max(samples),
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(row))


def _config(args: argparse.Namespace, mpp: float | None, model: str | None = None) -> EngineConfig:
    return EngineConfig(
        model=model or args.models[0],
        random_init=True,
        device=args.device,
        batch_size=args.batch_size,
        mpp=mpp,
        precision=args.precision,
        compile=args.compile,
        read_threads=args.read_threads,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--read-threads", type=int, default=2)
    parser.add_argument("--slide-size", type=int, default=20_000, help="generated slide (px)")
    parser.add_argument("--patches", type=int, default=None, help="cap (default: CPU 128)")
    parser.add_argument("--rounds", type=int, default=5, help="model-only / end-to-end pairs")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=[20_000, 40_000])
    parser.add_argument("--memory-mpp", type=float, default=None, help="default: CPU 2, GPU 0.5")
    parser.add_argument("--memory-only", action="store_true", help="skip the throughput part")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_memory(args)
        return
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    cap = args.patches if args.patches is not None else (None if cuda else 128)
    if args.memory_mpp is None:
        args.memory_mpp = 0.5 if cuda else 2.0
    slide = ensure_slide(args.slide_size)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, cap {cap}", flush=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in [] if args.memory_only else args.models:
            config = _config(args, None, name)
            model = load_model(config)
            settings = ", ".join(f"{k} {v}" for k, v in model.settings().items())
            per_run = cap if cap is not None else 50 * model.batch_size
            batches = max(2, -(-per_run // model.batch_size))
            model_only_rate(model, 1)  # warm-up (and compilation)
            rates: list[tuple[float, float]] = []
            patches = 0
            for _ in range(args.rounds):  # pairs close in time: shared machines drift
                alone = model_only_rate(model, batches)
                patches, seconds = end_to_end(model, config, slide, Path(tmp) / "e2e.zarr", cap)
                rates.append((alone, patches / seconds))
            ratios = sorted(e2e / alone for alone, e2e in rates)
            reads = read_only_rate(model, config, slide, cap)
            print(
                f"{name} ({settings}) on {patches} patches of {slide.name}, {args.rounds} "
                f"rounds: model only {max(r[0] for r in rates):,.1f} patches/s, end to end "
                f"{max(r[1] for r in rates):,.1f} patches/s (best of each); end to end / model "
                f"only: median {statistics.median(ratios):.2f} (range {ratios[0]:.2f}-"
                f"{ratios[-1]:.2f}); reading alone "
                f"{reads:,.0f} patches/s with {config.read_threads} threads",
                flush=True,
            )
            del model
    for size in args.memory_sizes:
        path = ensure_slide(size)
        command = [sys.executable, __file__, "--child", str(path), "--models", args.models[0]]
        command += ["--device", args.device, "--precision", args.precision]
        command += ["--read-threads", str(args.read_threads), "--memory-mpp", str(args.memory_mpp)]
        if args.batch_size:
            command += ["--batch-size", str(args.batch_size)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"memory, {args.models[0]} on the whole {path.name} at {args.memory_mpp:g} µm/px "
            f"({row['patches']} patches): resident {row['before']:,.0f} MiB with the model "
            f"loaded and warm, at most {row['during']:,.0f} MiB during the slide "
            f"(+{row['during'] - row['before']:,.0f} MiB); process high-water "
            f"{row['maxrss']:,.0f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
