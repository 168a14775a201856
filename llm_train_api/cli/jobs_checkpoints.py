"""`jobs checkpoints`, `jobs download-checkpoint` and `jobs compare`: a job's kept
checkpoints, one of them downloaded (verified by the server against its sha256), and
several jobs' hyperparameters and results side by side."""

from __future__ import annotations

import json
from typing import Any

import click

from llm_train_api.cli.common import (
    DownloadBar,
    client_command,
    fail,
    number,
    print_json,
    size,
    table,
)
from llm_train_api.cli.jobs import jobs
from llm_train_api.client import Client


@client_command(jobs, "checkpoints")
@click.argument("job_id")
def checkpoints(api: Client, job_id: str, as_json: bool) -> None:
    """A job's kept checkpoints: step, metrics, size, sha256; * marks the best."""
    items = api.list_checkpoints(job_id)
    if as_json:
        print_json(items)
        return
    table(["STEP", "BEST", "STATUS", "TRAIN_LOSS", "VAL_LOSS", "VAL_PPL", "VAL_ACC", "SIZE",
           "CREATED (UTC)", "SHA256"],
          [[c.step, "*" if c.is_best else "", c.status, number(c.metrics.get("train_loss")),
            number(c.metrics.get("val_loss")), number(c.metrics.get("val_perplexity")),
            number(c.metrics.get("val_token_accuracy")), size(c.size), c.created_at or "",
            c.sha256 or ""] for c in items])


@client_command(jobs, "download-checkpoint")
@click.argument("job_id")
@click.argument("step", type=click.IntRange(min=0))
@click.option("-o", "--output", "out", type=click.Path(), default=".", show_default=True,
              help="A file to write the tar to, or a folder to put JOB_ID-step-STEP.tar in; "
              "with --extract, the new folder to unpack into.")
@click.option("--extract", is_flag=True, help="Unpack as it arrives.")
def download_checkpoint(api: Client, job_id: str, step: int, out: str, extract: bool,
                        as_json: bool) -> None:
    """Download one checkpoint (the server checks its sha256 before sending it)."""
    try:
        with DownloadBar(f"downloading checkpoint {step} of {job_id}") as bar:
            path = api.download_checkpoint(job_id, step, out, extract=extract, progress=bar)
    except OSError as exc:
        fail(f"cannot write the download: {exc}")
    if as_json:
        print_json({"job_id": job_id, "step": step, "path": str(path), "extracted": extract})
    else:
        click.echo(f"{job_id}: checkpoint {step} in {path}")


def hyperparameter_diff(hps: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The hyperparameters (flattened: ``lora.r``) whose values differ between the jobs."""
    def flat(hp: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in hp.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    flats = [flat(hp) for hp in hps]
    keys = sorted(set().union(*flats)) if flats else []
    return {k: [f.get(k) for f in flats] for k in keys
            if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1}


@client_command(jobs, "compare")
@click.argument("job_ids", nargs=-1, required=True)
def compare(api: Client, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Several jobs side by side: the hyperparameters that differ, final and best
    validation loss, and the best checkpoint."""
    found = [api.get_job(job_id) for job_id in job_ids]
    diff = hyperparameter_diff([j.hyperparameters for j in found])
    if as_json:
        print_json({"jobs": found, "differences": diff})
        return
    rows: list[list[Any]] = [["model", *(j.model_name for j in found)],
                             ["status", *(j.status for j in found)]]
    rows += [[key, *(json.dumps(v) if v is not None else "-" for v in values)]
             for key, values in diff.items()]
    for label, part, metric in (("final val_loss", "final", "val_loss"),
                                ("best val_loss", "best", "val_loss"),
                                ("final val_acc", "final", "val_token_accuracy")):
        rows.append([label, *(number(((j.result or {}).get(part) or {}).get(metric))
                              for j in found)])
    rows.append(["best checkpoint", *((j.result or {}).get("best_checkpoint", "-")
                                      for j in found)])
    table(["", *job_ids], rows)
