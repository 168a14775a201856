"""Pause and resume, as the API asks for them: compare-and-set UPDATEs on the job's status.

A queued job pauses at once (it stops being claimable). A running job cannot stop from
here, since its trainer must checkpoint first: the API records a *pause request*
(`pause_requested_us`) and the job stays `running` under its worker's lease. The worker sees
the request at its next heartbeat (store/queue.py: `renew_leases`), stops the run, and ends
the job `paused` (`JobQueue.finish_paused`). Resuming a paused job queues it again; resuming
a job whose pause is still pending withdraws the request.

Each verb tries its UPDATEs in turn; each one is conditional on the status it expects, so a
race with a worker's claim, finish or reaper is decided by the database, and the loser reads
the job again and retries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import bindparam, update

from llm_train_api.domain import IllegalTransition, Job, JobNotFound, JobStatus
from llm_train_api.store.jobs import SELECT_BY_ID, JobRepository
from llm_train_api.store.rows import JOB_COLUMNS, now_us, row_to_job
from llm_train_api.store.tables import jobs

_QUEUED = JobStatus.QUEUED.value
_RUNNING = JobStatus.RUNNING.value
_PAUSED = JobStatus.PAUSED.value
_ATTEMPTS = 3  # the job changed between two of our UPDATEs this often: give up (409)


class PauseOutcome(NamedTuple):
    """The job after a pause or resume, and whether this call changed it."""

    job: Job
    changed: bool


def _update(*conditions: Any, owned: bool, **values: Any) -> Any:
    now = bindparam("now")
    where = [jobs.c.id == bindparam("job_id"), *conditions]
    if owned:
        where.append(jobs.c.owner == bindparam("owner_is"))
    return (update(jobs).where(*where)
            .values(previous_status=jobs.c.status, version=jobs.c.version + 1,
                    updated_us=now, **values)
            .returning(*JOB_COLUMNS, jobs.c.previous_status))


def _statements(owned: bool) -> dict[str, Any]:
    now = bindparam("now")
    return {
        # queued -> paused: no run to stop.
        "pause_queued": _update(jobs.c.status == _QUEUED, owned=owned, status=_PAUSED),
        # running: the worker stops the run and ends the job paused.
        "request_pause": _update(jobs.c.status == _RUNNING,
                                 jobs.c.pause_requested_us.is_(None), owned=owned,
                                 pause_requested_us=now),
        # running -> paused at once: with no built-in workers, whatever runs the job
        # (an external executor) follows the status as it follows a cancel.
        "pause_running": _update(jobs.c.status == _RUNNING, owned=owned, status=_PAUSED,
                                 lease_owner=None, lease_expires_us=None,
                                 pause_requested_us=None),
        # paused -> queued: claimable again; the next run continues from the checkpoint.
        "resume_paused": _update(jobs.c.status == _PAUSED, owned=owned, status=_QUEUED,
                                 progress=None),
        # a pending pause withdrawn: the run goes on (or, if its trainer already stopped,
        # its worker requeues the job without spending an attempt).
        "withdraw_pause": _update(jobs.c.status == _RUNNING,
                                  jobs.c.pause_requested_us.is_not(None), owned=owned,
                                  pause_requested_us=None),
    }


_STATEMENTS = {owned: _statements(owned) for owned in (False, True)}


def pause_job(repo: JobRepository, job_id: str, *, actor: str | None,
              owner: str | None = None, workers_stop_runs: bool = True) -> PauseOutcome:
    """Pause a queued job now, or ask the worker of a running one to pause it.

    `workers_stop_runs` (the built-in executor) records a request for a running job;
    without it a running job becomes `paused` at once. Pausing a paused job, or one whose
    pause is pending, changes nothing. IllegalTransition (409) for a final job, JobNotFound
    for a missing one (or another owner's, with `owner`)."""
    verbs = [("pause_queued", "paused"),
             ("request_pause" if workers_stop_runs else "pause_running",
              "pause_requested" if workers_stop_runs else "paused")]
    return _apply(repo, job_id, verbs, actor=actor, owner=owner,
                  settled=lambda job: (job.status is JobStatus.PAUSED
                                       or job.pause_requested_at is not None),
                  target=JobStatus.PAUSED)


def resume_job(repo: JobRepository, job_id: str, *, actor: str | None,
               owner: str | None = None) -> PauseOutcome:
    """Queue a paused job again, or withdraw the pending pause of a running one.

    Resuming a queued job, or a running one with no pause pending, changes nothing.
    IllegalTransition (409) for a final job, JobNotFound for a missing one."""
    return _apply(repo, job_id, [("resume_paused", "resumed"),
                                 ("withdraw_pause", "pause_withdrawn")],
                  actor=actor, owner=owner,
                  settled=lambda job: (job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
                                       and job.pause_requested_at is None),
                  target=JobStatus.QUEUED)


def _apply(repo: JobRepository, job_id: str, verbs: list[tuple[str, str]], *,
           actor: str | None, owner: str | None, settled: Callable[[Job], bool],
           target: JobStatus) -> PauseOutcome:
    """Try each (statement, event kind) of `verbs` in turn; when none matches, read the
    job: `settled` says whether it is already as asked (no change), else it moved under us
    (again) or is final (IllegalTransition to `target`)."""
    database = repo.database
    statements = _STATEMENTS[owner is not None]
    job: Job | None = None
    for _ in range(_ATTEMPTS):
        for name, kind in verbs:
            ts = now_us()
            # A job that became `paused` gets its webhook deliveries in the same statement.
            row = database.write_with_event(
                statements[name], {"job_id": job_id, "now": ts, "owner_is": owner},
                kind, ts, actor, None, webhooks=True)
            if row is not None:
                database.notify(job_id)  # a worker learns of a request at once (PostgreSQL)
                return PauseOutcome(row_to_job(row), True)
        current = database.read_first(SELECT_BY_ID, {"job_id": job_id})
        if current is None or (owner is not None and current.owner != owner):
            raise JobNotFound(job_id)
        job = row_to_job(current)
        if settled(job):
            return PauseOutcome(job, False)
        if job.status.is_final:
            break
        # It moved between our UPDATEs (claimed, requeued, paused by its worker): again.
    assert job is not None
    raise IllegalTransition(job_id, job.status, target)
