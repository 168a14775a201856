"""`llm-train-api jobs ...`: submit, inspect, follow and stop training jobs."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import click

from llm_train_api.cli.common import (
    CONTEXT,
    EXIT_TIMEOUT,
    DownloadBar,
    client_command,
    fail,
    number,
    print_json,
    table,
    when,
)
from llm_train_api.cli.progress import describe, exit_code, progress_text, wait
from llm_train_api.client import Client, Job

STATUSES = ("queued", "running", "paused", "succeeded", "failed", "cancelled")
_WAIT_HELP = ("Exit codes: 0 succeeded, 3 failed, 4 cancelled, 124 timed out, "
              "1 API or connection error.")


@click.group(context_settings=CONTEXT)
def jobs() -> None:
    """Training jobs on the service at --url (LLM_TRAIN_API_URL)."""


def parse_hp(pairs: tuple[str, ...], hp_file: str | None) -> dict[str, Any]:
    """--hp-file's object, then each --hp key=value over it; a value is JSON when it parses
    as JSON (numbers, true, null, lists) and a plain string otherwise."""
    hp: dict[str, Any] = {}
    if hp_file:
        try:
            loaded = json.loads(Path(hp_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"cannot read {hp_file}: {exc}",
                                     param_hint="--hp-file") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must hold a JSON object", param_hint="--hp-file")
        hp.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--hp")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        hp[key.strip()] = value
    return hp


#: A DPO job's metrics (GET /jobs/{id}/metrics), as columns of `jobs metrics`.
REWARD_COLUMNS = ("rewards/chosen", "rewards/rejected", "rewards/margins",
                  "rewards/accuracies", "val_rewards/margins", "val_rewards/accuracies")


def finetune_hp(hp: dict[str, Any], method: str | None, lora_r: int | None,
                lora_alpha: float | None, dpo_beta: float | None = None,
                dpo_loss_type: str | None = None) -> dict[str, Any]:
    """The fine-tuning options set over the hyperparameters (`lora` and `dpo` merged, not
    replaced)."""
    if method is not None:
        hp["method"] = method
    for name, values in (("lora", (("r", lora_r), ("alpha", lora_alpha))),
                         ("dpo", (("beta", dpo_beta), ("loss_type", dpo_loss_type)))):
        given = {k: v for k, v in values if v is not None}
        if given:
            current = hp.get(name)
            hp[name] = {**(current if isinstance(current, dict) else {}), **given}
    return hp


def plan_text(plan: dict[str, Any]) -> str:
    """A dry run's plan of a fine-tuning run, in one paragraph."""
    memory = plan.get("estimated_memory_bytes")
    unit = "pairs" if "pairs" in plan else "examples"
    return (f"plan: {plan.get('examples')} {plan.get('kind')} {unit} "
            f"({plan.get('truncated')} truncated, {plan.get('dropped')} dropped), "
            f"{plan.get('train_tokens')} training tokens in {plan.get('train_sequences')} "
            f"sequences, {plan.get('total_steps')} steps ({plan.get('steps_per_epoch')} per "
            f"epoch), {plan.get('method')}"
            + (f", about {memory / 2**30:.2f} GiB" if memory else ""))


def _wait_and_exit(api: Client, job_id: str, timeout: float | None, interval: float,
                   as_json: bool) -> None:
    # With --json the progress goes to stderr, so that stdout is the final JSON alone.
    out = sys.stderr if as_json else sys.stdout
    job, final = wait(api, job_id, out=out, tty=out.isatty(), timeout=timeout,
                      interval=interval)
    if as_json:
        print_json(job)
    if not final:
        fail(f"timed out after {timeout:g}s waiting for job {job_id!r} "
             f"(still {job.status})", EXIT_TIMEOUT)
    if not as_json:
        click.echo(describe(job, bar=False))
    sys.exit(exit_code(job))


_wait_options = [
    click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Give up after this many seconds (exit 124). Default: wait forever."),
    click.option("--interval", type=click.FloatRange(min=0.05), default=1.0,
                 show_default=True, help="Seconds between polls."),
]


def _with(options: list[Any]):
    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f
    return apply


@client_command(jobs, "submit")
@click.option("--model", "model_name", required=True, help="model_name (see `models`).")
@click.option("--dataset", required=True, help="Dataset name, e.g. builtin:tinytext.")
@click.option("--hp", "hp_pairs", multiple=True, metavar="KEY=VALUE",
              help="A hyperparameter (repeatable); VALUE is JSON if it parses, else a string.")
