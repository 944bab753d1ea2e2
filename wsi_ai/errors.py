"""The small exception hierarchy every wsi-ai failure belongs to.

Each error also subclasses the builtin that fits it, so callers that catch
``ValueError`` or ``FileNotFoundError`` keep working. Messages name the file
and say what to do; the CLI prints them on one line and exits 1.
"""

from __future__ import annotations

from pathlib import Path


class WsiAiError(Exception):
    """Base class of every error wsi-ai raises on purpose."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class SlideNotFoundError(WsiAiError, FileNotFoundError):
    """The path does not exist or is not a file."""


class UnsupportedSlideError(WsiAiError, ValueError):
    """No backend can read the file as a whole-slide image."""


class MissingMppError(WsiAiError, ValueError):
    """The slide has no microns-per-pixel and the operation needs one."""


class SlideReadError(WsiAiError, OSError):
    """A slide that opened could not be read (truncated or corrupt data)."""


class OutputExistsError(WsiAiError, FileExistsError):
    """An output exists and ``--overwrite`` was not given."""


class OutputError(WsiAiError, OSError):
    """An output could not be written (folder missing or read-only, disk full)."""


class ParameterError(WsiAiError, ValueError):
    """A parameter does not fit this input (a grid of billions of patches, say)."""


class InvalidInputError(WsiAiError, ValueError):
    """An input file (table, annotation, config) is malformed."""


class ModelError(WsiAiError, ValueError):
    """A model card or its weights do not match."""


def failure_message(label: str | Path, err: BaseException) -> str:
    """One line for a failed input: our errors as they are (naming their file), anything else
    as a bug to report."""
    if isinstance(err, WsiAiError):
        return str(err) if err.path is not None else f"{label}: {err}"
    return (
        f"{label}: unexpected {type(err).__name__}: {err} "
        "(this is a bug in wsi-ai: please report it with --debug output)"
    )
