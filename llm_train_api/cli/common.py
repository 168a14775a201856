"""What every client command shares: the connection options, the one-line error report,
exit codes, and the human/JSON output.

Only `click` and the client package are imported here: the client commands must work where
only ``llm-train-api[client]`` is installed, and start fast.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, NoReturn

import click

from llm_train_api.client import DEFAULT_URL, ApiError, Client, to_dict
from llm_train_api.client.client import TOKEN_ENV, URL_ENV

# Exit codes of the client commands (also in `--help` of `jobs wait`).
EXIT_OK = 0
EXIT_ERROR = 1  # the API refused or could not be reached
EXIT_USAGE = 2  # click's own code for bad options
EXIT_FAILED = 3  # the job ended `failed`
EXIT_CANCELLED = 4  # the job ended `cancelled`
EXIT_TIMEOUT = 124  # waiting gave up (as timeout(1) does)
EXIT_INTERRUPTED = 130

CONTEXT = {"help_option_names": ["-h", "--help"]}


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One line on stderr, no traceback, and a non-zero exit: what scripts and humans need."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def client_command(group: click.Group, name: str | None = None, *,
                   json_option: bool = True) -> Callable[[Callable[..., Any]], click.Command]:
    """Register `f(api, ..., [as_json])` as a command of `group` with the shared options
    --url, --token (and --json), a Client built from them, and API errors reported as
    one line: ``error: 404 not_found: Job 'x' not found.``"""

    def decorate(f: Callable[..., Any]) -> click.Command:
        @functools.wraps(f)
        def wrapper(*args: Any, url: str, token: str | None, **kwargs: Any) -> Any:
            api = Client(url, token=token or None)
            try:
                return f(api, *args, **kwargs)
            except ApiError as exc:
                fail(str(exc))
            except KeyboardInterrupt:
                click.echo("", err=True)
                sys.exit(EXIT_INTERRUPTED)
            finally:
                api.close()

        command = wrapper
        own = len(getattr(wrapper, "__click_params__", []))
        if json_option:
            command = click.option("--json", "as_json", is_flag=True,
                                   help="Output JSON, for scripts.")(command)
        command = click.option("--token", envvar=TOKEN_ENV, show_envvar=True, metavar="TOKEN",
                               help="API token, sent as 'Authorization: Bearer'.")(command)
        command = click.option("--url", envvar=URL_ENV, show_envvar=True,
                               default=DEFAULT_URL, show_default=True,
                               help="Base URL of the service.")(command)
        # The shared options last in --help, after the command's own.
        params = command.__click_params__  # type: ignore[attr-defined]
        command.__click_params__ = params[own:] + params[:own]  # type: ignore[attr-defined]
        return group.command(name, context_settings=CONTEXT)(command)

    return decorate


def print_json(obj: Any) -> None:
    click.echo(json.dumps(to_dict(obj), indent=2, ensure_ascii=False, default=str))


def when(value: datetime | None) -> str:
    """A timestamp for tables: UTC to the second, which is what fits in a column."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A plain left-aligned table; an empty one prints its header only."""
    rows = [[("-" if cell is None else str(cell)) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


class DownloadBar:
    """A download's progress on stderr, as the client reports it (`progress(n, total)`):
    a bar once the first bytes say how many are coming. Use it as a context manager."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None

    def __call__(self, n: int, total: int | None) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=total or 0, label=self.label,
                                          file=sys.stderr, show_pos=False,
                                          show_percent=total is not None)
            self._bar.__enter__()
        self._bar.update(n)

    def __enter__(self) -> DownloadBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
