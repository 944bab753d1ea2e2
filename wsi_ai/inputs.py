"""What a batch runs on: slide files, folders of slides, or a manifest CSV.

:func:`collect_inputs` turns ``wsi-ai run``'s INPUT arguments into :class:`SlideInput` rows:

* a slide file is taken as it is (a missing path is a failed row later, not a usage error);
* a folder is searched recursively for files with a slide extension (:data:`SLIDE_SUFFIXES`),
  hidden files and folders left out, in sorted order;
* a ``.csv`` file is a manifest: a ``path`` column (relative paths are relative to the CSV's
  folder), optional ``label`` and ``slide_mpp``, and any other columns, carried as they are
  into the batch summary.

The cheap content hash a resumed batch compares is :func:`wsi_ai.slide.identity.fingerprint`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from wsi_ai.errors import InvalidInputError

SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".dcm",
    ".qptiff",
)
_RESERVED = ("path", "label", "slide_mpp")


@dataclass(frozen=True)
class SlideInput:
    """One slide of a batch, with what the manifest said of it."""

    path: Path
    label: str | None = None
    slide_mpp: float | None = None  # the manifest's: wins over the file's own MPP
    default_mpp: float | None = None  # --slide-mpp: used only when the file has no MPP
    metadata: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        """The slide's folder name under ``OUT/slides/``: its file name."""
        return self.path.name


def _manifest(path: Path) -> list[SlideInput]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [c.strip() for c in (reader.fieldnames or [])] if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InvalidInputError(f"cannot read the manifest CSV ({err})", path) from err
    if "path" not in columns:
        raise InvalidInputError(
            "a manifest CSV needs a 'path' column (optional: label, slide_mpp, any others)", path
        )
    out: list[SlideInput] = []
    for number, row in enumerate(rows, start=2):
        if None in row:  # csv.DictReader keeps a row's surplus fields under the key None
            raise InvalidInputError(
                f"line {number}: more fields than the header's {len(columns)} columns "
                "(a comma in a value needs quotes)",
                path,
            )
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row["path"]:
            raise InvalidInputError(f"line {number}: empty path", path)
        if "\x00" in row["path"]:
            raise InvalidInputError(f"line {number}: the path contains a NUL character", path)
        mpp: float | None = None
        if row.get("slide_mpp"):
            try:
                mpp = float(row["slide_mpp"])
            except ValueError:
                mpp = math.nan
            if not (math.isfinite(mpp) and mpp > 0):
                raise InvalidInputError(
                    f"line {number}: slide_mpp must be a positive number of µm/px, got "
                    f"{row['slide_mpp']!r}",
                    path,
                )
        try:
            slide = Path(row["path"]).expanduser()
        except RuntimeError as err:  # ~user of a user this machine does not know
            raise InvalidInputError(f"line {number}: path {row['path']!r}: {err}", path) from err
        slide = slide if slide.is_absolute() else path.parent / slide
        extra = {k: v for k, v in row.items() if k and k not in _RESERVED}
        out.append(SlideInput(slide.absolute(), row.get("label") or None, mpp, metadata=extra))
    return out


def _folder(path: Path) -> list[SlideInput]:
    found = [
        p
        for p in path.rglob("*")
        if p.suffix.lower() in SLIDE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]
    return [SlideInput(p.absolute()) for p in sorted(found)]


def collect_inputs(items: Iterable[Path]) -> list[SlideInput]:
    """The slides named by ``items`` (files, folders, manifest CSVs), in the order given."""
    out: list[SlideInput] = []
    for item in items:
        try:
            item = Path(item).expanduser()
        except RuntimeError:  # ~user unknown here: left as it is, then a missing file
            item = Path(item)
        if item.is_dir():
            slides = _folder(item)
            if not slides:
                raise InvalidInputError(
                    f"no slide file in the folder (looked for {', '.join(SLIDE_SUFFIXES)})", item
                )
            out.extend(slides)
        elif item.suffix.lower() == ".csv":
            out.extend(_manifest(item))
        else:
            out.append(SlideInput(item.absolute()))
    return out
