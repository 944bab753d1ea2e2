"""From patch scores to what a pathologist opens: ``score-he``, ``stitch``, ``annotations``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from wsi_ai.cli.common import (
    FRACTION,
    INPUT_PATH,
    POSITIVE,
    SLIDE,
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
from wsi_ai.outputs import atomic_output, check_output, prepare_outputs

if TYPE_CHECKING:
    from wsi_ai.export.maps import MapOptions

GEOJSON_SUFFIXES = (".geojson", ".geojson.gz", ".json", ".json.gz")


def _warn(message: str) -> None:
    click.echo(f"warning: {' '.join(message.split())}", err=True)


def _no_region_because(result: dict[str, Any], options: MapOptions) -> str:
    """What a region had to pass, for the warning about an empty regions file."""
    columns = result["columns"]
    if len(columns) == 1:
        otsu = " (Otsu)" if options.threshold is None else ""
        why = f"threshold {result['threshold']:g}{otsu} on {columns[0]!r}"
    else:
        shown = ", ".join(repr(c) for c in columns if c not in options.ignore_classes)
        why = f"per-class argmax of {shown}"
        if options.min_score is not None:
            why += f", min score {options.min_score:g}"
    if options.min_area_um2 > 0:
        why += f", regions under {options.min_area_um2:g} µm² dropped"
    return why


def allow_other_slide_option(func: Any) -> Any:
    return click.option(
        "--allow-other-slide",
        is_flag=True,
        help="Use a table made on another slide (name, size or fingerprint differ); a warning.",
    )(func)


def _forget_empty_folder(path: Path) -> None:
    """An empty folder made beforehand (``mkdir maps``) holds nothing to protect: it is
    removed, so the folder written in its place needs no ``--overwrite``."""
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()


@click.command("score-he")
@SLIDE
@out_option("scores.csv/.parquet")
@click.option(
    "--patches",
    type=INPUT_PATH,
    default=None,
    help="Score this patch table instead of making a grid.",
)
@grid_options(help_prefix="Grid: ")
@click.option(
    "--read-mpp",
    type=POSITIVE,
    default=None,
    help="Read patches at this coarser µm/px (faster on big slides); default: the grid's.",
)
@click.option("--tissue-only", is_flag=True, help="Average over tissue pixels, not all pixels.")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True)
@allow_other_slide_option
@slide_mpp_option
@overwrite_option
@json_option
def score_he(
    slide: Path,
    out: Path,
    patches: Path | None,
    mpp: float,
    size: int,
    overlap: int,
    min_tissue: float,
    no_tissue: bool,
    read_mpp: float | None,
    tissue_only: bool,
    workers: int,
    allow_other_slide: bool,
    slide_mpp: float | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Score every patch by its mean hematoxylin density: a real H&E score with no model.

    Colour deconvolution (scikit-image's rgb2hed) per patch; nuclei-dense tissue scores high,
    stroma and glass low. Writes the patch table plus a "hematoxylin" column, and the slide's
    name, dimensions and fingerprint in its metadata. A --patches table made on another slide,
    or with patches outside this one, is refused.

    \b
    Example:
      wsi-ai score-he CMU-1-Small-Region.svs -o scores.csv
      wsi-ai score-he slide.svs --patches grid.parquet --read-mpp 2 -o scores.parquet
    """
    if overlap >= size:
        raise click.BadParameter(
            f"{overlap} must be smaller than --size ({size})", param_hint="--overlap"
        )
    from wsi_ai.score.he import COLUMN, score_to_table
    from wsi_ai.store import read_table, table_format
    from wsi_ai.store.scores import check_for_slide
    from wsi_ai.tiling import GridConfig, plan_patches
    from wsi_ai.tissue import TissueConfig

    def one(path: Path) -> None:
        table_format(out)
        check_output(out, overwrite)
        with open_for_cli(path, slide_mpp) as s:
            if patches is not None:
                table, meta = read_table(patches)
                if len(table) == 0:
                    raise InvalidInputError(
                        "the patch table has no rows: nothing to score", patches
                    )
                check_for_slide(
                    table,
                    meta,
                    s,
                    patches,
                    allow_other=allow_other_slide,
                    what="patches",
                    warn=_warn,
                )
            else:
                made = plan_patches(
                    s,
                    TissueConfig(enabled=not no_tissue),
                    GridConfig(mpp=mpp, size=size, overlap=overlap, min_tissue=min_tissue),
                )
                table, meta = made.table, made.spec.as_dict()
            with progress_bar("score-he") as update:
                scored = score_to_table(
                    s,
                    table,
                    meta,
                    out,
                    mpp=read_mpp,
                    tissue_only=tissue_only,
                    workers=workers,
                    progress=update,
                    overwrite=overwrite,
                )
        values = scored[COLUMN]
        summary = {
            "slide": str(path),
            "out": str(out),
            "patches": len(scored),
            "mean": float(values.mean()),
            "min": float(values.min()),
            "max": float(values.max()),
        }
        if as_json:
            echo_json(summary)
        else:
            click.echo(
                f"wrote {out}: {len(scored)} patches, hematoxylin {summary['min']:.3g} to "
                f"{summary['max']:.3g} (mean {summary['mean']:.3g})"
            )

    raise SystemExit(run_each([slide], one))


