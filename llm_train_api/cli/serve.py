"""`llm-train-api serve` (the API under gunicorn) and `llm-train-api up` (the API and one
worker, what `make run` starts).

Both read the LLM_TRAIN_API_* settings and give gunicorn the package's own configuration
(llm_train_api/api/gunicorn_conf.py), so an installed wheel serves exactly like a checkout.
Flask and the worker are imported inside the commands: loading this module is cheap.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from llm_train_api.config import Settings

# A factory call: gunicorn builds the app in each worker process, from any directory.
APP_SPEC = "llm_train_api:create_app()"
GUNICORN_CONF = "python:llm_train_api.api.gunicorn_conf"
# How long `up` waits for the API to answer /healthz before it gives up: migrations and
# the first import of each gunicorn worker happen in that time.
READY_TIMEOUT_S = 60.0
# The children of `up`, in the order it starts them.
_CHILD_NAMES = ("the API server (gunicorn)", "the worker")
_BIND_HELP = "host:port (default: LLM_TRAIN_API_BIND, 127.0.0.1:8000)"


def gunicorn_argv(bind: str | None, workers: int | None) -> list[str]:
    """The gunicorn command line: the package's configuration, then the explicit options,
    which gunicorn lets win over the configuration."""
    argv = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF]
    if bind:
        argv += ["--bind", bind]
    if workers:
        argv += ["--workers", str(workers)]
    return argv + [APP_SPEC]


@click.command()
@click.option("--bind", help=_BIND_HELP)
@click.option("--workers", type=int,
              help="gunicorn worker processes (default: LLM_TRAIN_API_WORKERS)")
def serve(bind: str | None, workers: int | None) -> None:
    """Serve the API with gunicorn.

    Workers, threads, the access log and the Prometheus hooks come from the package's
    gunicorn configuration and the LLM_TRAIN_API_* settings.
    """
    Settings.load()  # a bad setting stops here, once, before any worker boots
    os.execv(sys.executable, gunicorn_argv(bind, workers))


@click.command()
@click.option("--bind", help=_BIND_HELP)
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True)
def up(bind: str | None, concurrency: int) -> None:
    """The API and one worker together (the `make run` of a single machine).

    It says where the API listens only once the API answers there, with the lines that
    point the CLI at it; if the API server exits first (a port already in use), `up` exits
    with its status. If either child dies later, `up` says which and how, stops the other
    and exits with the dead child's status (never 0). Ctrl-C stops both and leaves no
    process behind.
    """
    settings = Settings.load()
    bind = bind or settings.BIND
    from llm_train_api import create_app
    from llm_train_api.worker.trainer_process import die_with_parent

    # Migrates, and on the very first start writes the admin token, before the children
    # start: so that it can be shown here.
    app = create_app()
    runtime = app.extensions["llm_train_api.runtime"]
    stopping = False
    children: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL if stopping else signal.SIGTERM)
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Own sessions, so a terminal's Ctrl-C reaches only us and each child gets exactly one
    # signal from us; and a kernel-delivered SIGKILL if we die without forwarding it.
    spawn = {"start_new_session": True, "preexec_fn": die_with_parent}
    api = subprocess.Popen(gunicorn_argv(bind, None), **spawn)
    children.append(api)
    children.append(subprocess.Popen(
        [sys.executable, "-m", "llm_train_api.cli", "worker", "--concurrency",
         str(concurrency)], **spawn))

    url = client_url(bind)
    problem = _wait_until_answering(bind, children, lambda: stopping)
    if stopping:
        pass  # Ctrl-C while starting: nothing to announce, the children are stopping
    elif problem is None:
        docs = f"  (API docs: {url}/docs)" if url else ""
        click.echo(f"llm_train_api listening on {url or bind}{docs}")
        _show_client_settings(url, runtime.settings, runtime.instance_path)
    else:
        click.echo(f"Error: {problem}", err=True)
        stop(signal.SIGTERM, None)
        _reap(children)
        sys.exit(_exit_status(api) or 1)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    if not stopping:  # one died on its own: say which, take the other down too
        name, dead = next((name, child) for name, child in zip(_CHILD_NAMES, children,
                                                                strict=True)
                          if child.poll() is not None)
        click.echo(f"Error: {name} {_how_it_ended(dead)}; stopping "
                   f"{' and '.join(n for n in _CHILD_NAMES if n != name)}", err=True)
        stop(signal.SIGTERM, None)
        # What it leaves in its session (gunicorn's workers, when the master was killed)
        # goes too, rather than lingering until it notices its parent is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(dead.pid, signal.SIGTERM)
        _reap(children)
        # Its status as a shell reports it (128+N for signal N), and never 0: `up` did not
        # stop because it was asked to.
        sys.exit(_exit_status(dead) or 1)
    _reap(children)


def _wait_until_answering(bind: str, children: list[subprocess.Popen[bytes]],
                          stopping: Callable[[], bool]) -> str | None:
    """None once the API answers /healthz at `bind`; else why not (a child exited, or the
    timeout passed). Returns None at once too when a signal is stopping `up`."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not stopping():
        for name, child in zip(_CHILD_NAMES, children, strict=True):
            if child.poll() is not None:
                return (f"{name} {_how_it_ended(child)} before the API "
                        f"answered on {bind} (is the address already in use?)")
        if _answers(bind):
            return None
        if time.monotonic() > deadline:
            return f"the API did not answer on {bind} within {READY_TIMEOUT_S:.0f} s"
        time.sleep(0.2)
    return None


