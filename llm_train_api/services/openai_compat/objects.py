"""The objects OpenAI's API returns (and its SDK parses), built from native ones:
`fine_tuning.job`, `fine_tuning.job.event`, `file`, `model`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from llm_train_api.domain import Job, JobEvent, JobStatus
from llm_train_api.services.openai_compat.files import StoredFile
from llm_train_api.services.openai_compat.hyperparams import (
    openai_hyperparameters,
    openai_method,
)
from llm_train_api.services.openai_compat.names import (
    RESULT_FILE_PREFIX,
    openai_model_name,
    org_of,
    result_file_id,
)
from llm_train_api.services.openai_compat.statuses import openai_status
from llm_train_api.store.outbox import OPENAI_API
from llm_train_api.training.hf.hyperparams import DEFAULTS


def epoch(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp())


def fine_tuned_model_name(job: Job) -> str | None:
    """The fine-tuned model of a succeeded job, as `/v1` names it: OpenAI's spelling for
    a `/v1` job, the native name for a job made through the native API."""
    native = job.fine_tuned_model
    if native is None:
        return None
    if job.api == OPENAI_API:
        return openai_model_name(job.model_name, job.owner, job.suffix, job.id)
    return native


def trained_tokens(job: Job) -> int | None:
    """Tokens the run trained on (its training tokens per epoch times the epochs it
    ran), once it succeeded; None before, and for runs that did not report them."""
    progress = job.progress or {}
    tokens, per_epoch = progress.get("train_tokens"), progress.get("steps_per_epoch")
    steps = progress.get("total_steps") or progress.get("step")
    if job.status is not JobStatus.SUCCEEDED or not tokens or not per_epoch or not steps:
        return None
    return int(round(tokens * steps / per_epoch))


def estimated_finish(job: Job, now: float | None = None) -> int | None:
    """When a running job should finish, from its progress's ETA (epoch seconds)."""
    eta = (job.progress or {}).get("eta_s")
    if job.status is not JobStatus.RUNNING or not isinstance(eta, (int, float)):
        return None
    return int((time.time() if now is None else now) + eta)


def _seed(job: Job) -> int | None:
    """The job's seed: a fine-tuning job's (the trainer's default when none was given),
    or an integer `seed` hyperparameter of another job; None otherwise."""
    seed = job.hyperparameters.get("seed", DEFAULTS["seed"] if job.model_kind == "hf"
                                   else None)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def job_object(job: Job) -> dict[str, Any]:
    """A native job as OpenAI's `fine_tuning.job` object."""
    hyperparameters = job.hyperparameters if job.model_kind == "hf" else {}
    error = None
    if job.status is JobStatus.FAILED:
        error = {"code": "job_failed", "message": job.error_message or "The job failed.",
                 "param": None}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": epoch(job.created_at),
        "error": error,
        "fine_tuned_model": fine_tuned_model_name(job),
        "finished_at": epoch(job.finished_at),
        "hyperparameters": openai_hyperparameters(hyperparameters),
        "method": openai_method(hyperparameters),
        "model": job.model_name,
        "organization_id": org_of(job.owner),
        "result_files": ([result_file_id(job.id)]
                         if job.status is JobStatus.SUCCEEDED else []),
        "seed": _seed(job),
        "status": openai_status(job.status),
        "trained_tokens": trained_tokens(job),
        "training_file": job.dataset,
        "validation_file": job.validation_dataset,
        "estimated_finish": estimated_finish(job),
        "integrations": [],
        "metadata": job.metadata,
        "user_provided_suffix": job.suffix,
    }


# Messages by event kind (the verbs whose kind says more than the status they reach),
# then by the status an event reaches (a worker's claim, finish, a requeue, a cancel).
_KIND_MESSAGES = {
    "created": "Created fine-tuning job: {id}",
    "pause_requested": "Pause requested: the job pauses once its worker has checkpointed the run",
    "pause_withdrawn": "The pause request was withdrawn",
    "resumed": "The job was resumed",
}
_STATUS_MESSAGES = {
    "running": "Fine-tuning job started",
    "succeeded": "The job has successfully completed",
    "failed": "The job failed",
    "cancelled": "The job was cancelled",
    "queued": "The job was returned to the queue",
    "paused": "The job was paused",
}
_QUIET_KINDS = frozenset({"created", "resumed"})


def job_event_object(job: Job, event: JobEvent) -> dict[str, Any]:
    """A native job event as a `fine_tuning.job.event` (type `message`)."""
    target = event.to_status.value if event.to_status is not None else None
    template = _KIND_MESSAGES.get(event.kind) or _STATUS_MESSAGES.get(target or "")
    message = (template.format(id=job.id) if template is not None
               else f"{event.kind}: {target or ''}".strip(": "))
    if event.message:
        message = f"{message}: {event.message}"
    level = ("error" if target == "failed" else
             "warn" if target in ("queued", "cancelled") and event.kind not in _QUIET_KINDS
             else "info")
    data: dict[str, Any] = {"kind": event.kind}
    if target == "succeeded" and job.fine_tuned_model is not None:
        data["fine_tuned_model"] = fine_tuned_model_name(job)
    return {"id": f"ftevent-e{event.seq}", "object": "fine_tuning.job.event",
            "created_at": epoch(event.at), "level": level, "message": message,
            "data": data, "type": "message"}


