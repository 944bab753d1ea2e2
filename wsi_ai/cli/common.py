"""What every command shares: options, one-line errors, per-input failure handling.

Exit codes (DESIGN.md): 0 when every input was done, 1 when any input failed (each
failure reported on one line, the other inputs still processed), 2 for usage errors
(click's own). A traceback is a bug; ``--debug`` shows one for bug reports.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from wsi_ai.errors import WsiAiError, failure_message
from wsi_ai.slide import Slide, open_slide

T = TypeVar("T")


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf (which every comparison lets through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = FiniteFloat(min=0, min_open=True)
FRACTION = FiniteFloat(0, 1)
# Inputs are checked per input (a missing or unreadable slide is exit 1, not a usage error).
INPUT_PATH = click.Path(path_type=Path, readable=False)
SLIDE = click.argument("slide", type=INPUT_PATH)
SLIDES = click.argument("slides", nargs=-1, required=True, type=INPUT_PATH)
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("wsi_ai")


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}".replace("\n", " ")


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    # tifffile logs every oddity of a damaged file; our own error says it once.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    # zarr's event loop reports tasks abandoned by a failed read; our error says it once.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)


def error_line(message: str) -> None:
    click.echo(f"error: {' '.join(str(message).split())}", err=True)


def run_each(
    items: Iterable[T],
    work: Callable[[T], None],
    label: Callable[[T], str] = str,
    on_error: Callable[[T, str], None] | None = None,
) -> int:
    """Run ``work`` on every item; report each failure on one line; return the exit code."""
    debug = bool(click.get_current_context().find_root().params.get("debug"))
    failed = 0
    for item in items:
        try:
            work(item)
        except (KeyboardInterrupt, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            if debug:
                raise
            failed += 1
            message = failure_message(label(item), err)
            error_line(message)
            if on_error is not None:
                on_error(item, message)
    return 1 if failed else 0


def open_for_cli(path: Path, slide_mpp: float | None, backend: str = "auto") -> Slide:
    return open_slide(path, backend=backend, mpp_override=slide_mpp)


def apply_options(func: F, *options: Callable[[Any], Any]) -> F:
    """Apply ``options`` to ``func`` as if stacked over it in this order (the first on top)."""
    for option in reversed(options):
        func = option(func)
    return func


def _lead(prefix: str, text: str) -> str:
    """``text`` after ``prefix`` ("Grid: "), its first letter lowered; ``text`` with none."""
    return f"{prefix}{text[:1].lower()}{text[1:]}" if prefix else text


def out_option(help_text: str) -> Callable[[F], F]:
    """``-o/--out``, required; like the inputs, it is checked per input, not by click."""

    def apply(func: F) -> F:
        return click.option("-o", "--out", required=True, type=INPUT_PATH, help=help_text)(func)

    return apply


def tissue_filter_options(help_prefix: str = "") -> Callable[[F], F]:
    """``--min-tissue`` and ``--no-tissue``: which patches count as tissue."""

    def apply(func: F) -> F:
        return apply_options(
            func,
            click.option(
                "--min-tissue",
                type=FRACTION,
                default=0.5,
                show_default=True,
                help=_lead(help_prefix, "Drop patches with a smaller tissue fraction."),
            ),
            click.option(
                "--no-tissue",
                is_flag=True,
                help=_lead(help_prefix, "Keep every patch; skip tissue detection."),
            ),
        )

    return apply


def grid_options(help_prefix: str = "") -> Callable[[F], F]:
    """The patch grid: ``--mpp``, ``--size``, ``--overlap``, ``--min-tissue``, ``--no-tissue``.

    ``help_prefix`` ("Grid: ") marks them in commands where the grid is one source of patches.
    """

    def apply(func: F) -> F:
        return apply_options(
            func,
            click.option(
                "--mpp",
                type=POSITIVE,
                default=0.5,
                show_default=True,
                help=_lead(help_prefix, "Target resolution of the patches (µm/px)."),
            ),
            click.option(
                "--size",
                type=click.IntRange(min=1),
                default=224,
                show_default=True,
                help=_lead(help_prefix, "Patch side in target pixels."),
            ),
            click.option(
                "--overlap",
                type=click.IntRange(min=0),
                default=0,
                show_default=True,
                help=_lead(help_prefix, "Target pixels shared by neighbouring patches."),
            ),
            tissue_filter_options(help_prefix),
        )

    return apply


def ngff_option(help_prefix: str = "") -> Callable[[F], F]:
    """``--ngff``: the OME-Zarr version written (``help_prefix`` names the store)."""

    def apply(func: F) -> F:
        return click.option(
            "--ngff",
            type=click.Choice(["0.4", "0.5"]),
            default="0.4",
            show_default=True,
            help=_lead(
                help_prefix,
                "0.4 writes Zarr v2 (what QuPath's Bio-Formats opens); 0.5 writes Zarr v3.",
            ),
        )(func)

    return apply


def slide_mpp_option(func: F) -> F:
    return click.option(
        "--slide-mpp",
        type=POSITIVE,
        default=None,
        help="The slide's own level-0 µm/px, for files that lack it (wins over the metadata).",
    )(func)


def overwrite_option(func: F) -> F:
    return click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")(
        func
    )


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout."
    )(func)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def progress_bars(*names: str, enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Rich progress bars on stderr, one per name (a terminal only); yields
    ``update(name, done, total)``."""
    if not enabled or not sys.stderr.isatty():
        yield lambda name, done, total: None
        return
    width = max(len(n) for n in names)
    columns = (
        TextColumn(f"[bold]{{task.description:>{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        tasks = {name: bar.add_task(name, total=None) for name in names}

        def update(name: str, done: int, total: int) -> None:
            bar.update(tasks[name], completed=done, total=total)

        yield update


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields ``update(done, total)``."""
    with progress_bars(description, enabled=enabled) as update:
        yield lambda done, total: update(description, done, total)


@contextmanager
def whole_run_errors() -> Iterator[None]:
    """A failure of the whole run (not of one input): one line and exit 1 (``--debug``:
    the traceback)."""
    try:
        yield
    except WsiAiError as err:
        if click.get_current_context().find_root().params.get("debug"):
            raise
        error_line(str(err))
        raise SystemExit(1) from err
