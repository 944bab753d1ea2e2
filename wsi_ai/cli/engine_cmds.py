"""Inference commands: ``embed`` (patch embeddings) and ``score`` (patch class scores).

Both write one features store per slide, ``OUT/<slide-stem>.zarr`` (coords, float16
embeddings, float32 scores, attributes with the card's hash and every parameter), each
renamed into place only when complete.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from wsi_ai.cli.common import (
    POSITIVE,
    SLIDES,
    F,
    apply_options,
    echo_json,
    error_line,
    json_option,
    overwrite_option,
    progress_bar,
    slide_mpp_option,
    tissue_filter_options,
    whole_run_errors,
)
from wsi_ai.errors import WsiAiError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODES = ("auto", "cpu", "gpu")  # as wsi_ai.engine.config


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise click.BadParameter("use auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    return value


def _sha256(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from wsi_ai.engine.config import normalise_sha256  # light: --help stays fast

    if value is None:
        return None
    try:
        return normalise_sha256(value)
    except ValueError as err:
        raise click.BadParameter("use the 64 hex digits of the weights file's sha256") from err


def _batch_size(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter("use a positive number of patches, or auto")
    return int(value)


def _scheduler(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from wsi_ai.engine.cluster import parse_scheduler

    try:
        parse_scheduler(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    return value


def _engine_options(func: F) -> F:
    return apply_options(
        func,
        click.option(
            "-m",
            "--model",
            required=True,
            help="Model card: a name from `wsi-ai models list`, or a path to a .toml card.",
        ),
        click.option(
            "-o",
            "--out",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Output folder: one OUT/<slide-stem>.zarr per slide.",
        ),
        click.option(
            "--weights",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="The weights file (default: the card's `weights`).",
        ),
        click.option(
            "--sha256",
            metavar="HEX",
            default=None,
            callback=_sha256,
            help="Check the weights file against this sha256; refused on mismatch.",
        ),
        click.option(
            "--random-init",
            is_flag=True,
            help="Random weights, for benchmarks and smoke tests; every output says so.",
        ),
        click.option(
            "--mpp",
            type=POSITIVE,
            default=None,
            help="Patch resolution in µm/px (default: the card's).",
        ),
        click.option(
            "--size",
            type=click.IntRange(min=8),
            default=None,
            help="Patch side in px (default: the card's input size).",
        ),
        tissue_filter_options(),
        click.option(
            "--batch-size",
            default="auto",
            show_default=True,
            callback=_batch_size,
            help="Patches per batch; auto: what fits the GPU (at most 512), 32 on a CPU.",
        ),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            callback=_device,
            help="auto (a GPU when there is one), cpu, cuda or cuda:N.",
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default="auto",
            show_default=True,
            help="auto: bf16 on GPUs that have it (else fp16); on CPUs bf16 only where it "
            "measures at least 10% faster than fp32 (checked once, logged with -v).",
        ),
        click.option("--compile", is_flag=True, help="torch.compile the model (GPU, big runs)."),
        click.option(
            "--read-threads",
            type=click.IntRange(1, 64),
            default=2,
            show_default=True,
            help="Threads decoding patches ahead of the model.",
        ),
        click.option(
            "--decode",
            type=click.Choice(DECODES),
            default="auto",
            show_default=True,
            help="Where JPEG tiles are decoded: gpu (nvJPEG, beside a CUDA model), cpu, or "
            "auto (the GPU where it applies). Each tile is decoded once.",
        ),
        click.option(
            "--scheduler",
            default=None,
            callback=_scheduler,
            help="Where slides run: threads (default), processes[:N] (one worker per GPU), "
            "or a Dask cluster address tcp://HOST:PORT.",
        ),
        slide_mpp_option,
        overwrite_option,
        json_option,
    )


def _weights_label(config: Any) -> str:
    """Which weights a run used, for its summary lines."""
    if config.random_init:
        return "RANDOM weights (--random-init)"
    if config.weights is not None:
        return f"weights {config.weights}"
    from wsi_ai.nn.cards import find_card

    try:
        card_weights = find_card(config.model).weights
    except WsiAiError:  # already reported by the run; keep the summary going
        card_weights = None
    return "weights from the card" if card_weights is None else f"weights {card_weights}"


def _run(slides: tuple[Path, ...], out: Path, outputs: tuple[str, ...], **opts: Any) -> None:
    from wsi_ai.engine import EngineConfig
    from wsi_ai.engine.graph import run_slides

    if opts["sha256"] is not None and opts["random_init"]:
        raise click.UsageError(
            "--sha256 checks a weights file; --random-init uses none: give one of them"
        )
    as_json = opts.pop("as_json")
    scheduler = opts.pop("scheduler")
    overwrite = opts.pop("overwrite")
    tissue = not opts.pop("no_tissue")
    config = EngineConfig(
        model=opts["model"],
        weights=opts["weights"],
        random_init=opts["random_init"],
        sha256=opts["sha256"],
        device=opts["device"],
        batch_size=opts["batch_size"],
        mpp=opts["mpp"],
        size=opts["size"],
        min_tissue=opts["min_tissue"],
        tissue=tissue,
        outputs=outputs,
        precision=opts["precision"],
        compile=opts["compile"],
        read_threads=opts["read_threads"],
        slide_mpp=opts["slide_mpp"],
        decode=opts["decode"],
    )
    debug = bool(click.get_current_context().find_root().params.get("debug"))
    with whole_run_errors(), progress_bar("slides", enabled=not as_json) as update:
        results = run_slides(
            list(slides),
            out,
            config,
            scheduler=scheduler,
            overwrite=overwrite,
            progress=update,
            raise_errors=debug,
        )
    weights = _weights_label(config)
    for result in results:
        if result.error is not None:
            error_line(result.error)
        elif not as_json:
            rate = result.patches / result.seconds if result.seconds > 0 else 0.0
            click.echo(
                f"wrote {result.out}: {result.patches} patches, {', '.join(outputs)} "
                f"({opts['model']}, {weights}) in {result.seconds:.1f} s ({rate:.1f} patches/s)"
            )
    if as_json:
        rows = [r.as_dict() | {"random_init": config.random_init} for r in results]
        echo_json(rows)
    raise SystemExit(1 if any(r.error for r in results) else 0)


@click.command()
@SLIDES
@_engine_options
def embed(slides: tuple[Path, ...], out: Path, **opts: Any) -> None:
    """Embed every tissue patch of each slide with a model card's backbone.

    Writes OUT/<slide-stem>.zarr per slide: coords (level-0 x, y, width, height), float16
    embeddings [N, D], and attributes with the card's hash and every parameter. A slide
    that fails is reported on one line and the others still run (exit 1 at the end).

    \b
    Example:
      wsi-ai embed slides/*.svs --model uni --weights uni.bin -o features/
      wsi-ai embed CMU-1-Small-Region.svs --model resnet50 --random-init --mpp 2 -o smoke/
      wsi-ai embed slides/*.svs --model uni -o features/ --scheduler tcp://head:8786
    """
    _run(slides, out, ("embeddings",), **opts)


@click.command()
@SLIDES
@_engine_options
@click.option("--no-embeddings", is_flag=True, help="Store the scores only.")
def score(slides: tuple[Path, ...], out: Path, no_embeddings: bool, **opts: Any) -> None:
    """Score every tissue patch with a card that has a classifier head and classes.

    Writes OUT/<slide-stem>.zarr per slide: coords, float32 scores [N, classes] (the
    softmax of the card's head; class names in the attributes) and float16 embeddings
    (unless --no-embeddings). A card without classes is an error: use `embed`.

    \b
    Example:
      wsi-ai score slides/*.svs --model models/tumour-head.toml -o scores/
    """
    outputs = ("scores",) if no_embeddings else ("embeddings", "scores")
    _run(slides, out, outputs, **opts)
