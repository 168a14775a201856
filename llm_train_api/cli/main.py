"""`llm-train-api`: the server commands (serve, up, worker, tokens) and the client commands
(jobs, datasets, models, sample) in one click group.

Each subcommand's module is imported only when that command runs: a client command then
loads click and `llm_train_api.client` alone, neither Flask, SQLAlchemy nor torch, so it
starts fast and works where only ``llm-train-api[client]``'s dependencies are present.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from llm_train_api.config import ConfigError

# name -> ("module:attribute", the one-line help `llm-train-api --help` shows). The help is
# written here so that listing the commands imports none of them; a test checks that each
# line matches the command's own.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("llm_train_api.cli.serve:serve", "Serve the API with gunicorn."),
    "up": ("llm_train_api.cli.serve:up",
           "The API and one worker together (the `make run` of a single machine)."),
    "worker": ("llm_train_api.cli.worker:worker",
               "Claim queued jobs and run the trainer for each, until SIGTERM or Ctrl-C."),
    "tokens": ("llm_train_api.cli.tokens:tokens",
               "Issue, list and revoke API tokens (server side: needs the service's database)."),
    "webhooks-sender": ("llm_train_api.cli.webhooks:webhooks_sender",
                        "Deliver webhooks from the outbox, until SIGTERM or Ctrl-C."),
    "jobs": ("llm_train_api.cli.jobs:jobs",
             "Training jobs on the service at --url (LLM_TRAIN_API_URL)."),
    "datasets": ("llm_train_api.cli.datasets:datasets",
                 "Datasets on the service at --url (LLM_TRAIN_API_URL)."),
    "models": ("llm_train_api.cli.catalog:models",
               "Models: the built-in catalog, and imported Hugging Face-format models."),
    "webhooks": ("llm_train_api.cli.webhooks:webhooks",
                 "Signed webhooks on the service at --url (LLM_TRAIN_API_URL)."),
    "sample": ("llm_train_api.cli.sample:sample",
               "Generate text from a job or a model (runs here, needs torch)."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (see COMMANDS).

    A bad LLM_TRAIN_API_* value is an operator's typo: it ends in one line that names it and
    exit status 1, not a traceback (nor one per gunicorn worker that fails to boot).
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Server commands first, then client commands (the order of COMMANDS)."""
        return [*self.lazy, *(n for n in super().list_commands(ctx) if n not in self.lazy)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module_name, _, attr = self.lazy[cmd_name][0].partition(":")
        try:
            command = getattr(importlib.import_module(module_name), attr)
        except ModuleNotFoundError as exc:
            raise _missing(cmd_name, exc) from None
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name][0]} is not a click command")
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS' help lines: `--help` imports no subcommand."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(name) for name in names), default=0)
        rows = []
        for name in names:
            if name in self.commands:
                command = self.commands[name]
                if command.hidden:
                    continue
                text = command.get_short_help_str(limit)
            else:
                # Truncated the way click truncates a loaded command's help.
                text = click.Command(name, help=self.lazy[name][1]).get_short_help_str(limit)
            rows.append((name, text))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(f"bad configuration: {exc}") from None
        except ModuleNotFoundError as exc:
            # A server command run where only the client's dependencies are installed.
            raise _missing(ctx.invoked_subcommand or "this command", exc) from None


def _missing(command: str, exc: ModuleNotFoundError) -> click.ClickException:
    return click.ClickException(
        f"`{command}` needs {exc.name or 'a module'}, which is not installed here "
        "(`pip install llm-train-api` for the server commands, "
        "`pip install 'llm-train-api[client]'` for the client ones)")


@click.group(cls=LazyGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Self-hosted LLM training jobs.

    \b
    Server side: serve, up, worker, tokens, webhooks-sender (they read the LLM_TRAIN_API_*
    settings). Client side: jobs, datasets, models, webhooks, sample (they talk to
    LLM_TRAIN_API_URL with LLM_TRAIN_API_TOKEN).
    """


if __name__ == "__main__":
    main()
