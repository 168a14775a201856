"""A job's checkpoints as resources, minus HTTP: listing them, finding one to download,
and resolving ``from_checkpoint`` (a branch) when a job is created.

What a job has kept is its folder's manifest (:mod:`llm_train_api.training.manifest`,
written by the trainers); the API never imports torch, it only reads that file and hashes
bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_train_api.artifacts import checkpoint_pins
from llm_train_api.artifacts.dataset_errors import DiskFull
from llm_train_api.artifacts.datasets import DISK_FULL_ERRNOS
from llm_train_api.artifacts.jobs import job_dir, job_dir_of
from llm_train_api.domain import DomainError, InvalidRequest, Job, JobNotFound
from llm_train_api.store.jobs import JobRepository
from llm_train_api.training import manifest

FROM_CHECKPOINT_RE = re.compile(r"^(?P<job>[A-Za-z0-9][A-Za-z0-9._-]{0,127})"
                                r"(?::(?P<step>[0-9]{1,10}))?$")


class CheckpointNotFound(DomainError):
    """The job has no checkpoint at that step (404)."""


class CheckpointCorrupt(DomainError):
    """The checkpoint's bytes no longer match the sha256 recorded when it was written
    (409: the resource exists, but in a state that cannot be served or branched from)."""


def listing(data_dir: str | os.PathLike[str], job: Job) -> list[dict[str, Any]]:
    """Every checkpoint the job keeps, oldest first, with ``is_best`` set on the best."""
    entries = manifest.read(job_dir(data_dir, job))
    chosen = manifest.best(entries)
    return [{"step": e["step"], "created_at": e.get("created_at"),
             "metrics": e.get("metrics") or {}, "size": e.get("size"),
             "sha256": e.get("sha256"), "status": e.get("status"),
             "files": e.get("files") or {},
             "is_best": chosen is not None and e["step"] == chosen["step"]}
            for e in entries]


def verified(data_dir: str | os.PathLike[str], job: Job, step: int
             ) -> tuple[Path, Mapping[str, Any]]:
    """The checkpoint's path and entry once its bytes hash to what was recorded;
    CheckpointNotFound or CheckpointCorrupt otherwise."""
    folder = job_dir(data_dir, job)
    entry = manifest.find(manifest.read(folder), step)
    if entry is None:
        raise CheckpointNotFound(f"Job {job.id!r} has no checkpoint at step {step}.")
    path = manifest.resolve(folder, entry)
    problem = (f"{entry.get('path')!r} is not a checkpoint path" if path is None
               else entry.get("problem") if entry.get("status") != manifest.GOOD
               else manifest.verify(folder, entry))
    if problem or path is None:
        raise CheckpointCorrupt(f"The checkpoint of job {job.id!r} at step {step} is "
                                f"corrupt and cannot be used: {problem}")
    return path, entry


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, {"json": {"from_checkpoint": [message]}})


def resolve_origin(value: str, *, jobs: JobRepository, scope: str | None,
                   data_dir: str | os.PathLike[str], model_name: str,
                   hyperparameters: Mapping[str, Any], pin: bool = True) -> dict[str, Any]:
    """``"<job_id>"`` or ``"<job_id>:<step>"`` as the origin a branched job records: the
    source's ``job_id`` and ``created_us``, the ``step`` and the checkpoint's ``sha256``.

    The source must exist and be visible to the caller (``scope``: a user's own jobs
    only), else JobNotFound (404, as for a job that does not exist). Without a step the
    best checkpoint is taken (lowest validation loss), else the newest. The step must be
    kept (422) and intact (CheckpointCorrupt, 409); the model must be the same, and for
    a fine-tuning job the same method and LoRA settings (422): the weights must fit.

    With ``pin`` (a branch about to be created, not a dry run) the checkpoint is pinned
    for the branch (artifacts.checkpoint_pins), so that the source pruning it before the
    branch starts takes nothing away, and it is the pin whose bytes are verified."""
    match = FROM_CHECKPOINT_RE.match(value)
    if match is None:
        raise _invalid("Must be '<job_id>' or '<job_id>:<step>'.")
    source = jobs.get_job(match["job"])
    if scope is not None and source.owner != scope:
        raise JobNotFound(source.id)
    if source.model_name != model_name:
        raise _invalid(f"Job {source.id!r} trained {source.model_name!r}, not "
                       f"{model_name!r}: a branch continues the same model.")
    for key in ("method", "lora"):
        if source.model_kind == "hf" and source.hyperparameters.get(key) != \
                hyperparameters.get(key):
            raise _invalid(f"Job {source.id!r} used another {key!r}: a branch needs the "
                           "same trained weights (method and LoRA settings).")
    folder = job_dir(data_dir, source)
    entries = manifest.read(folder)
    if match["step"] is None:
        chosen = manifest.best(entries) or next(
            (e for e in reversed(entries) if e.get("status") == manifest.GOOD), None)
        if chosen is None:
            raise _invalid(f"Job {source.id!r} has no checkpoint to branch from.")
        step = int(chosen["step"])
    else:
        step = int(match["step"])
    entry = manifest.find(entries, step)
    if entry is None:
        raise _no_checkpoint(source, step, entries)
    if not pin:
        _, entry = verified(data_dir, source, step)
    elif entry.get("status") != manifest.GOOD or not isinstance(entry.get("sha256"), str):
        raise CheckpointCorrupt(f"The checkpoint of job {source.id!r} at step {step} is "
                                f"corrupt and cannot be used: {entry.get('problem')}")
    else:
        _pin_verified(folder, source, entry)
    return {"job_id": source.id, "created_us": source.revision.created_us, "step": step,
            "sha256": entry["sha256"]}


def _no_checkpoint(source: Job, step: int, entries: list[dict[str, Any]]) -> InvalidRequest:
    kept = ", ".join(str(e["step"]) for e in entries) or "none"
    return _invalid(f"Job {source.id!r} has no checkpoint at step {step} (kept: {kept}).")


def _pin_verified(folder: Path, source: Job, entry: Mapping[str, Any]) -> None:
    """Pin the checkpoint and hash the pin: a pin of other bytes is removed and refused
    (CheckpointCorrupt); a checkpoint pruned meanwhile is a 422 as if it had been gone."""
    step = int(entry["step"])
    try:
        pinned = checkpoint_pins.pin(folder, entry)
    except FileNotFoundError:
        raise _no_checkpoint(source, step, manifest.read(folder)) from None
    except ValueError as exc:
        raise CheckpointCorrupt(f"The checkpoint of job {source.id!r} at step {step} "
                                f"cannot be used: {exc}") from None
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFull("The disk is full: the checkpoint to branch from could not be "
                           "held for the new job.") from None
        raise
    problem = manifest.verify_branch(manifest.branch_record(pinned, entry, {}))
    if problem is None:
        return
    checkpoint_pins.unpin(pinned)
    original = manifest.resolve(folder, entry)
    if original is None or not original.exists():
        raise _no_checkpoint(source, step, manifest.read(folder))  # pruned mid-way
    raise CheckpointCorrupt(f"The checkpoint of job {source.id!r} at step {step} is "
                            f"corrupt and cannot be used: {problem}")


def prepare_branch(data_dir: str | os.PathLike[str], job: Job, folder: Path) -> str | None:
    """Before a branched job's run: write ``branch.json`` naming its verified source
    checkpoint (its pin, where the branch has one); None when done (or not a branch),
    else why the job cannot run."""
    origin = job.origin
    if not origin:
        return None
    source_dir = job_dir_of(data_dir, str(origin["job_id"]), int(origin["created_us"]))
    pinned = checkpoint_pins.find(source_dir, origin)
    if pinned is not None:
        path, entry = pinned
    else:
        found = manifest.find(manifest.read(source_dir), int(origin["step"]))
        path = None if found is None else manifest.resolve(source_dir, found)
        if found is None or path is None:
            return (f"the checkpoint to branch from (job {origin['job_id']!r}, step "
                    f"{origin['step']}) no longer exists")
        if origin.get("sha256") not in (None, found.get("sha256")):
            return (f"the checkpoint to branch from (job {origin['job_id']!r}, step "
                    f"{origin['step']}) was rewritten since the branch was created")
        entry = found
    body = manifest.branch_record(path, entry, origin)
    problem = manifest.verify_branch(body)
    if problem:
        return f"the checkpoint to branch from is unusable: {problem}"
    manifest.write_branch(folder, body)
    return None
