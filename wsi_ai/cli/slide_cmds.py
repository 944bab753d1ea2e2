"""Slide commands: ``info``, ``convert``, ``tissue`` and ``tiles``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from wsi_ai import __version__
from wsi_ai.cli.common import (
    INPUT_PATH,
    POSITIVE,
    SLIDE,
    SLIDES,
    echo_json,
    grid_options,
    json_option,
    ngff_option,
    open_for_cli,
    out_option,
    overwrite_option,
    progress_bar,
    run_each,
    slide_mpp_option,
)
from wsi_ai.errors import InvalidInputError
from wsi_ai.outputs import output_unit, prepare_outputs

if TYPE_CHECKING:
    from wsi_ai.export.ome_zarr import NgffVersion
    from wsi_ai.tiling.grid import EdgeMode

log = logging.getLogger(__name__)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _provenance(slide_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "wsi_ai_version": __version__,
        "slide": slide_path.name,
        "slide_size_bytes": slide_path.stat().st_size,
        "parameters": params,
    }


@click.command()
@SLIDES
@slide_mpp_option
@json_option
def info(slides: tuple[Path, ...], slide_mpp: float | None, as_json: bool) -> None:
    """Print one row of metadata per slide: vendor, size, levels, MPP, modality.

    Label and macro images are named, never shown.

    \b
    Example:
      wsi-ai info slides/*.svs
      wsi-ai info CMU-1-Small-Region.svs --json
    """
    rows: list[dict[str, Any]] = []

    def one(path: Path) -> None:
        with open_for_cli(path, slide_mpp) as slide:
            rows.append(slide.info())

    code = run_each(
        slides, one, on_error=lambda p, msg: rows.append({"path": str(p), "error": msg})
    )
    if as_json:
        echo_json(rows)
    else:
        _print_info_table(rows)
    raise SystemExit(code)


def _print_info_table(rows: list[dict[str, Any]]) -> None:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return
    table = Table(show_edge=False, header_style="bold")
    for column in (
        "file",
        "vendor",
        "size (px)",
        "levels",
        "MPP",
        "mag",
        "modality",
        "associated",
        "file size",
    ):
        table.add_column(column, no_wrap=column in ("file", "size (px)"))
    for r in ok:
        mpp = "none" if r["mpp_x"] is None else f"{r['mpp_x']:.4g} ({r['mpp_source']})"
        mag = "-" if r["objective_power"] is None else f"{r['objective_power']:g}x"
        table.add_row(
            r["file"],
            r["vendor"],
            f"{r['width']} x {r['height']}",
            str(len(r["levels"])),
            mpp,
            mag,
            r["modality"],
            ", ".join(r["associated_images"]) or "-",
            _human_size(r["file_size"]),
        )
    Console(width=160).print(table)


@click.command()
@SLIDE
@out_option("OUT.ome.zarr")
@ngff_option()
@click.option("--include-associated", is_flag=True, help="Also copy label/macro images.")
@click.option("--chunk", type=click.IntRange(64, 4096), default=512, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@slide_mpp_option
@overwrite_option
def convert(
    slide: Path,
    out: Path,
    ngff: str,
    include_associated: bool,
    chunk: int,
    workers: int,
    slide_mpp: float | None,
    overwrite: bool,
) -> None:
    """Write the slide as an OME-Zarr pyramid (axes c, y, x; scales in µm).

    Streams chunk by chunk with Dask in bounded memory; the store appears under its
    name only when complete.

    \b
    Example:
      wsi-ai convert CMU-1-Small-Region.svs -o cmu.ome.zarr
      wsi-ai convert slide.ndpi -o slide.ome.zarr --ngff 0.5 --include-associated
    """
    from wsi_ai.export.ome_zarr import convert_slide

    if not out.name.lower().endswith(".zarr"):
        raise click.BadParameter("name the store *.ome.zarr (or *.zarr)", param_hint="-o/--out")

    def one(path: Path) -> None:
        prepare_outputs([out], overwrite)
        with open_for_cli(path, slide_mpp) as s, progress_bar("convert") as update:
            convert_slide(
                s,
                out,
                ngff=cast("NgffVersion", ngff),
                include_associated=include_associated,
                overwrite=overwrite,
                chunk=chunk,
                num_workers=workers,
                progress=update,
            )
        click.echo(f"wrote {out}")

    raise SystemExit(run_each([slide], one))


@click.command()
@SLIDE
@out_option("tissue.geojson (QuPath annotations; .geojson.gz also works)")
@click.option(
    "--mask",
    "mask_png",
    type=INPUT_PATH,
    default=None,
    help="Also write the raster mask as a PNG.",
)
@click.option(
    "--target-mpp",
    type=POSITIVE,
    default=8.0,
    show_default=True,
    help="Resolution the mask is computed at (µm/px).",
)
@slide_mpp_option
@overwrite_option
@json_option
def tissue(
    slide: Path,
    out: Path,
    mask_png: Path | None,
    target_mpp: float,
    slide_mpp: float | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Find the tissue and export it as QuPath annotations (class "Tissue").

    The GeoJSON and the --mask PNG are one output: both are checked before the slide is
    read, and the GeoJSON appears last, so a GeoJSON means its mask beside it is its own.

    \b
    Example:
      wsi-ai tissue CMU-1-Small-Region.svs -o tissue.geojson --mask tissue.png
    """
    from wsi_ai.export.geojson import write_geojson
    from wsi_ai.tiling.preview import save_png
    from wsi_ai.tissue import detect_tissue

    ctx = click.get_current_context()
    target_given = ctx.get_parameter_source("target_mpp") is not ParameterSource.DEFAULT

    def one(path: Path) -> None:
        prepare_outputs([out, mask_png], overwrite)
        with open_for_cli(path, slide_mpp) as s:
            if s.mpp is None and target_given:
                log.warning(
                    "%s: no MPP, so --target-mpp cannot apply; the mask is computed at about "
                    "2,048 px (pass --slide-mpp to use --target-mpp)",
                    path.name,
                )
            found = detect_tissue(s, target_mpp=target_mpp)
            params = {"target_mpp": target_mpp, "level": found.level, "modality": found.modality}
            with output_unit([mask_png, out], overwrite):  # the GeoJSON renamed last
                report = write_geojson(
                    out,
                    found.to_annotations(mpp=None if s.mpp is None else s.mpp.mean),
                    provenance=_provenance(path, params),
                    overwrite=overwrite,
                )
                if mask_png is not None:
                    save_png(found.mask.astype("uint8") * 255, mask_png, overwrite=overwrite)
        summary = {
            "slide": str(path),
            "out": str(out),
            "regions": report.written,
            "repaired": report.repaired,
            "dropped": report.dropped,
            "modality": found.modality,
            "tissue_fraction": round(float(found.mask.mean()), 4),
            "empty": report.empty,
        }
        if report.warnings:
            click.echo(
                f"warning: {report.repaired} polygon(s) repaired, {report.dropped} dropped",
                err=True,
            )
        if report.empty:  # a legitimate result (blank glass), but never a silent one
            click.echo(
                f"warning: {out}: no tissue region found in {path.name} ({found.modality}): "
                'QuPath will say "No objects found"',
                err=True,
            )
        if as_json:
            echo_json(summary)
        else:
            click.echo(
                f"wrote {out}: {report.written} tissue region(s), "
                f"{summary['tissue_fraction']:.1%} of the slide ({found.modality})"
            )

    raise SystemExit(run_each([slide], one))


@click.command()
@SLIDE
@out_option("grid.csv, grid.parquet or grid.zarr")
@grid_options()
@click.option(
    "--edge",
    type=click.Choice(["inside", "pad"]),
    default="inside",
    show_default=True,
    help="inside: whole patches only; pad: add partial edge patches (white outside).",
)
@click.option(
    "--preview",
    type=INPUT_PATH,
    default=None,
    help="Draw the grid over the thumbnail into this PNG.",
)
@slide_mpp_option
@overwrite_option
@json_option
def tiles(
    slide: Path,
    out: Path,
    mpp: float,
    size: int,
    overlap: int,
    min_tissue: float,
    no_tissue: bool,
    edge: str,
    preview: Path | None,
    slide_mpp: float | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Write the patch table: one row per patch (x, y, width, height in level-0 px).

    Columns: x, y, width, height, level (the level to read), tissue_fraction. The metadata
    (Parquet/Zarr, or grid.csv.json beside a CSV) keeps the grid's parameters and the slide's
    name, dimensions and fingerprint, which later stages check.

    \b
    Example:
      wsi-ai tiles CMU-1-Small-Region.svs --mpp 0.5 --size 224 -o grid.csv --preview grid.png
    """
    from wsi_ai.slide.identity import IDENTITY_KEY, slide_identity
    from wsi_ai.store import table_format, write_table
    from wsi_ai.tiling import GridConfig, plan_patches
    from wsi_ai.tiling.preview import draw_grid, save_png
    from wsi_ai.tissue import TissueConfig

    if overlap >= size:
        raise click.BadParameter(f"must be smaller than --size ({size})", param_hint="--overlap")
    try:
        table_format(out)
    except InvalidInputError as err:
        raise click.BadParameter(err.reason, param_hint="-o/--out") from err
    plan = GridConfig(
        mpp=mpp,
        size=size,
        overlap=overlap,
        min_tissue=min_tissue,
        edge=cast("EdgeMode", edge),
    )

    def one(path: Path) -> None:
        prepare_outputs([out, preview], overwrite)
        with open_for_cli(path, slide_mpp) as s:
            patches = plan_patches(s, TissueConfig(enabled=not no_tissue), plan)
            meta = {**patches.spec.as_dict(), IDENTITY_KEY: slide_identity(s)}
            write_table(patches.table, out, meta=meta, overwrite=overwrite)
            if preview is not None:
                save_png(draw_grid(s, patches), preview, overwrite=overwrite)
        spec = patches.spec
        if as_json:
            echo_json(
                {"slide": str(path), "out": str(out), "patches": len(patches), **spec.as_dict()}
            )
        else:
            click.echo(
                f"wrote {out}: {len(patches)} patches of {size} px at {mpp:g} µm/px "
                f"(read {spec.read_size} px from level {spec.level})"
            )

    raise SystemExit(run_each([slide], one))
