"""``wsi-ai run``: a batch of slides through one pipeline file (parsing and printing only;
the work is :func:`wsi_ai.batch.run_batch`)."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from wsi_ai.cli.common import (
    INPUT_PATH,
    POSITIVE,
    echo_json,
    error_line,
    json_option,
    progress_bars,
    whole_run_errors,
)


def _overrides(opts: dict[str, Any]) -> list[str]:
    """The named flags as ``section.key=value`` overrides (paths made absolute here)."""
    out: list[str] = []

    def put(key: str, value: str) -> None:
        out.append(f"{key}={json.dumps(value)}")  # a TOML basic string

    if opts["model"]:
        model = opts["model"]
        is_path = model.endswith(".toml") or "/" in model
        put("model.card", str(Path(model).absolute()) if is_path else model)
    if opts["weights"]:
        put("model.weights", str(Path(opts["weights"]).absolute()))
    if opts["sha256"]:
        put("model.sha256", opts["sha256"])
    if opts["random_init"]:
        out.append("model.random_init=true")
    if opts["aggregator"]:
        put("aggregator.run", str(Path(opts["aggregator"]).absolute()))
    if opts["device"]:
        put("model.device", opts["device"])
        put("aggregator.device", opts["device"])
    return out


def _line(outcome: Any, out: Path) -> str:
    r = outcome.record
    found = [f"{r.get('patches', 0)} patches"]
    if "regions" in r:
        found.append(f"{r['regions']} region(s)")
    if r.get("prediction"):
        p = r["prediction"]
        found.append(f"{p['class']} (confidence {p['confidence']:.2f})")
    where = out / "slides" / outcome.input.name
    if outcome.status == "skipped":
        return f"skipped {where}: already complete for this input, pipeline and model"
    return f"wrote {where}: {', '.join(found)} in {outcome.seconds:.1f} s"


def _report(outcome: Any, out: Path, as_json: bool) -> None:
    """One slide's lines, printed as soon as it is settled."""
    if outcome.status == "failed":
        error_line(outcome.error or "")
        return
    if as_json:
        return
    click.echo(_line(outcome, out))
    for warning in outcome.record.get("warnings", []) if outcome.status == "done" else []:
        click.echo(f"warning: {outcome.input.name}: {warning}", err=True)


@click.command("run")
@click.argument("inputs", nargs=-1, required=True, type=INPUT_PATH)
@click.option(
    "-p",
    "--pipeline",
    "pipeline_file",
    required=True,
    type=INPUT_PATH,
    help="Pipeline file (TOML), e.g. pipelines/he-density.toml.",
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: slides/<name>/ per slide, summary.csv, errors.json, run.json, logs/.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a pipeline setting (TOML value), e.g. --set grid.mpp=1 --set stitch.blend=max.",
)
@click.option("-m", "--model", default=None, help="Model card name or .toml (sets model.card).")
@click.option("--weights", default=None, help="Weights file (sets model.weights).")
@click.option("--sha256", default=None, metavar="HEX", help="Expected sha256 of the weights.")
@click.option("--random-init", is_flag=True, help="Random backbone weights (benchmarks, smoke).")
@click.option("--aggregator", default=None, help="A `wsi-ai train` run folder (mil pipelines).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (models).")
@click.option(
    "--scheduler",
    default=None,
    help="threads (default: this process), processes:N, or a Dask cluster tcp://HOST:PORT.",
)
@click.option(
    "--slide-mpp",
    type=POSITIVE,
    default=None,
    help="Level-0 µm/px for slides whose file has none (never over the file's own).",
)
@click.option("--force", is_flag=True, help="Recompute slides that are already complete.")
@click.option(
    "--retry-failed", is_flag=True, help="Run again slides that failed in an earlier run."
)
@json_option
def run(
    inputs: tuple[Path, ...],
    pipeline_file: Path,
    out: Path,
    settings: tuple[str, ...],
    scheduler: str | None,
    slide_mpp: float | None,
    force: bool,
    retry_failed: bool,
    as_json: bool,
    **named: Any,
) -> None:
    """Run a pipeline over a batch of slides: resumable, one bad slide never stops the rest.

    INPUT is slide files, folders (searched recursively for slide files) or a manifest CSV
    (column path; optional label, slide_mpp; other columns are carried into summary.csv).
    Each slide's outputs appear in OUT/slides/<name>/ only when complete. A rerun skips the
    slides already complete for the same input file, pipeline settings and weights.

    Exit codes: 0 every slide done (or already complete), 1 a slide failed (listed in
    OUT/errors.json and summary.csv; the others still ran) or the batch could not start
    (bad pipeline file, locked or unwritable OUT), 2 usage error.

    \b
    Example:
      wsi-ai run slides/ --pipeline pipelines/he-density.toml -o results/
      wsi-ai run cohort.csv -p pipelines/features.toml --model uni --weights uni.bin -o feats/
      wsi-ai run slides/ -p pipelines/mil-slide.toml --aggregator runs/tumour -o results/ \\
          --scheduler tcp://head:8786
    """
    from wsi_ai.batch import run_batch
    from wsi_ai.engine.cluster import parse_scheduler
    from wsi_ai.inputs import collect_inputs
    from wsi_ai.pipeline_config import load_pipeline

    try:
        parse_scheduler(scheduler)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--scheduler") from err
    debug = bool(click.get_current_context().find_root().params.get("debug"))
    with whole_run_errors():
        pipeline = load_pipeline(pipeline_file, [*settings, *_overrides(named)])
        items = collect_inputs(inputs)
        if slide_mpp is not None:  # a fallback: never over a file's own MPP
            items = [replace(i, default_mpp=slide_mpp) for i in items]
        with progress_bars("slides", "patches", enabled=not as_json) as update:
            result = run_batch(
                items,
                pipeline,
                out,
                scheduler=scheduler,
                force=force,
                retry_failed=retry_failed,
                progress=update,
                report=functools.partial(_report, out=out, as_json=as_json),
                raise_errors=debug,
            )
    counts = result.run["counts"]
    if as_json:
        rows = [
            {
                "slide": o.input.name,
                "path": str(o.input.path),
                "status": o.status,
                "error": o.error,
                "record": o.record,
            }
            for o in result.outcomes
        ]
        echo_json({"out": str(out), "counts": counts, "slides": rows})
    else:
        click.echo(
            f"{out}: {counts['done']} done, {counts['skipped']} already complete, "
            f"{counts['failed']} failed (summary.csv, errors.json, run.json)"
        )
    raise SystemExit(1 if result.failed else 0)
