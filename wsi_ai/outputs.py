"""Writing outputs safely: never over an existing one unasked, never half-written.

Every output is written under a temporary sibling name (``.<name>.tmp-<8 hex>``) and
renamed into place when it is complete (DESIGN.md), so a crash leaves no result that looks
finished. A file replaces the old one in one rename; a folder is moved aside first
(``.<name>.old-<8 hex>``) and removed once the new one is in place. Temporaries a killed run
left behind are removed the next time the same output is written (:func:`prepare_outputs`).
:func:`atomic_outputs` writes several files that belong together (a table and its sidecar)
and renames them in the order given. A directory is only ever replaced when wsi-ai wrote it
(a Zarr store, or a folder carrying the :data:`MARKER` file), so ``--overwrite`` cannot
delete a folder of someone else's.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from wsi_ai.errors import OutputError, OutputExistsError

MARKER = ".wsi-ai-output"
_OURS = (MARKER, "zarr.json", ".zgroup", ".zarray", ".zattrs")
_TAG = re.compile(r"[0-9a-f]{8}")


def _is_ours(path: Path) -> bool:
    return any((path / name).exists() for name in _OURS)


def check_output(path: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` when ``path`` exists and may not be replaced."""
    if not (path.exists() or path.is_symlink()):
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
    """Check every output of one input before writing the first (no partial results)."""
    for path in paths:
        if path is None:
            continue
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


def remove_stale(path: Path) -> list[Path]:
    """Remove what a killed run of ``path`` left beside it: ``.<name>.tmp-<8 hex>`` and
    ``.<name>.old-<8 hex>`` files or folders, and nothing else. Returns what was removed."""
    removed: list[Path] = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for kind in ("tmp", "old"):
        prefix = f".{path.name}.{kind}-"
        for sibling in siblings:
            name = sibling.name
            if name.startswith(prefix) and _TAG.fullmatch(name[len(prefix) :]):
                _remove(sibling)
                removed.append(sibling)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _commit(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the complete ``tmp`` to ``final``: one atomic rename for a file (the old file
    stays visible until then), aside-then-in for a folder."""
    if tmp.is_dir() and not _is_ours(tmp):
        (tmp / MARKER).write_text("written by wsi-ai\n")
    if tmp.is_file():
        with tmp.open("rb") as handle:  # the bytes reach the disk before the name does
            os.fsync(handle.fileno())
    if not (final.exists() or final.is_symlink()):
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


@contextmanager
def atomic_outputs(paths: list[Path], overwrite: bool = False) -> Iterator[list[Path]]:
    """Yield temporary sibling paths for ``paths``; rename them into place, in the order
    given, once the block succeeds. The caller orders them so that every state in between is
    harmless (a sidecar before its table: see :func:`wsi_ai.store.table.write_table`).

    Works for files and directories (Zarr stores, run folders: a directory gets the
    :data:`MARKER` file). On an exception the temporary outputs are removed and ``paths``
    are left as they were. Filesystem failures become :class:`OutputError` naming the path.
    """
    finals = [Path(p) for p in paths]
    prepare_outputs(finals, overwrite)
    tmps = [_sibling(final, "tmp") for final in finals]
    current = finals[-1] if finals else Path()  # the main output comes last
    try:
        yield tmps
        for tmp, final in zip(tmps, finals, strict=True):
            current = final
            _commit(tmp, final, overwrite)
    except OSError as err:
        if isinstance(err, OutputExistsError | OutputError):
            raise
        raise OutputError(
            f"could not write ({err.strerror or err}); check the disk and the output path",
            current,
        ) from err
    finally:
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
