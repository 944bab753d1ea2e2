"""Writing outputs safely: never over an existing one unasked, never half-written.

Every output is written under a temporary sibling name and renamed into place when it
is complete (DESIGN.md), so a crash leaves no result that looks finished.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wsi_ai.errors import OutputExistsError


def check_output(path: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` when ``path`` exists and ``overwrite`` is false."""
    if path.exists() and not overwrite:
        raise OutputExistsError("output exists; pass --overwrite to replace it", path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it to ``path`` on success.

    Works for files and directories (Zarr stores). On an exception the temporary
    output is removed and ``path`` is left as it was.
    """
    final = Path(path)
    check_output(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if final.exists():
            check_output(final, overwrite)
            backup = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, backup)
            os.replace(tmp, final)
            _remove(backup)
        else:
            os.replace(tmp, final)
    finally:
        _remove(tmp)
