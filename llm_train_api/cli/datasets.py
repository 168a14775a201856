"""`llm-train-api datasets ...`: upload, list and remove the data jobs train on."""

from __future__ import annotations

import json
from pathlib import Path

import click

from llm_train_api.cli.common import CONTEXT, client_command, print_json, size, table, when
from llm_train_api.client import Client, NotFound


@click.group(context_settings=CONTEXT)
def datasets() -> None:
    """Datasets on the service at --url (LLM_TRAIN_API_URL)."""


@client_command(datasets, "upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="Dataset name (default: the file name without its suffix).")
@click.option("--format", "fmt", type=click.Choice(["txt", "jsonl"]),
              help="Default: from the suffix (.jsonl/.ndjson: jsonl, else txt).")
def upload(api: Client, path: str, name: str | None, fmt: str | None, as_json: bool) -> None:
    """Upload or replace a dataset (UTF-8 text or JSON Lines, streamed)."""
    name = name or Path(path).stem
    info = api.upload_dataset(name, path, format=fmt)
    if as_json:
        print_json(info)
    else:
        click.echo(f"{info.name}: uploaded ({info.format}, {info.kind}, {size(info.size_bytes)}, "
                   f"{info.lines} lines, sha256 {(info.sha256 or '')[:12]})")


@client_command(datasets, "list")
def list_cmd(api: Client, as_json: bool) -> None:
    """List datasets (the built-in ones first)."""
    items = api.list_datasets()
    if as_json:
        print_json(items)
        return
    table(["NAME", "FORMAT", "KIND", "SIZE", "LINES", "BUILTIN", "CREATED (UTC)"],
          [[d.name, d.format, d.kind, size(d.size_bytes), d.lines, "yes" if d.builtin else "no",
            when(d.created_at)] for d in items])


@client_command(datasets, "rm")
@click.argument("names", nargs=-1, required=True)
@click.option("--missing-ok", is_flag=True, help="A dataset that does not exist is no error.")
def rm(api: Client, names: tuple[str, ...], missing_ok: bool, as_json: bool) -> None:
    """Delete datasets (refused while queued or running jobs use them)."""
    for name in names:
        try:
            api.delete_dataset(name)
        except NotFound:
            if not missing_ok:
                raise
        if as_json:
            click.echo(json.dumps({"name": name, "deleted": True}))
        else:
            click.echo(f"{name}: deleted")
