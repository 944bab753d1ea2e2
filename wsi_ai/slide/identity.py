"""Which slide a table or store was made from, and whether it is the slide now given.

Every patch table and features store records :func:`slide_identity` under
:data:`IDENTITY_KEY`: the slide's file name, its level-0 ``[width, height]`` and a
:func:`fingerprint` of its bytes. :func:`check_same_slide` compares that record with the
slide a later stage is handed (``wsi-ai stitch``, ``wsi-ai score-he --patches``):

* same dimensions and fingerprint, same name: the same slide;
* same dimensions and fingerprint, another name: a renamed copy (a warning);
* other dimensions or fingerprint: another slide (an error, unless overridden);
* no record (an older or foreign table): cannot be checked (a warning).

:func:`fingerprint` is cheap: the file's size and the sha256 of its first and last MiB (a
rescanned or replaced slide changes it; reading a gigapixel file whole would not be cheap).
It is also what a resumed batch compares.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_ai.errors import InvalidInputError

if TYPE_CHECKING:
    from wsi_ai.slide.slide import Slide

IDENTITY_KEY = "slide_identity"
_CHUNK = 1 << 20


def fingerprint(path: Path) -> str:
    """``size:sha256(first MiB + last MiB)`` of the file: cheap, and changes when it does."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        digest.update(handle.read(_CHUNK))
        if size > _CHUNK:
            handle.seek(max(_CHUNK, size - _CHUNK))
            digest.update(handle.read(_CHUNK))
    return f"{size}:{digest.hexdigest()}"


def slide_identity(slide_or_path: Slide | str | Path) -> dict[str, Any]:
    """``{"name", "dimensions": [w, h], "fingerprint"}`` of an open slide or a slide file."""
    if isinstance(slide_or_path, str | Path):
        from wsi_ai.slide.slide import open_slide

        with open_slide(slide_or_path) as slide:
            return slide_identity(slide)
    width, height = slide_or_path.dimensions
    path = Path(slide_or_path.path)
    return {
        "name": path.name,
        "dimensions": [int(width), int(height)],
        "fingerprint": fingerprint(path),
    }


def recorded_identity(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The identity a table's metadata records, or None when it has none (or a damaged one)."""
    found = meta.get(IDENTITY_KEY)
    if not isinstance(found, Mapping):
        return None
    name, dims, fp = found.get("name"), found.get("dimensions"), found.get("fingerprint")
    if not (isinstance(name, str) and isinstance(fp, str) and isinstance(dims, list | tuple)):
        return None
    if len(dims) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return None
    return {"name": name, "dimensions": [int(dims[0]), int(dims[1])], "fingerprint": fp}


def check_same_slide(
    meta: Mapping[str, Any],
    slide: Slide,
    source: Path,
    *,
    allow_other: bool = False,
    what: str = "scores",
) -> str | None:
    """Refuse ``source`` (a table or store with metadata ``meta``) made on another slide.

    Returns a warning to print (a renamed copy, a table that names no slide, or another
    slide accepted with ``allow_other``), or None when it is the same slide. Raises
    :class:`~wsi_ai.errors.InvalidInputError` naming ``source`` when the dimensions or the
    fingerprint differ and ``allow_other`` is false. ``what`` names the table in messages.
    """
    given = Path(slide.path).name
    made = recorded_identity(meta)
    if made is None:
        said = meta.get("slide") if isinstance(meta.get("slide"), str) else None
        hint = f" (its metadata says {said})" if said and said != given else ""
        return (
            f"{source}: the {what} do not name the slide they were made on (an older or "
            f"foreign table){hint}: cannot check they belong to {given}"
        )
    width, height = slide.dimensions
    same_pixels = made["dimensions"] == [int(width), int(height)]
    if same_pixels and made["fingerprint"] == fingerprint(Path(slide.path)):
        if made["name"] == given:
            return None
        return (
            f"{source}: {what} made on {made['name']}, given {given}: same dimensions and "
            "content fingerprint, taken as a renamed copy"
        )
    w, h = made["dimensions"]
    message = f"{what} made on {made['name']} ({w} x {h}), not on {slide.path}"
    if allow_other:
        return f"{source}: {message} ({width} x {height}): used anyway (--allow-other-slide)"
    raise InvalidInputError(
        f"{message}: pass the slide they were made on, or --allow-other-slide to override",
        source,
    )
