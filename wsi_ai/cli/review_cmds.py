"""Review commands: ``export-qupath`` (a run's slides and objects as a QuPath project)."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_ai.cli.common import (
    INPUT_PATH,
    echo_json,
    json_option,
    out_option,
    overwrite_option,
    run_each,
)


@click.command("export-qupath")
@click.argument("run_dir", metavar="OUT", type=INPUT_PATH)
@out_option("PROJECTDIR: the QuPath project folder to write (project.qpproj, scripts/, wsi-ai/).")
@overwrite_option
@json_option
def export_qupath(run_dir: Path, out: Path, overwrite: bool, as_json: bool) -> None:
    """Write a QuPath project (0.5-0.7) of the finished slides of a `wsi-ai run` folder OUT.

    Each finished slide becomes a project image, opened by OpenSlide where OpenSlide read it
    and by Bio-Formats otherwise; its GeoJSON files are copied into PROJECTDIR/wsi-ai/<slide>/
    (the project is self-contained) and the project script import-wsi-ai-geojson imports them:
    in QuPath, File > Project... > Open project, then Automate > Project scripts... >
    import-wsi-ai-geojson and, in the Script editor, Run > Run for project. Rerunning the script
    adds nothing twice. A slide no longer at its path is kept with a warning (QuPath offers to
    find it). --overwrite replaces the whole project folder, with what QuPath saved in it.

    \b
    Example:
      wsi-ai run slides/ -p pipelines/he-density.toml -o results/
      wsi-ai export-qupath results/ -o results-qupath/
    """
    from wsi_ai.export.qupath_project import MENU_PATH, write_project

    def one(path: Path) -> None:
        report = write_project(path, out, overwrite=overwrite)
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
        if as_json:
            echo_json(report.as_dict())
        else:
            click.echo(
                f"wrote {out}: {len(report.entries)} slide(s), {report.geojson_files} GeoJSON "
                f"file(s); in QuPath: {MENU_PATH}"
            )

    raise SystemExit(run_each([run_dir], one))