def metrics_event_object(seq: int, step: int, at_us: int, point: Mapping[str, Any],
                         total_steps: int | None) -> dict[str, Any]:
    """A logged metrics point as OpenAI's `Step N/M: training loss=...` metrics event."""
    loss = point.get("train_loss")
    shown = f"Step {step}/{total_steps}" if total_steps else f"Step {step}"
    parts = []
    if isinstance(loss, (int, float)):
        parts.append(f"training loss={loss:.4f}")
    if isinstance(point.get("val_loss"), (int, float)):
        parts.append(f"validation loss={point['val_loss']:.4f}")
    data: dict[str, Any] = {"step": step, "train_loss": loss,
                            "total_steps": total_steps}
    if point.get("val_loss") is not None:
        data["valid_loss"] = point["val_loss"]
    for key in ("epoch", "lr", "tokens_per_s"):
        if point.get(key) is not None:
            data[key] = point[key]
    return {"id": f"ftevent-m{seq}", "object": "fine_tuning.job.event",
            "created_at": at_us // 1_000_000, "level": "info",
            "message": f"{shown}: {', '.join(parts)}" if parts else shown,
            "data": data, "type": "metrics"}


def file_object(stored: StoredFile) -> dict[str, Any]:
    """An uploaded file (a dataset) as OpenAI's `file` object."""
    return {"id": stored.id, "object": "file", "bytes": stored.info.size_bytes,
            "created_at": epoch(stored.info.created_at), "filename": stored.filename,
            "purpose": stored.purpose, "status": "processed", "status_details": None,
            "expires_at": None}


RESULT_FILENAME = "step_metrics.csv"
RESULT_PURPOSE = "fine-tune-results"


def result_file_object(job: Job, size: int) -> dict[str, Any]:
    """A succeeded job's metrics CSV as a `file` object (generated when read)."""
    return {"id": result_file_id(job.id), "object": "file", "bytes": size,
            "created_at": epoch(job.finished_at or job.updated_at),
            "filename": RESULT_FILENAME, "purpose": RESULT_PURPOSE, "status": "processed",
            "status_details": None, "expires_at": None}


RESULT_COLUMNS = ("step", "train_loss", "valid_loss", "learning_rate", "epoch")


def metrics_csv(points: list[Mapping[str, Any]]) -> bytes:
    """A job's metric points as OpenAI's step_metrics.csv (empty cells where a point has
    no value)."""
    keys = ("step", "train_loss", "val_loss", "lr", "epoch")
    lines = [",".join(RESULT_COLUMNS)]
    for point in points:
        lines.append(",".join("" if point.get(k) is None else str(point[k]) for k in keys))
    return ("\n".join(lines) + "\n").encode()


def model_object(model_id: str, created: datetime | None, owned_by: str) -> dict[str, Any]:
    """A model as OpenAI's `model` object."""
    return {"id": model_id, "object": "model", "created": epoch(created) or 0,
            "owned_by": owned_by}


# OpenAI's checkpoint metric -> the native metrics line's key. The native validation loss
# is over `eval_steps` batches of the validation set, OpenAI's `valid_*` (a sample of it);
# nothing reports OpenAI's `full_valid_*`, which stay null.
_CHECKPOINT_METRICS = {
    "train_loss": "train_loss",
    "train_mean_token_accuracy": "train_token_accuracy",
    "valid_loss": "val_loss",
    "valid_mean_token_accuracy": "val_token_accuracy",
    "full_valid_loss": None,
    "full_valid_mean_token_accuracy": None,
}


def checkpoint_object(job: Job, step: int, created: datetime | None,
                      metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint a job keeps (services.checkpoints.listing) as OpenAI's
    `fine_tuning.job.checkpoint`. `fine_tuned_model_checkpoint` is the name of the model
    the job makes with the step appended (`ft:...:<job id>:ckpt-step-<n>`, OpenAI's own
    spelling, for a `/v1` job; a native job's `output_model`, or its id when it registers
    none)."""
    base = (openai_model_name(job.model_name, job.owner, job.suffix, job.id)
            if job.api == OPENAI_API else job.output_model or job.id)
    point = dict(metrics or {})
    values: dict[str, Any] = {"step": step}
    for name, native in _CHECKPOINT_METRICS.items():
        value = point.get(native) if native is not None else None
        values[name] = value if isinstance(value, (int, float)) else None
    return {"id": f"ftckpt-{job.id}-{step}", "object": "fine_tuning.job.checkpoint",
            "created_at": epoch(created) or 0, "fine_tuning_job_id": job.id,
            "fine_tuned_model_checkpoint": f"{base}:ckpt-step-{step}",
            "step_number": step, "metrics": values}


__all__ = ["OPENAI_API", "RESULT_FILE_PREFIX", "checkpoint_object", "file_object",
           "job_event_object", "job_object", "metrics_csv", "metrics_event_object",
           "model_object", "result_file_object"]
