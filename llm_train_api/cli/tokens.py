"""`llm-train-api tokens`: issue, list and revoke API tokens.

A server-side command: it opens the service's database directly, through a Runtime built
from the same LLM_TRAIN_API_* settings as the service (no Flask app), so an operator can
always mint an admin token, even when every token is lost or revoked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import click

from llm_train_api.domain import Role
from llm_train_api.store.tokens import TokenError, TokenRepository


@contextmanager
def _tokens() -> Iterator[TokenRepository]:
    """The token repository of the service's database, closed when the command is done."""
    from llm_train_api.config import Settings
    from llm_train_api.runtime import Runtime

    runtime = Runtime.build(Settings.load())
    try:
        yield runtime.tokens
    finally:
        runtime.close()


@click.group()
def tokens() -> None:
    """Issue, list and revoke API tokens (server side: needs the service's database)."""


@tokens.command("create")
@click.option("--name", required=True,
              help="Who the token is for: lowercase letters, digits, '.', '_', '-'. Jobs and "
              "datasets created with it belong to this name.")
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.USER.value,
              show_default=True, help="admin: everything; user: own jobs and datasets; "
              "worker: an external executor (any status change on any job).")
def create(name: str, role: str) -> None:
    """Create a token and print it. It is shown this once: only its hash is stored."""
    try:
        with _tokens() as repository:
            info, secret = repository.create(name, role)
    except TokenError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"created token {info.id} for {info.name!r} (role {info.role.value}); "
               "store it now, it is not shown again:", err=True)
    click.echo(secret)


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def list_tokens(as_json: bool) -> None:
    """List tokens (never the secrets: a prefix tells them apart)."""
    with _tokens() as repository:
        rows = repository.list()
    if as_json:
        for t in rows:
            click.echo(json.dumps({"id": t.id, "name": t.name, "role": t.role.value,
                                   "prefix": t.prefix,
                                   "created_at": t.created_at.isoformat(),
                                   "revoked_at": t.revoked_at and t.revoked_at.isoformat()}))
        return
    click.echo(f"{'ID':>4}  {'NAME':<20} {'ROLE':<7} {'PREFIX':<12} {'CREATED':<20} REVOKED")
    for t in rows:
        revoked = t.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if t.revoked_at else "-"
        click.echo(f"{t.id:>4}  {t.name:<20} {t.role.value:<7} {t.prefix:<12} "
                   f"{t.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {revoked}")


@tokens.command("revoke")
@click.argument("token_id", type=int, required=False)
@click.option("--name", help="Revoke every active token of this name instead.")
def revoke(token_id: int | None, name: str | None) -> None:
    """Revoke a token by id (see `tokens list`), or all of a name. Takes effect at once."""
    try:
        with _tokens() as repository:
            count = repository.revoke(token_id=token_id, name=name)
    except TokenError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"revoked {count} token(s)")
