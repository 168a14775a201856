"""Who may ask for which status: the role x executor policy of `PATCH /jobs/{id}/status`
and of cancelling, as plain functions that raise domain errors.

The store decides whether a transition is legal (a compare-and-set); this module decides
whether the caller may ask for it at all:

- a `worker` (an external executor) may make any legal change to any job, except that
  with the built-in executor only a claim starts a run: `running` comes with a lease that
  a built-in worker holds and renews, so no client may set it;
- an `admin` too, except that with the built-in executor the workers drive the statuses
  and clients may only cancel;
- a `user` may only cancel, and only its own jobs.

Pausing and resuming have verbs of their own (`POST /jobs/{id}/pause` and `/resume`, see
store/pausing.py), open to users for their own jobs: pausing a running job must go through
its worker, which checkpoints the run first, and a PATCH to `paused` would skip that. So
`paused` follows the PATCH rules above like any other status.
"""

from __future__ import annotations

from collections.abc import Callable

from llm_train_api.domain import (
    ERROR_MESSAGE_TARGETS,
    IllegalTransition,
    InvalidRequest,
    Job,
    JobStatus,
    Principal,
    Role,
    StatusChangeForbidden,
    StatusManagedByWorkers,
)
from llm_train_api.store.jobs import JobRepository


def check_status_change(
    principal: Principal,
    job_id: str,
    target: JobStatus,
    error_message: str | None,
    *,
    builtin_executor: bool,
    visible_job: Callable[[], Job],
) -> str | None:
    """Refuse a change the caller may not ask for; return the error message to record.

    `visible_job` reads the job as the caller may see it (JobNotFound for someone else's),
    and is only called when the answer depends on the job: a user's refusal must not say
    that another user's job exists, and asking for the status a job already has is no
    change, whoever asks.
    """
    if principal.role is Role.USER and target is not JobStatus.CANCELLED:
        visible_job()  # someone else's job stays a 404
        raise StatusChangeForbidden(
            "Forbidden: users may only cancel their jobs (status 'cancelled'); other status "
            "changes need the worker or admin role. To pause or resume a job use POST "
            f"/jobs/{job_id}/pause or /resume.")
    if (builtin_executor and target is not JobStatus.CANCELLED
            and principal.role is not Role.WORKER
            and visible_job().status is not target):
        raise StatusManagedByWorkers(
            f"Status {target.value!r} is managed by the workers of the built-in executor; "
            f"clients may only cancel (status 'cancelled' or POST /jobs/{job_id}/cancel), "
            f"pause (POST /jobs/{job_id}/pause) or resume (POST /jobs/{job_id}/resume). "
            "Run with LLM_TRAIN_API_EXECUTOR=none to drive statuses from an external system.")
    if (builtin_executor and target is JobStatus.RUNNING
            and visible_job().status is not target):
        # A job set `running` from outside would have no lease: no worker would run it,
        # and no reaper would ever requeue it.
        raise StatusManagedByWorkers(
            "Status 'running' is set by the built-in executor's workers when they claim a "
            "job (with a lease they renew); a worker token may not set it. Run with "
            "LLM_TRAIN_API_EXECUTOR=none to drive statuses from an external system.")
    return error_message_for(target, error_message)


def error_message_for(target: JobStatus, message: str | None) -> str | None:
    """The reason to record with `target`. Only a failure or a cancellation has one: a
    requeued or succeeded job must not show a stale reason (InvalidRequest otherwise)."""
    if message is not None and not message.strip():
        message = None  # an empty reason is no reason; older clients send ""
    if message is not None and target not in ERROR_MESSAGE_TARGETS:
        raise InvalidRequest(
            "error_message is only accepted with status 'failed' or 'cancelled'.",
            {"json": {"error_message": [f"Not allowed with status {target.value!r}."]}})
    return message


def cancel(
    jobs: JobRepository,
    job_id: str,
    principal: Principal,
    *,
    owner: str | None,
    visible_job: Callable[[], Job],
) -> Job:
    """Cancel a job; cancelling one that has already ended changes nothing and is no error.

    `owner` limits the change to that owner's job (a user's cancel); `visible_job` reads
    the ended job back (JobNotFound when the caller may not see it).
    """
    try:
        return jobs.transition(job_id, JobStatus.CANCELLED,
                               error_message=f"cancelled by {principal.actor}",
                               actor=principal.actor, owner=owner)[0]
    except IllegalTransition as exc:
        job = visible_job()
        if not exc.current.is_final:
            raise
        return job
