"""What CLI tests share: invoke ``wsi-ai`` in-process and read its one-line errors."""

from __future__ import annotations

from click.testing import CliRunner

from wsi_ai.cli import main


def run(*args: object) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``wsi-ai ARGS``; an unexpected exception is raised."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line of ``stderr`` (and no traceback)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]
