"""Writing outputs safely: never over an existing one unasked, never half-written.

Every output is written under a temporary sibling name and renamed into place when it
is complete (DESIGN.md), so a crash leaves no result that looks finished. A directory
is only ever replaced when wsi-ai wrote it (a Zarr store, or a folder carrying the
:data:`MARKER` file), so ``--overwrite`` cannot delete a folder of someone else's.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from wsi_ai.errors import OutputError, OutputExistsError

MARKER = ".wsi-ai-output"
_OURS = (MARKER, "zarr.json", ".zgroup", ".zarray", ".zattrs")


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it to ``path`` on success.

    Works for files and directories (Zarr stores, run folders: a directory gets the
    :data:`MARKER` file). On an exception the temporary output is removed and ``path``
    is left as it was. Filesystem failures become :class:`OutputError` naming ``path``.
    """
    final = Path(path)
    prepare_outputs([final], overwrite)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if tmp.is_dir() and not _is_ours(tmp):
            (tmp / MARKER).write_text("written by wsi-ai\n")
        if final.exists() or final.is_symlink():
            check_output(final, overwrite)
            backup = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, backup)
            os.replace(tmp, final)
            _remove(backup)
        else:
            os.replace(tmp, final)
    except OSError as err:
        if isinstance(err, OutputExistsError | OutputError):
            raise
        raise OutputError(
            f"could not write ({err.strerror or err}); check the disk and the output path",
            final,
        ) from err
    finally:
        _remove(tmp)
