"""`llm-train-api models [NAME]`: the models the built-in trainer can train."""

from __future__ import annotations

import click

from llm_train_api.cli.common import client_command, print_json, table
from llm_train_api.client import Client


@click.group()
def _holder() -> None:  # pragma: no cover - only a place to build the command in
    pass


@client_command(_holder, "models")
@click.argument("name", required=False)
def models(api: Client, name: str | None, as_json: bool) -> None:
    """The model catalog, or one model in detail."""
    if name is None:
        items = api.list_models()
        if as_json:
            print_json(items)
            return
        table(["NAME", "LAYERS", "HEADS", "WIDTH", "CONTEXT", "PARAMETERS"],
              [[m.name, m.n_layer, m.n_head, m.n_embd, m.block_size, f"{m.param_count:,}"]
               for m in items])
        return
    model = api.get_model(name)
    if as_json:
        print_json(model)
        return
    click.echo(f"{model.name}: {model.n_layer} layers, {model.n_head} heads, width "
               f"{model.n_embd}, context {model.block_size}, {model.param_count:,} parameters")
    if model.description:
        click.echo(model.description)
    click.echo("")
    table(["HYPERPARAMETER", "TYPE", "DEFAULT", "DESCRIPTION"],
          [[h.get("name"), h.get("type"), h.get("default"), h.get("doc")]
           for h in model.hyperparameters])
