"""What every failing CLI command must look like."""

from __future__ import annotations

from click.testing import Result


def one_error_line(result: Result, code: int = 1) -> str:
    """The failure contract: a non-zero exit and exactly one line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]