@click.command()
@click.argument("scores", type=INPUT_PATH)
@click.option("--slide", required=True, type=INPUT_PATH, help="The scored slide.")
@out_option("OUTDIR")
@click.option(
    "--column",
    "columns",
    multiple=True,
    help=(
        "Score column(s); default all (a prediction's attention only when named). "
        "One: threshold regions; several: per-class argmax."
    ),
)
@click.option(
    "--downsample",
    type=POSITIVE,
    default=None,
    help="Level-0 px per heatmap px [default: a quarter of the median patch width].",
)
@click.option(
    "--blend",
    type=click.Choice(["mean", "max", "gaussian"]),
    default="mean",
    show_default=True,
    help="How overlapping patches combine.",
)
@click.option(
    "--threshold",
    default="otsu",
    show_default=True,
    help="Region threshold (one column): a number or 'otsu' (split of the patch scores).",
)
@click.option(
    "--min-score",
    type=float,
    default=None,
    help="Argmax regions: the winning class's score must reach this.",
)
@click.option("--ignore-class", multiple=True, help="Argmax regions: give no region to this class.")
@click.option(
    "--min-area",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Drop regions (and fill holes) smaller than this, µm².",
)
@click.option("--merge", is_flag=True, help="One MultiPolygon annotation per class.")
@click.option("--tiles", is_flag=True, help="Also write tiles.geojson: one QuPath tile per patch.")
@click.option("--gz", is_flag=True, help="Write GeoJSON as .geojson.gz (QuPath reads it).")
@ngff_option(help_prefix="heatmap.ome.zarr: ")
@click.option(
    "--thumbnail-size",
    type=click.IntRange(64, 8192),
    default=1024,
    show_default=True,
    help="Longer side of the PNGs, px.",
)
@click.option(
    "--alpha",
    type=FRACTION,
    default=0.5,
    show_default=True,
    help="Opacity of the heatmap in overlay.png.",
)
@click.option(
    "--cmap",
    type=click.Choice(["viridis", "magma"]),
    default="viridis",
    show_default=True,
    help="Colormap of the PNGs.",
)
@allow_other_slide_option
@slide_mpp_option
@overwrite_option
@json_option
def stitch(
    scores: Path,
    slide: Path,
    out: Path,
    columns: tuple[str, ...],
    downsample: float | None,
    blend: str,
    threshold: str,
    min_score: float | None,
    ignore_class: tuple[str, ...],
    min_area: float,
    merge: bool,
    tiles: bool,
    gz: bool,
    ngff: str,
    thumbnail_size: int,
    alpha: float,
    cmap: str,
    allow_other_slide: bool,
    slide_mpp: float | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Stitch patch scores into a heatmap; write PNG, overlay, regions GeoJSON and OME-Zarr.

    SCORES is a patch table (x, y, width, height in level-0 px plus score columns; CSV,
    Parquet or Zarr) or a features store (OUT/<slide>.zarr). OUTDIR receives heatmap.png
    (thumbnail size, transparent where no patch), overlay.png (on the slide thumbnail, with
    a colorbar), regions.geojson (QuPath annotations with area, mean and max score) and
    heatmap.ome.zarr (in the slide's µm coordinates). PNGs show the first column that is not
    an --ignore-class. OUTDIR appears whole when complete; an existing one is replaced only
    with --overwrite. Scores made on another slide than --slide (their metadata names it),
    or with patches outside it, are refused.

    \b
    Example:
      wsi-ai score-he CMU-1-Small-Region.svs -o scores.csv
      wsi-ai stitch scores.csv --slide CMU-1-Small-Region.svs -o heatmap/
      wsi-ai stitch out/slide.zarr --slide slide.svs -o maps/ --min-score 0.5 --tiles --gz
    """
    try:
        fixed = None if threshold.strip().lower() == "otsu" else float(threshold)
    except ValueError:
        raise click.BadParameter(
            f"{threshold!r} is not a number or 'otsu'", param_hint="--threshold"
        ) from None
    from wsi_ai.export.maps import MapOptions, output_paths, write_maps
    from wsi_ai.store import load_scores, score_columns
    from wsi_ai.store.scores import check_for_slide

    options = MapOptions(
        downsample=downsample,
        blend=blend,  # type: ignore[arg-type]
        threshold=fixed,
        min_score=min_score,
        ignore_classes=ignore_class,
        min_area_um2=min_area,
        merge=merge,
        tiles=tiles,
        gzip=gz,
        ngff=ngff,  # type: ignore[arg-type]
        thumbnail_size=thumbnail_size,
        alpha=alpha,
        cmap=cmap,
    )
    paths = output_paths(out, options)

    def one(source: Path) -> None:
        table, meta = load_scores(source)
        names = score_columns(table, columns, source)
        with open_for_cli(slide, slide_mpp) as s:
            check_for_slide(table, meta, s, source, allow_other=allow_other_slide, warn=_warn)
            finite = np.isfinite(table[names].to_numpy(np.float64)).all(axis=1)
            if not finite.all():
                _warn(f"{source}: {int((~finite).sum())} patch(es) with NaN scores left out")
                table = table[finite].reset_index(drop=True)
            if len(table) == 0:
                raise InvalidInputError("no patch with a finite score to stitch", source)
            _forget_empty_folder(out)
            with atomic_output(out, overwrite) as tmp:
                result = write_maps(s, table, names, tmp, options, source=source)
        result["outputs"] = {k: str(v) for k, v in paths.items()}  # where they are now
        if result["repaired"] or result["dropped"]:
            _warn(
                f"{paths['regions']}: {result['repaired']} polygon(s) repaired, "
                f"{result['dropped']} dropped"
            )
        result["empty"] = result["regions"] == 0  # a legitimate result, but never a silent one
        if result["empty"]:
            _warn(
                f"{paths['regions']}: no region above the threshold "
                f'({_no_region_because(result, options)}): QuPath will say "No objects found"'
            )
        if as_json:
            echo_json(result)
        else:
            click.echo(
                f"wrote {out}: {', '.join(p.name for p in paths.values())} "
                f"({result['regions']} region(s), {result['canvas'][1]} x {result['canvas'][0]} "
                f"px heatmap at downsample {result['downsample']:g})"
            )

    raise SystemExit(run_each([scores], one))


@click.group("annotations")
def annotations_group() -> None:
    """Annotation files: convert between QuPath GeoJSON and ASAP XML.

    \b
    Example:
      wsi-ai annotations convert lesions.xml -o lesions.geojson --slide tumor_009.tif
    """


def _read_annotations(path: Path) -> tuple[list[Any], Any]:
    from wsi_ai.annotations import ImportReport, read_asap_xml, read_qupath_geojson

    report = ImportReport()
    name = path.name.lower()
    with warnings.catch_warnings():  # the report is printed on one line below instead
        warnings.simplefilter("ignore")
        if name.endswith(".xml"):
            return read_asap_xml(path, report=report), report
        if name.endswith(GEOJSON_SUFFIXES):
            return read_qupath_geojson(path, report=report), report
    raise InvalidInputError(
        "unknown annotation format; expected .geojson, .json (optionally .gz) or ASAP .xml", path
    )


def outside_slide(items: list[Any], size: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Indices of annotations wholly outside and partly outside a level-0 ``(w, h)`` slide."""
    import shapely
    from shapely.geometry import box

    frame = box(0, 0, float(size[0]), float(size[1]))
    geoms = np.array([a.geometry for a in items], dtype=object)
    if not len(geoms):
        return [], []
    outside = ~shapely.intersects(frame, geoms)
    partly = ~outside & ~shapely.covers(frame, geoms)
    return np.flatnonzero(outside).tolist(), np.flatnonzero(partly).tolist()


@annotations_group.command("convert")
@click.argument("source", metavar="IN", type=INPUT_PATH)
@out_option("OUT.geojson[.gz] or .xml")
@click.option(
    "--slide",
    type=INPUT_PATH,
    default=None,
    help="Report annotations that lie outside this slide.",
)
@overwrite_option
@json_option
def convert_annotations(
    source: Path, out: Path, slide: Path | None, overwrite: bool, as_json: bool
) -> None:
    """Convert annotations between QuPath GeoJSON and ASAP XML (level-0 px both ways).

    Invalid polygons are repaired and counted; with --slide, annotations outside the slide
    are reported (and still written).

    \b
    Example:
      wsi-ai annotations convert tumor_009.xml -o tumor_009.geojson
      wsi-ai annotations convert export.geojson -o export.xml --slide slide.svs
    """
    from wsi_ai.annotations import write_asap_xml
    from wsi_ai.export.geojson import write_geojson

    def one(path: Path) -> None:
        lowered = out.name.lower()
        if not lowered.endswith((*GEOJSON_SUFFIXES, ".xml")):
            raise InvalidInputError("name the output *.geojson, *.geojson.gz or *.xml", out)
        prepare_outputs([out], overwrite)  # before anything is read
        items, report = _read_annotations(path)
        summary: dict[str, Any] = {"in": str(path), "out": str(out), "read": len(items)}
        summary.update(repaired=report.repaired, dropped=report.dropped, skipped=report.skipped)
        if report.repaired or report.dropped:
            _warn(
                f"{path}: repaired {report.repaired} invalid polygon(s), dropped {report.dropped}"
            )
        if slide is not None:
            with open_for_cli(slide, None) as s:
                size = s.dimensions
            outside, partly = outside_slide(items, size)
            summary.update(outside_slide=outside, partly_outside_slide=partly)
            if outside or partly:
                names = [items[i].name or f"#{i}" for i in outside[:5]]
                _warn(
                    f"{path}: {len(outside)} annotation(s) outside the {size[0]} x {size[1]} px "
                    f"slide {slide.name}{' (' + ', '.join(names) + ')' if names else ''}, "
                    f"{len(partly)} partly outside"
                )
        if lowered.endswith(".xml"):
            written = write_asap_xml(items, out, overwrite=overwrite).written
        else:
            provenance = {"source": path.name, "source_size_bytes": path.stat().st_size}
            if slide is not None:
                provenance.update(slide=slide.name, slide_size_bytes=slide.stat().st_size)
            written = write_geojson(out, items, provenance=provenance, overwrite=overwrite).written
        summary["written"] = written
        if as_json:
            echo_json(summary)
        else:
            click.echo(f"wrote {out}: {written} object(s) from {len(items)} read")

    raise SystemExit(run_each([source], one))
