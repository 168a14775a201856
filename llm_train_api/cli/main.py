"""`llm-train-api`: run the service (serve), a worker (worker), or both (up).

Every setting comes from the same LLM_TRAIN_API_* environment variables as the service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import Flask

from llm_train_api.cli.catalog import models
from llm_train_api.cli.datasets import datasets
from llm_train_api.cli.jobs import jobs
from llm_train_api.cli.sample import sample
from llm_train_api.cli.tokens import tokens
from llm_train_api.cli.worker import worker
from llm_train_api.config import ConfigError, Settings
from llm_train_api.store.tokens import BOOTSTRAP_FILENAME
from llm_train_api.worker.trainer_process import die_with_parent

# A factory call: gunicorn builds the app in each worker process, from any directory.
APP_SPEC = "llm_train_api:create_app()"
_REPO_CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


class _ServiceCommands(click.Group):
    """A bad LLM_TRAIN_API_* value is an operator's typo: one line that names it and exit 1,
    not a traceback (nor one per gunicorn worker that fails to boot)."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - whatever the command returns
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(f"bad configuration: {exc}") from None


@click.group(cls=_ServiceCommands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Self-hosted LLM training jobs.

    \b
    Server side: serve, worker, up, tokens (they read the LLM_TRAIN_API_* settings).
    Client side: jobs, datasets, models, sample (they talk to LLM_TRAIN_API_URL with
    LLM_TRAIN_API_TOKEN).
    """


def _gunicorn_argv(bind: str | None, workers: int | None) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn"]
    if _REPO_CONF.is_file():
        argv += ["-c", str(_REPO_CONF)]
    if bind:
        argv += ["--bind", bind]
    if workers:
        argv += ["--workers", str(workers)]
    return argv + [APP_SPEC]


@main.command()
@click.option("--bind", help="host:port (default: LLM_TRAIN_API_BIND or 127.0.0.1:8000)")
@click.option("--workers", type=int, help="gunicorn worker processes")
def serve(bind: str | None, workers: int | None) -> None:
    """Serve the API with gunicorn (gunicorn.conf.py defaults)."""
    Settings.load()  # a bad setting stops here, once, before any worker boots
    os.execv(sys.executable, _gunicorn_argv(bind, workers))


@main.command()
@click.option("--bind", help="host:port (default: LLM_TRAIN_API_BIND or 127.0.0.1:8000)")
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True)
def up(bind: str | None, concurrency: int) -> None:
    """The API and one worker together (the `make run` of a single machine). Ctrl-C stops
    both and leaves no process behind."""
    bind = bind or os.environ.get("LLM_TRAIN_API_BIND", "127.0.0.1:8000")
    from llm_train_api import create_app

    # Migrates, and on the very first start writes the admin token, before the children
    # start: so that it can be shown here.
    app = create_app()
    # Own sessions, so a terminal's Ctrl-C reaches only us and each child gets exactly one
    # signal from us; and a kernel-delivered SIGKILL if we die without forwarding it.
    spawn = {"start_new_session": True, "preexec_fn": die_with_parent}
    children = [
        subprocess.Popen(_gunicorn_argv(bind, None), **spawn),
        subprocess.Popen([sys.executable, "-m", "llm_train_api.cli", "worker",
                          "--concurrency", str(concurrency)], **spawn),
    ]
    click.echo(f"llm_train_api listening on http://{bind}  (API docs: http://{bind}/docs)")
    _show_admin_token(app)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL if stopping else signal.SIGTERM)
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    if not stopping:  # one died on its own: take the other down too
        stop(signal.SIGTERM, None)
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    sys.exit(max(abs(child.returncode or 0) for child in children) if not stopping else 0)


def _show_admin_token(app: Flask) -> None:
    if app.extensions["llm_train_api.runtime"].settings.AUTH == "disabled":
        click.echo("WARNING: LLM_TRAIN_API_AUTH=disabled: anyone who reaches the port is an "
                   "admin.", err=True)
        return
    path = Path(app.instance_path) / BOOTSTRAP_FILENAME
    if path.is_file():
        token = path.read_text().strip()
        click.echo(f"admin token (from {path}):\n  export LLM_TRAIN_API_TOKEN={token}")
    else:
        click.echo("API tokens: `llm-train-api tokens create --name NAME --role user`")


main.add_command(tokens)
main.add_command(worker)
main.add_command(jobs)
main.add_command(datasets)
main.add_command(models)
main.add_command(sample)


if __name__ == "__main__":
    main()