@click.option("--hp-file", type=click.Path(exists=True, dir_okay=False),
              help="Hyperparameters as a JSON object file (--hp overrides its keys).")
@click.option("--priority", type=click.IntRange(-1000, 1000), help="Higher runs first.")
@click.option("--job-id", help="Your own id (default: the client makes one; resubmitting the "
              "same id and body is a no-op).")
@click.option("--max-attempts", type=click.IntRange(1, 100), help="Runs allowed if workers die.")
@click.option("--max-runtime", "max_runtime_seconds", type=click.IntRange(min=1),
              help="Seconds after which a run fails with 'deadline exceeded'.")
@click.option("--cpus", type=click.IntRange(1, 1024), help="CPU cores for the trainer.")
@click.option("--gpus", type=click.IntRange(0, 64), help="GPUs for the trainer.")
@click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True),
              help="Memory the job may use, GiB.")
@click.option("--method", type=click.Choice(("lora", "full", "qlora", "dpo")),
              help="Fine-tuning (a Hugging Face-format --model): hyperparameter `method` "
              "(default lora; dpo: preference tuning on a preference dataset).")
@click.option("--lora-r", type=click.IntRange(min=1), help="Fine-tuning: LoRA rank "
              "(hyperparameter lora.r).")
@click.option("--lora-alpha", type=click.FloatRange(min=0, min_open=True),
              help="Fine-tuning: LoRA scaling numerator (lora.alpha).")
@click.option("--dpo-beta", type=click.FloatRange(min=0, min_open=True),
              help="DPO: how close to the reference the model stays (dpo.beta, default 0.1).")
@click.option("--dpo-loss-type", type=click.Choice(("sigmoid", "hinge", "ipo")),
              help="DPO: the loss (dpo.loss_type, default sigmoid).")
@click.option("--validation-dataset", help="Fine-tuning: a dataset to validate on instead "
              "of a held-out share of --dataset.")
@click.option("--output-model", help="Fine-tuning: the model name the result gets "
              "(default: the job id).")
@click.option("--from-checkpoint", metavar="JOB[:STEP]", help="Branch: start from the "
              "weights of that job's checkpoint (its best without STEP).")
@click.option("--dry-run", is_flag=True, help="Only validate; create nothing (a fine-tuning "
              "job also prints its plan: examples, tokens, steps, memory).")
@click.option("--wait", "wait_", is_flag=True,
              help="Wait for the job to end, with a progress bar. " + _WAIT_HELP)
@_with(_wait_options)
def submit(api: Client, model_name: str, dataset: str, hp_pairs: tuple[str, ...],
           hp_file: str | None, priority: int | None, job_id: str | None,
           max_attempts: int | None, max_runtime_seconds: int | None, cpus: int | None,
           gpus: int | None, memory_gb: float | None, method: str | None,
           lora_r: int | None, lora_alpha: float | None, dpo_beta: float | None,
           dpo_loss_type: str | None, validation_dataset: str | None,
           output_model: str | None, from_checkpoint: str | None, dry_run: bool,
           wait_: bool,
           timeout: float | None, interval: float, as_json: bool) -> None:
    """Submit a training job: a built-in GPT from scratch, or fine-tuning a Hugging
    Face-format model (see `models`). --method, --lora-* and --dpo-* set those
    hyperparameters over --hp and --hp-file."""
    hp = finetune_hp(parse_hp(hp_pairs, hp_file), method, lora_r, lora_alpha, dpo_beta,
                     dpo_loss_type)
    wanted = {"cpus": cpus, "gpus": gpus, "memory_gb": memory_gb}
    resources = {k: v for k, v in wanted.items() if v is not None} or None
    job = api.create_job(model_name, dataset, hp, job_id=job_id, priority=priority,
                         max_attempts=max_attempts, max_runtime_seconds=max_runtime_seconds,
                         resources=resources, dry_run=dry_run,
                         validation_dataset=validation_dataset, output_model=output_model,
                         from_checkpoint=from_checkpoint)
    if dry_run or not wait_:
        if as_json:
            print_json(job)
        else:
            verb = "valid (dry run, nothing created)" if dry_run else "submitted"
            click.echo(f"{job.id}: {verb} ({job.status}, {job.model_name} on {job.dataset}"
                       + (f", result: model {job.output_model}" if job.output_model else "")
                       + ")")
            if job.plan:
                click.echo(plan_text(job.plan))
        return
    if not as_json:
        click.echo(f"{job.id}: submitted ({job.model_name} on {job.dataset})")
    _wait_and_exit(api, job.id, timeout, interval, as_json)


