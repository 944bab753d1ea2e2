"""``wsi-ai bench``: every stage's throughput on the lab's own slides, beside its limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from wsi_ai.cli.common import POSITIVE, SLIDES, slide_mpp_option, whole_run_errors
from wsi_ai.cli.engine_cmds import DECODES, PRECISIONS, _batch_size, _device
from wsi_ai.outputs import atomic_output


@click.command()
@SLIDES
@click.option("--model", "-m", required=True, help="Model card: a name (wsi-ai models) or a .toml.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Weights file.")
@click.option("--random-init", is_flag=True, help="Random weights: speed only, no real outputs.")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    callback=_device,
    help="auto (a GPU when there is one), cpu, cuda or cuda:N.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="auto: bf16 on GPUs; on CPUs bf16 only where it measures faster.",
)
@click.option(
    "--batch-size",
    default="auto",
    show_default=True,
    callback=_batch_size,
    help="Patches per batch; auto: what fits the GPU (at most 512), 32 on a CPU.",
)
@click.option("--compile", is_flag=True, help="torch.compile the model (GPU).")
@click.option(
    "--read-threads",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Threads reading and decoding tiles ahead of the model.",
)
@click.option(
    "--decode",
    type=click.Choice(DECODES),
    default="auto",
    show_default=True,
    help="Where JPEG tiles are decoded: gpu (nvJPEG), cpu, or auto.",
)
@click.option("--mpp", type=POSITIVE, default=None, help="Patch µm/px (default: the card's).")
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=None,
    help="Patch side in px (default: the card's input size).",
)
@click.option(
    "--max-patches",
    type=click.IntRange(min=1),
    default=None,
    help="Bench only each slide's first N tissue patches (quick runs).",
)
@slide_mpp_option
@click.option(
    "--json",
    "json_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write every figure to this JSON file.",
)
def bench(slides: tuple[Path, ...], json_file: Path | None, **opts: Any) -> None:
    """Measure each stage on real slides and show it beside the limit it could reach.

    For each slide: file read, tile decode and patch assembly inside the reader, the
    reader alone, the model alone (random patches, same batch, size, precision and memory
    format), end to end into a features store, stitching and map exports, all in
    patches/s and seconds per slide; beside them the limits measured in the same run (the
    file's read rate, the raw tile decode rate on all cores or on the GPU, the model
    alone), peak host and GPU memory, GPU busy (NVML, when nvidia-ml-py is installed),
    the start-up before the first batch, and one line naming the stage that binds.
    Nothing is kept but the JSON: the features store and maps go to a temporary folder.

    \b
    Example:
      wsi-ai bench slide.svs --model resnet50 --random-init --max-patches 2000
      wsi-ai bench *.svs --model uni --weights uni.safetensors --json bench.json
    """
    from wsi_ai.bench.report import format_table
    from wsi_ai.bench.run import bench_slides
    from wsi_ai.engine.config import EngineConfig

    max_patches = opts.pop("max_patches")
    config = EngineConfig(
        model=opts["model"],
        weights=opts["weights"],
        random_init=opts["random_init"],
        device=opts["device"],
        batch_size=opts["batch_size"],
        mpp=opts["mpp"],
        size=opts["size"],
        precision=opts["precision"],
        compile=opts["compile"],
        read_threads=opts["read_threads"],
        slide_mpp=opts["slide_mpp"],
        decode=opts["decode"],
    )
    with whole_run_errors():
        results, run = bench_slides(
            [Path(s) for s in slides],
            config,
            max_patches=max_patches,
            say=lambda line: click.echo(line, err=True),
        )
    for result in results:
        click.echo(format_table(result))
    if run.get("random_init"):
        click.echo("random weights: these figures are speed only")
    if json_file is not None:
        data = {"run": run, "slides": [r.as_dict() for r in results]}
        with atomic_output(json_file, overwrite=True) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        click.echo(f"wrote {json_file}")
    raise SystemExit(1 if run["errors"] else 0)
