"""Writing outputs safely: never over an existing one unasked, never half-written.

Every output is written under a temporary sibling name (``.<name>.tmp-<8 hex>``) and
renamed into place when it is complete (DESIGN.md), so a crash leaves no result that looks
finished. A file replaces the old one in one rename; a folder is moved aside first
(``.<name>.old-<8 hex>``) and removed once the new one is in place. Temporaries a killed run
left behind are removed the next time the same output is written (:func:`prepare_outputs`).
A directory is only ever replaced when wsi-ai wrote it (a Zarr store, or a folder carrying
the :data:`MARKER` file), so ``--overwrite`` cannot delete a folder of someone else's.

Several files that belong together (a table and its sidecar, a prediction's patch scores and
its record) are one unit: :func:`atomic_outputs`, or :func:`output_unit` around writers that
each write one output. The unit's last path is its marker, what a reader looks for; the
others are renamed into place before it. Readers see, at every instant, the complete old
unit, the complete new one or no unit (no marker), never a mix:

1. every temporary is complete; a journal ``.<marker>.unit-<8 hex>`` names the other paths;
2. an existing marker is moved aside (``.<marker>.old-<8 hex>``): from here on no unit, the
   old one's other files are left-overs that nothing reads;
3. the other paths are renamed into place, then the marker: the new unit;
4. the marker's old copy and the journal are removed.

A run killed between 1 and 4 leaves the journal; the next :func:`prepare_outputs` of the
unit reads it and, when the marker is absent, removes the files it names (they are ours, so
the rerun needs no ``--overwrite``), else just the journal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from wsi_ai.errors import OutputError, OutputExistsError

MARKER = ".wsi-ai-output"
_OURS = (MARKER, "zarr.json", ".zgroup", ".zarray", ".zattrs")
_TAG = re.compile(r"[0-9a-f]{8}")
# (temporary, final) pairs an :func:`output_unit` commits at its end; None outside one
_PENDING: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("_PENDING", default=None)


def _is_ours(path: Path) -> bool:
    return any((path / name).exists() for name in _OURS)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def check_output(path: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` when ``path`` exists and may not be replaced."""
    if not _exists(path):
        return
    if not overwrite:
        raise OutputExistsError("output exists; pass --overwrite to replace it", path)
    if path.is_dir() and not path.is_symlink() and not _is_ours(path):
        raise OutputExistsError(
            "is a folder wsi-ai did not write; --overwrite only replaces wsi-ai outputs: "
            "choose another name or remove it yourself",
            path,
        )


def prepare_outputs(paths: Iterable[Path | None], overwrite: bool) -> None:
    """Check every output of one input before writing the first (no partial results).

    What a killed run of a unit left is cleared first (:func:`recover_unit`), so a unit whose
    marker never arrived does not count as an existing output."""
    finals = [Path(p) for p in paths if p is not None]
    for path in finals:
        recover_unit(path)
    for path in finals:
        check_output(path, overwrite)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(
                f"cannot create its folder ({err.strerror or err}); choose another output path",
                path,
            ) from err
        if not os.access(path.parent, os.W_OK):
            raise OutputError("its folder is not writable; choose another output path", path)
        remove_stale(path)