def _how_it_ended(child: subprocess.Popen[bytes]) -> str:
    """How a child that ended did: `exited with status N` or `was killed by SIGNAME`."""
    code = child.returncode or 0
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _reap(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _exit_status(child: subprocess.Popen[bytes]) -> int:
    """A shell's idea of the child's status: its exit code, or 128+N for signal N."""
    code = child.returncode or 0
    return 128 - code if code < 0 else code


def _host_port(bind: str) -> tuple[str, int]:
    """gunicorn's TCP bind ("host:port", "[::1]:port", "host") as a host to connect to: a
    wildcard address is reached through the loopback of its family."""
    if bind.startswith("["):
        host, _, port = bind[1:].partition("]")
        port = port.lstrip(":")
    elif bind.count(":") == 1:
        host, _, port = bind.partition(":")
    else:
        host, port = bind, ""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return host, int(port) if port.isdigit() else 8000


def client_url(bind: str) -> str | None:
    """The URL a client on this machine reaches a bind at; None for a unix socket."""
    if bind.startswith(("unix:", "fd://")):
        return None
    host, port = _host_port(bind)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=2)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _answers(bind: str) -> bool:
    """Whether GET /healthz at `bind` answers 200 (only the standard library: the server's
    install has no `requests`)."""
    if bind.startswith("fd://"):
        return True  # an inherited socket is bound already; nothing to poll through
    if bind.startswith("unix:"):
        conn: http.client.HTTPConnection = _UnixConnection(bind[len("unix:"):])
    else:
        conn = http.client.HTTPConnection(*_host_port(bind), timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _show_client_settings(url: str | None, settings: Settings, instance_path: Path) -> None:
    """The lines that point the CLI and the Python client at this server, as its admin."""
    from llm_train_api.store.tokens import BOOTSTRAP_FILENAME

    if settings.AUTH == "disabled":
        click.echo("WARNING: LLM_TRAIN_API_AUTH=disabled: anyone who reaches the port is an "
                   "admin.", err=True)
    exports = [f"export LLM_TRAIN_API_URL={url}"] if url else []
    token_file = instance_path / BOOTSTRAP_FILENAME
    if settings.AUTH != "disabled" and token_file.is_file():
        exports.append(f"export LLM_TRAIN_API_TOKEN={token_file.read_text().strip()}")
        click.echo(f"for the CLI and the Python client, as the admin (token from "
                   f"{token_file}):")
    elif exports:
        click.echo("for the CLI and the Python client:")
    for line in exports:
        click.echo(f"  {line}")
    if settings.AUTH != "disabled" and not token_file.is_file():
        click.echo("API tokens: `llm-train-api tokens create --name NAME --role user`")
