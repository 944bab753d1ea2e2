"""The ``wsi-ai`` command line (click). Commands live in one module per stage."""

from __future__ import annotations

import click

from wsi_ai import __version__
from wsi_ai.cli.anonymize_cmd import anonymize
from wsi_ai.cli.bench_cmd import bench
from wsi_ai.cli.common import setup_logging
from wsi_ai.cli.engine_cmds import embed, score
from wsi_ai.cli.model_cmds import models
from wsi_ai.cli.review_cmds import export_qupath
from wsi_ai.cli.run_cmds import run
from wsi_ai.cli.slide_cmds import convert, info, tiles, tissue
from wsi_ai.cli.stitch_cmds import annotations_group, score_he, stitch
from wsi_ai.cli.train_cmds import predict, train


class _Main(click.Group):
    """The command group: Ctrl-C ends any command with exit code 130 and one line."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted: outputs in progress were not kept", err=True)
            raise SystemExit(130) from None


@click.group(
    cls=_Main,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="wsi-ai")
@click.option("-v", "--verbose", is_flag=True, help="Also print progress notes (log level INFO).")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(verbose: bool, debug: bool) -> None:
    """wsi-ai: whole-slide images in, tissue, patch grids and QuPath-ready outputs out.

    Exit codes: 0 every input done, 1 an input failed (each reported on one line, the
    others still processed), 2 usage error.

    \b
    Example:
      wsi-ai run slides/ --pipeline pipelines/he-density.toml -o results/
      wsi-ai info slide.svs
      wsi-ai tissue slide.svs -o tissue.geojson
      wsi-ai tiles slide.svs --mpp 0.5 --size 224 -o grid.csv --preview grid.png
      wsi-ai convert slide.svs -o slide.ome.zarr
    """
    setup_logging(verbose)


for command in (
    run,
    export_qupath,
    anonymize,
    info,
    convert,
    tissue,
    tiles,
    score_he,
    stitch,
    annotations_group,
    models,
    embed,
    score,
    train,
    predict,
    bench,
):
    main.add_command(command)

__all__ = ["main"]
