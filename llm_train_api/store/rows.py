"""Rows and values: the job columns every statement returns, a row as a `Job`, and the one
spelling of timestamps and JSON that is stored, hashed and compared.

Timestamps are integer microseconds since the epoch in the database (exact, sortable, the
same on SQLite and PostgreSQL) and aware UTC datetimes everywhere else.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta
from typing import Any

import orjson

from llm_train_api.domain import EPOCH, Job, JobStatus, NewJob
from llm_train_api.store.tables import jobs

JOB_COLUMNS = (
    jobs.c.seq,
    jobs.c.id,
    jobs.c.model_name,
    jobs.c.dataset,
    jobs.c.hyperparameters,
    jobs.c.status,
    jobs.c.error_message,
    jobs.c.created_us,
    jobs.c.updated_us,
    jobs.c.started_us,
    jobs.c.finished_us,
    jobs.c.version,
    jobs.c.priority,
    jobs.c.max_attempts,
    jobs.c.attempts,
    jobs.c.max_runtime_s,
    jobs.c.resources,
    jobs.c.dataset_sha256,
    jobs.c.progress,
    jobs.c.lease_owner,
    jobs.c.owner,
    jobs.c.validation_dataset,
    jobs.c.output_model,
    jobs.c.model_kind,
    jobs.c.origin,
    jobs.c.pause_requested_us,
    jobs.c.pauses,
    jobs.c.api,
    jobs.c.metadata,
    jobs.c.suffix,
)
_N_JOB_COLUMNS = len(JOB_COLUMNS)

# What a create writes, as bind parameters of the same names.
INSERT_COLUMNS = ("id", "model_name", "dataset", "hyperparameters", "request_hash", "status",
                  "created_us", "updated_us", "version", "priority", "max_attempts",
                  "max_runtime_s", "resources", "dataset_sha256", "owner",
                  "validation_dataset", "output_model", "model_kind", "origin", "api",
                  "metadata", "suffix")

# orjson parses the stored hyperparameters several times faster than the json module.
loads = orjson.loads
_STATUS_BY_VALUE = {s.value: s for s in JobStatus}


def now_us() -> int:
    return time.time_ns() // 1000


def from_us(us: int | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (None stays None)."""
    if us is None:
        return None
    return EPOCH + timedelta(microseconds=us)


# One encoder for every call: `json.dumps` with options builds a new one each time, which
# costs more than encoding a job's few hyperparameters does. Encoding keeps no state.
_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False,
                              ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """One spelling per value: what is stored, hashed and compared for idempotent creates."""
    return _CANONICAL.encode(value)


def request_hash(new: NewJob, hyperparameters: str | None = None) -> str:
    """What tells an identical retry of a create from a different job under the same id:
    the digest of `canonical_json(new.request_fields())`.

    `hyperparameters`, when given, is `canonical_json(new.hyperparameters)`, already made
    for the row: the list is spelled around it rather than serialising it again (a JSON
    array is its items' own spellings, joined by commas)."""
    fields = new.request_fields()
    if hyperparameters is None:
        body = canonical_json(fields)
    else:
        body = "[" + ",".join(hyperparameters if item is new.hyperparameters
                              else canonical_json(item) for item in fields) + "]"
    return hashlib.sha256(body.encode()).hexdigest()


def insert_params(new: NewJob, ts: int, hyperparameters: str, digest: str) -> dict[str, Any]:
    """The bind parameters (INSERT_COLUMNS) of a new queued job created at `ts`."""
    return {
        "id": new.job_id,
        "model_name": new.model_name,
        "dataset": new.dataset,
        "hyperparameters": hyperparameters,
        "request_hash": digest,
        "status": JobStatus.QUEUED.value,
        "created_us": ts,
        "updated_us": ts,
        "version": 1,
        "priority": new.priority,
        "max_attempts": new.max_attempts,
        "max_runtime_s": new.max_runtime_seconds,
        "resources": None if new.resources is None else canonical_json(new.resources),
        "dataset_sha256": new.dataset_sha256,
        "owner": new.owner,
        "validation_dataset": new.validation_dataset,
        "output_model": new.output_model,
        "model_kind": new.model_kind,
        "origin": None if new.origin is None else canonical_json(new.origin),
        "api": new.api,
        "metadata": None if new.metadata is None else canonical_json(new.metadata),
        "suffix": new.suffix,
    }


def row_to_job(row: Any) -> Job:
    """A row that starts with JOB_COLUMNS, as a Job (extra trailing columns are ignored)."""
    # Positional unpacking in JOB_COLUMNS order: this runs for every row of every page.
    (_seq, job_id, model_name, dataset, hyperparameters, status, error_message, created_us,
     updated_us, started_us, finished_us, version, priority, max_attempts, attempts,
     max_runtime_s, resources, dataset_sha256, progress, lease_owner,
     owner, validation_dataset, output_model, model_kind, origin,
     pause_requested_us, pauses, api, metadata, suffix) = row[:_N_JOB_COLUMNS]
    return Job(
        job_id,
        model_name,
        dataset,
        loads(hyperparameters),
        _STATUS_BY_VALUE[status],
        EPOCH + timedelta(microseconds=created_us),
        EPOCH + timedelta(microseconds=updated_us),
        error_message,
        None if started_us is None else EPOCH + timedelta(microseconds=started_us),
        None if finished_us is None else EPOCH + timedelta(microseconds=finished_us),
        version,
        priority,
        max_attempts,
        attempts,
        max_runtime_s,
        None if resources is None else loads(resources),
        dataset_sha256,
        None if progress is None else loads(progress),
        lease_owner,
        owner,
        validation_dataset,
        output_model,
        model_kind,
        None if origin is None else loads(origin),
        None if pause_requested_us is None else EPOCH + timedelta(microseconds=pause_requested_us),
        pauses,
        api,
        None if metadata is None else loads(metadata),
        suffix,
    )