def _sibling(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{uuid.uuid4().hex[:8]}")


def _stale(path: Path, kind: str) -> list[Path]:
    """``.<name>.<kind>-<8 hex>`` beside ``path``."""
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return []
    prefix = f".{path.name}.{kind}-"
    return [
        s for s in siblings if s.name.startswith(prefix) and _TAG.fullmatch(s.name[len(prefix) :])
    ]


def remove_stale(path: Path) -> list[Path]:
    """Remove what a killed run of ``path`` left beside it: ``.<name>.tmp-<8 hex>`` and
    ``.<name>.old-<8 hex>`` files or folders, and nothing else. Returns what was removed."""
    removed: list[Path] = []
    for kind in ("tmp", "old"):
        for sibling in _stale(path, kind):
            _remove(sibling)
            removed.append(sibling)
    return removed


def recover_unit(marker: Path) -> list[Path]:
    """Finish what a run killed while renaming the unit of ``marker`` left: without the
    marker, the unit's other files its journal names are removed; then the journal.
    Returns what was removed."""
    removed: list[Path] = []
    for journal in _stale(marker, "unit"):
        try:
            names = json.loads(journal.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # cut short while written: nothing was renamed yet
            names = []
        if not _exists(marker) and isinstance(names, list):
            for name in names:
                if not isinstance(name, str) or name in ("", ".", "..", marker.name):
                    continue
                if Path(name).name != name:  # a plain name beside the marker, nothing else
                    continue
                other = marker.with_name(name)
                if _exists(other):
                    _remove(other)
                    removed.append(other)
        _remove(journal)
        removed.append(journal)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif _exists(path):
        path.unlink()


def _commit(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the complete ``tmp`` to ``final``: one atomic rename for a file (the old file
    stays visible until then), aside-then-in for a folder."""
    if tmp.is_dir() and not _is_ours(tmp):
        (tmp / MARKER).write_text("written by wsi-ai\n")
    if tmp.is_file():
        with tmp.open("rb") as handle:  # the bytes reach the disk before the name does
            os.fsync(handle.fileno())
    if not _exists(final):
        os.replace(tmp, final)
        return
    check_output(final, overwrite)
    if tmp.is_file() and not (final.is_dir() and not final.is_symlink()):
        os.replace(tmp, final)
        return
    backup = _sibling(final, "old")
    os.replace(final, backup)
    os.replace(tmp, final)
    _remove(backup)


def _commit_unit(
    tmps: list[Path], finals: list[Path], overwrite: bool, current: list[Path]
) -> None:
    """Rename the complete ``tmps`` to ``finals``, the marker (the last) last: steps 1-4 of
    the module's docstring (``current[0]``: the path being renamed, for errors). One output
    is one :func:`_commit`."""
    if len(finals) == 1:
        _commit(tmps[0], finals[0], overwrite)
        return
    for final in finals:
        if _exists(final):
            check_output(final, overwrite)
    marker = finals[-1]
    journal = _sibling(marker, "unit")
    with journal.open("w", encoding="utf-8") as handle:
        json.dump([final.name for final in finals[:-1]], handle)
        handle.flush()
        os.fsync(handle.fileno())
    aside = None
    if _exists(marker):
        aside = _sibling(marker, "old")
        os.replace(marker, aside)
    for tmp, final in zip(tmps, finals, strict=True):
        current[0] = final
        _commit(tmp, final, overwrite)
    if aside is not None:
        _remove(aside)
    journal.unlink()


def _unit_order(pending: list[tuple[Path, Path]], order: list[Path]) -> list[tuple[Path, Path]]:
    """``pending`` in ``order``; outputs it does not name (a table's sidecar) keep their
    place before the named ones."""
    return sorted(pending, key=lambda item: order.index(item[1]) if item[1] in order else -1)


@contextmanager
def _wrap_os_errors(current: list[Path]) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if isinstance(err, OutputExistsError | OutputError):
            raise
        raise OutputError(
            f"could not write ({err.strerror or err}); check the disk and the output path",
            current[0],
        ) from err


@contextmanager
def atomic_outputs(paths: list[Path], overwrite: bool = False) -> Iterator[list[Path]]:
    """Yield temporary sibling paths for ``paths``; rename them into place once the block
    succeeds, as one unit whose marker is the last path (the module's docstring): a reader
    finds the old unit, the new one or no marker, never the marker of one with the other
    files of another (a sidecar is listed before its table: see
    :func:`wsi_ai.store.table.write_table`).

    Works for files and directories (Zarr stores, run folders: a directory gets the
    :data:`MARKER` file). On an exception the temporary outputs are removed and ``paths``
    are left as they were. Filesystem failures become :class:`OutputError` naming the path.
    Inside :func:`output_unit` the renames wait for the end of that block.
    """
    finals = [Path(p) for p in paths]
    prepare_outputs(finals, overwrite)
    tmps = [_sibling(final, "tmp") for final in finals]
    pending = _PENDING.get()
    kept = False
    current = [finals[-1] if finals else Path()]  # the main output comes last
    try:
        with _wrap_os_errors(current):
            yield tmps
            if pending is not None:
                pending.extend(zip(tmps, finals, strict=True))
                kept = True
            elif finals:
                _commit_unit(tmps, finals, overwrite, current)
    finally:
        if not kept:
            for tmp in tmps:
                _remove(tmp)


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it to ``path`` on success.

    One output of :func:`atomic_outputs`: files and directories alike; on an exception the
    temporary output is removed and ``path`` is left as it was.
    """
    with atomic_outputs([Path(path)], overwrite) as (tmp,):
        yield tmp


@contextmanager
def output_unit(paths: Iterable[Path | None], overwrite: bool = False) -> Iterator[None]:
    """Make the outputs written inside the block (by :func:`atomic_output` or
    :func:`atomic_outputs`, in this thread) one unit: checked first, renamed together at
    the end in the order of ``paths`` (None entries skipped), the last being the marker.
    Outputs written inside but not named come first (a table's sidecar). On an exception
    nothing is renamed and the temporaries are removed."""
    order = [Path(p) for p in paths if p is not None]
    prepare_outputs(order, overwrite)
    pending: list[tuple[Path, Path]] = []
    token = _PENDING.set(pending)
    try:
        try:
            yield
        finally:
            _PENDING.reset(token)
        ordered = _unit_order(pending, order)
        finals = [final for _, final in ordered]
        current = finals[-1:] or [Path()]
        with _wrap_os_errors(current):
            if ordered:
                _commit_unit([tmp for tmp, _ in ordered], finals, overwrite, current)
    finally:
        for tmp, _ in pending:
            _remove(tmp)