@client_command(jobs, "wait")
@click.argument("job_id")
@_with(_wait_options)
def wait_cmd(api: Client, job_id: str, timeout: float | None, interval: float,
             as_json: bool) -> None:
    """Wait for a job to end, with a progress bar.

    On a terminal the bar is redrawn in place; otherwise (a pipe, a CI log) a plain line is
    printed each time the job moves on.

    Exit codes: 0 succeeded, 3 failed, 4 cancelled, 124 timed out, 1 API or connection
    error.
    """
    _wait_and_exit(api, job_id, timeout, interval, as_json)


def _progress_cell(job: Job) -> str:
    p = job.progress_info
    if p is None or p.step is None:
        return "-"
    return f"{p.step}/{p.total_steps}" if p.total_steps else str(p.step)


@client_command(jobs, "list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only these statuses (repeatable).")
@click.option("--model", "model_name", help="Only this model.")
@click.option("--dataset", help="Only this dataset.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Show at most this many jobs, newest first (0: all, across pages).")
def list_cmd(api: Client, statuses: tuple[str, ...], model_name: str | None,
             dataset: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    page_size = min(limit, 1000) if limit else 1000
    found = api.list_jobs(status=statuses, model_name=model_name, dataset=dataset,
                          page_size=page_size)
    items = list(itertools.islice(found, limit) if limit else found)
    if as_json:
        print_json(items)
        return
    table(["ID", "STATUS", "MODEL", "DATASET", "STEP", "CREATED (UTC)"],
          [[j.id, j.status, j.model_name, j.dataset, _progress_cell(j), when(j.created_at)]
           for j in items])


def _show_job(job: Job) -> None:
    rows = [("id", job.id), ("status", job.status), ("model", job.model_name),
            ("dataset", job.dataset),
            ("hyperparameters", json.dumps(job.hyperparameters, sort_keys=True)),
            ("priority", job.priority), ("attempts", f"{job.attempts}/{job.max_attempts}"),
            ("created", when(job.created_at)), ("started", when(job.started_at)),
            ("finished", when(job.finished_at))]
    if job.fine_tuned_model:
        rows.append(("fine-tuned model", job.fine_tuned_model))
    elif job.output_model:
        rows.append(("result", f"model {job.output_model} (once it succeeds)"))
    if job.origin:
        rows.append(("branched from", f"{job.origin.get('job_id')} step "
                                      f"{job.origin.get('step')}"))
    if job.result:
        best = job.result.get("best") or {}
        rows.append(("best checkpoint", f"step {job.result.get('best_checkpoint')} "
                                        f"(val_loss {best.get('val_loss')})"))
    if job.error_message:
        rows.append(("error", job.error_message))
    if job.api:
        rows.append(("api", job.api + (f" (suffix {job.suffix})" if job.suffix else "")))
    if job.metadata:
        rows.append(("metadata", json.dumps(job.metadata, sort_keys=True)))
    if job.worker:
        rows.append(("worker", job.worker))
    if job.pause_requested_at:
        rows.append(("pausing", f"asked {when(job.pause_requested_at)}"))
    progress = progress_text(job.progress_info, bar=False)
    if progress:
        rows.append(("progress", progress))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")


@client_command(jobs, "get")
@click.argument("job_id")
def get(api: Client, job_id: str, as_json: bool) -> None:
    """Show one job."""
    job = api.get_job(job_id)
    if as_json:
        print_json(job)
    else:
        _show_job(job)


@client_command(jobs, "download-adapter")
@click.argument("job_id")
@click.option("-o", "--output", "out", type=click.Path(), default=".", show_default=True,
              help="A file to write the archive to, or a folder to put JOB_ID-adapter.tar "
              "in; with --extract, the new folder to unpack into (JOB_ID-adapter inside it "
              "if it exists).")
@click.option("--extract", is_flag=True,
              help="Unpack as it arrives: a folder that PeftModel.from_pretrained loads.")
def download_adapter(api: Client, job_id: str, out: str, extract: bool,
                     as_json: bool) -> None:
    """Download a LoRA fine-tuning job's adapter (its artifact adapter.tar)."""
    try:
        with DownloadBar(f"downloading the adapter of {job_id}") as bar:
            path = api.download_adapter(job_id, out, extract=extract, progress=bar)
    except OSError as exc:
        fail(f"cannot write the download: {exc}")
    if as_json:
        print_json({"job_id": job_id, "path": str(path), "extracted": extract})
    else:
        click.echo(f"{job_id}: adapter in {path}")


@client_command(jobs, "cancel")
@click.argument("job_id")
def cancel(api: Client, job_id: str, as_json: bool) -> None:
    """Cancel a job (its trainer is stopped within about a second)."""
    job = api.cancel_job(job_id)
    if as_json:
        print_json(job)
    else:
        click.echo(f"{job.id}: {job.status}")


@client_command(jobs, "pause")
@click.argument("job_id")
def pause(api: Client, job_id: str, as_json: bool) -> None:
    """Pause a job: a queued one stops being claimable; a running one checkpoints and
    stops, freeing its worker. `jobs resume` continues it from that checkpoint."""
    job = api.pause_job(job_id)
    if as_json:
        print_json(job)
    elif job.pause_requested_at is not None:
        click.echo(f"{job.id}: pausing (its worker checkpoints and stops the run)")
    else:
        click.echo(f"{job.id}: {job.status}")


@client_command(jobs, "resume")
@click.argument("job_id")
def resume(api: Client, job_id: str, as_json: bool) -> None:
    """Resume a paused job: it is queued again and continues from its checkpoint."""
    job = api.resume_job(job_id)
    if as_json:
        print_json(job)
    else:
        click.echo(f"{job.id}: {job.status}")


@client_command(jobs, "delete")
@click.argument("job_id")
def delete(api: Client, job_id: str, as_json: bool) -> None:
    """Delete a job, whatever its status (a running one is stopped)."""
    api.delete_job(job_id)
    if as_json:
        click.echo(json.dumps({"id": job_id, "deleted": True}))
    else:
        click.echo(f"{job_id}: deleted")


@client_command(jobs, "events")
@click.argument("job_id")
def events(api: Client, job_id: str, as_json: bool) -> None:
    """A job's timeline: creation, claims, status changes, requeues."""
    items = list(api.job_events(job_id))
    if as_json:
        print_json(items)
        return
    table(["AT (UTC)", "KIND", "FROM", "TO", "ATTEMPT", "ACTOR", "MESSAGE"],
          [[when(e.at), e.kind, e.from_status, e.to_status, e.attempt, e.actor, e.message]
           for e in items])


@client_command(jobs, "metrics")
@click.argument("job_id")
@click.option("--after-step", type=click.IntRange(min=-1), help="Only steps after this one.")
def metrics(api: Client, job_id: str, after_step: int | None, as_json: bool) -> None:
    """A job's loss curve, one row per logged step; a DPO job's rewards too (margins,
    accuracies; VAL_ columns at each validation)."""
    points = api.job_metrics(job_id, after_step=after_step)
    if as_json:
        print_json(points)
        return
    rewards = [k for k in REWARD_COLUMNS if any(k in p.extra for p in points)]
    table(["STEP", "EPOCH", "TRAIN_LOSS", "VAL_LOSS", "LR", "TOKENS/S", "ELAPSED_S"]
          + [k.upper() for k in rewards],
          [[p.step, number(p.epoch), number(p.train_loss), number(p.val_loss), number(p.lr),
            number(p.tokens_per_s, 6), number(p.elapsed_s)]
           + [number(p.extra.get(k)) for k in rewards] for p in points])


@client_command(jobs, "logs", json_option=False)
@click.argument("job_id")
@click.option("--tail", "-n", type=click.IntRange(1, 100_000), help="Only the last N lines.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new lines until the job ends (reconnects by itself).")
def logs(api: Client, job_id: str, tail: int | None, follow: bool) -> None:
    """A job's training log (the trainer's stdout and stderr)."""
    if not follow:
        click.echo(api.job_logs(job_id, tail=tail), nl=False)
        return
    out = sys.stdout
    for line in api.follow_logs(job_id, tail=tail):
        out.write(line.text + "\n")
        out.flush()


# The checkpoint commands live in their own module and join this group when it loads.
from llm_train_api.cli import jobs_checkpoints  # noqa: E402,F401
