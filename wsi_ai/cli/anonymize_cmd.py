"""``wsi-ai anonymize``: a copy of a slide to share, without label, macro or identifying data."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_ai.cli.common import SLIDE, echo_json, json_option, out_option, overwrite_option, run_each


@click.command()
@SLIDE
@out_option("The anonymized copy (a new TIFF file; keep the .svs suffix for an SVS).")
@overwrite_option
@json_option
def anonymize(slide: Path, out: Path, overwrite: bool, as_json: bool) -> None:
    """Write a copy of an Aperio SVS or generic TIFF slide that identifies no one.

    The copy has the same pyramid, tile for tile (compressed tiles are copied, never
    re-encoded), without the label and macro images, without the scanner's identifying
    fields (Aperio Filename, Date, Time, User, barcode, ScanScope ID...) and without TIFF
    tags such as DateTime, Artist, HostComputer or DocumentName. Other formats are refused.
    The slide itself is not changed; an existing output is kept unless --overwrite.

    \b
    Example:
      wsi-ai anonymize CMU-1-Small-Region.svs -o share/case-001.svs
    """
    from wsi_ai.slide.anonymize import anonymize_slide

    def one(path: Path) -> None:
        report = anonymize_slide(path, out, overwrite=overwrite)
        if as_json:
            echo_json(
                {
                    "slide": str(report.source),
                    "out": str(report.out),
                    "format": report.format,
                    "pages": report.pages,
                    "copied_segments": report.copied_segments,
                    "dropped_images": list(report.dropped_images),
                    "removed": list(report.removed),
                }
            )
            return
        dropped = ", ".join(report.dropped_images) or "no label or macro"
        click.echo(
            f"wrote {out}: {report.pages} image page(s), {report.copied_segments} tiles/strips "
            f"copied unchanged; left out {dropped} and {len(report.removed)} identifying "
            "properties"
        )

    raise SystemExit(run_each([slide], one))
