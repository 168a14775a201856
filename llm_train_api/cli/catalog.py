"""`llm-train-api models ...`: the built-in GPTs, and Hugging Face-format models imported
from a folder or found under the server's MODEL_ROOTS.

`models` alone lists them and `models NAME` shows one, as `models list` and `models get
NAME` do.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from llm_train_api.cli.common import (
    CONTEXT,
    DownloadBar,
    client_command,
    fail,
    print_json,
    size,
    table,
    when,
)
from llm_train_api.client import Client, Model, NotFound


class _ModelsGroup(click.Group):
    """A group whose bare form lists (`models`, `models --json`) and whose unknown first
    word is a model name (`models gpt-nano`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
            args = ["list", *args]
        elif not args[0].startswith("-") and args[0] not in self.commands:
            args = ["get", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ModelsGroup, context_settings=CONTEXT)
def models() -> None:
    """Models: the built-in catalog, and imported Hugging Face-format models."""


def _origin(m: Model) -> str:
    if m.kind == "builtin":
        return "built-in"
    if m.source == "root":
        return "root"
    return f"owner: {m.owner}" if m.owner else "published"


@client_command(models, "list")
def list_cmd(api: Client, as_json: bool) -> None:
    """List models: built-in first, then imported and root ones."""
    items = api.list_models()
    if as_json:
        print_json(items)
        return
    table(["NAME", "KIND", "ARCHITECTURE", "CONTEXT", "PARAMETERS", "SIZE", "ORIGIN"],
          [[m.name, m.kind,
            m.architecture or f"GPT {m.n_layer}x{m.n_embd}",
            m.context_length if m.kind != "builtin" else m.block_size,
            f"{m.param_count:,}", size(m.size_bytes) if m.size_bytes is not None else "-",
            _origin(m)] for m in items])


@client_command(models, "get")
@click.argument("name")
@click.option("--owner", help="Admins: that user's own import of NAME.")
def get(api: Client, name: str, owner: str | None, as_json: bool) -> None:
    """One model in detail."""
    model = api.get_model(name, owner=owner)
    if as_json:
        print_json(model)
        return
    if model.kind != "builtin":
        click.echo(f"{model.name}: {model.architecture} ({model.model_type}), "
                   f"{model.param_count:,} parameters, context {model.context_length}, "
                   f"vocabulary {model.vocab_size}, chat template "
                   f"{'yes' if model.has_chat_template else 'no'}")
        click.echo(f"{_origin(model)}, {size(model.size_bytes)}, sha256 {model.sha256}, "
                   f"stored {when(model.created_at)} UTC")
        return
    click.echo(f"{model.name}: {model.n_layer} layers, {model.n_head} heads, width "
               f"{model.n_embd}, context {model.block_size}, {model.param_count:,} parameters")
    if model.description:
        click.echo(model.description)
    click.echo("")
    table(["HYPERPARAMETER", "TYPE", "DEFAULT", "DESCRIPTION"],
          [[h.get("name"), h.get("type"), h.get("default"), h.get("doc")]
           for h in model.hyperparameters])


@client_command(models, "import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="The model's name on the service.")
@click.option("--gzip", "compress", is_flag=True,
              help="Compress the archive as it is sent (safetensors compress little).")
def import_cmd(api: Client, folder: str, name: str, compress: bool, as_json: bool) -> None:
    """Import (or replace) a Hugging Face-format model folder, streamed as a tar archive.

    FOLDER holds config.json, *.safetensors, tokenizer files (a Hugging Face cache
    snapshot works: its links are followed). Pickle weights (*.bin, *.pt, ...) are
    refused before anything is sent.
    """
    from llm_train_api.client.model_archive import model_files

    try:
        total = sum(p.stat().st_size for p in model_files(folder))
    except ValueError as exc:
        fail(str(exc))
    bar: Any = click.progressbar(length=total, label=f"uploading {name}", file=sys.stderr,
                                 show_pos=False, show_percent=True)
    with bar:
        model = api.import_model(name, folder, gzip=compress, progress=bar.update)
    if as_json:
        print_json(model)
    else:
        click.echo(f"{model.name}: imported ({model.architecture}, {model.param_count:,} "
                   f"parameters, {size(model.size_bytes)}, sha256 {(model.sha256 or '')[:12]})")


@client_command(models, "download")
@click.argument("name")
@click.option("-o", "--output", "out", type=click.Path(), default=".", show_default=True,
              help="A file to write the archive to, or a folder to put NAME.tar in; with "
              "--extract, the new folder to unpack into (NAME inside it if it exists).")
@click.option("--extract", is_flag=True,
              help="Unpack as it arrives: a folder that from_pretrained loads.")
@click.option("--owner", help="Admins: that user's model NAME.")
def download(api: Client, name: str, out: str, extract: bool, owner: str | None,
             as_json: bool) -> None:
    """Download a Hugging Face-format model (an import, a fine-tuned result, a root
    folder) as a tar archive, or with --extract as a model folder."""
    try:
        with DownloadBar(f"downloading {name}") as bar:
            path = api.download_model(name, out, extract=extract, owner=owner, progress=bar)
    except OSError as exc:
        fail(f"cannot write the download: {exc}")
    if as_json:
        print_json({"name": name, "path": str(path), "extracted": extract})
    else:
        click.echo(f"{name}: {path}")


@client_command(models, "delete")
@click.argument("names", nargs=-1, required=True)
@click.option("--owner", help="Admins: delete that user's own imports.")
@click.option("--missing-ok", is_flag=True, help="A model that does not exist is no error.")
def delete(api: Client, names: tuple[str, ...], owner: str | None, missing_ok: bool,
           as_json: bool) -> None:
    """Delete imported models (refused while queued or running jobs name them)."""
    import json

    for name in names:
        try:
            api.delete_model(name, owner=owner)
        except NotFound:
            if not missing_ok:
                raise
        click.echo(json.dumps({"name": name, "deleted": True}) if as_json
                   else f"{name}: deleted")
