"""The job queue: what workers ask of the database.

A worker claims a queued job with one UPDATE that sets it `running` under a lease (its
worker id and an expiry), renews its leases on every heartbeat, and writes progress and the
end of the run. Every verb after the claim is guarded by the lease: it only acts while the
caller's worker still holds the job in `running`. A cancel, a delete or a reaper's requeue
ends the lease, and the worker learns it from its next guarded write (or poll) and stops
the run.

Dispatchers (the Ray executor) run jobs on a cluster, where a run can outlive its
dispatcher: on a graceful stop it *detaches* them (still `running`, leased to
DETACHED_OWNER) and the next dispatcher *attaches* (`claim_detached`). The reaper treats a
detached job like any other lease.

A running job asked to pause (store/pausing.py) keeps its lease until its worker, told by
its next heartbeat (`renew_leases`), has stopped the run: `finish_paused` then ends it
`paused` without counting the attempt. A worker lost meanwhile leaves the reaper to pause
the job; either way it is never lost.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)

from llm_train_api.domain import Job, JobStatus
from llm_train_api.store.database import INSERT_EVENT, Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.outbox import queue_webhook_deliveries
from llm_train_api.store.rows import JOB_COLUMNS, canonical_json, now_us, row_to_job
from llm_train_api.store.tables import job_metrics, jobs

LEASE_LOST_MESSAGE = "worker lost (its lease expired) and the job has used all its attempts"
DETACHED_OWNER = "@detached"
# Serialises capped claims across hosts (PostgreSQL), see `JobQueue.claim`.
_PG_CLAIM_LOCK = 0x6C6C6D5F636C  # "llm_cl"
_RUNNING = JobStatus.RUNNING.value
_QUEUED = JobStatus.QUEUED.value
_PAUSED = JobStatus.PAUSED.value
_STARTING = '{"phase":"starting"}'


SCHEDULINGS = ("fair", "priority")


def _running_count(owned: Any, alias: str) -> Any:
    """How many running jobs pass `owned` (a condition on their owner column)."""
    running = jobs.alias(alias)
    return (select(func.count()).select_from(running)
            .where(owned(running.c.owner), running.c.status == _RUNNING).scalar_subquery())


def _priority_pick(*, capped: bool) -> Any:
    """The next queued job in global order: priority, then age."""
    conditions = [jobs.c.status == _QUEUED]
    if capped:
        conditions.append(or_(jobs.c.owner.is_(None),
                              _running_count(lambda owner: owner == jobs.c.owner,
                                             "running_of_owner")
                              < bindparam("cap")))
    return (select(jobs.c.seq).where(*conditions)
            .order_by(jobs.c.priority.desc(), jobs.c.created_us, jobs.c.seq).limit(1))


def _fair_pick(*, skip_locked: bool, capped: bool) -> Any:
    """The next queued job in fair order: the owner with the fewest running jobs first;
    between owners who run as many, the one served least recently (whose latest run
    started first, or never); then priority and age inside that owner's own queue. The
    unowned jobs count as one owner.

    With one worker slot everyone runs nothing at each claim, so the owners take turns;
    a user's priorities only order that user's own jobs.

    It costs a few index probes per owner with queued jobs, whatever the queue's depth:
    a recursive CTE walks the distinct owners of queued jobs through ix_jobs_owner_claim
    (a loose index scan), and for each one counts its running jobs (the same index's
    (status, owner) prefix), finds its latest start (ix_jobs_owner_started) and takes the
    head of its queue (ix_jobs_owner_claim again). On PostgreSQL the head is taken FOR
    UPDATE SKIP LOCKED, so a concurrent claimer passes over a head another one is taking
    and gets that owner's next job.
    """
    step = jobs.alias("next_owner")
    owners = (select(func.min(jobs.c.owner).label("owner"))
              .where(jobs.c.status == _QUEUED)
              .cte("queued_owners", recursive=True, nesting=True))
    owners = owners.union_all(
        select(select(func.min(step.c.owner))
               .where(step.c.status == _QUEUED, step.c.owner > owners.c.owner)
               .scalar_subquery())
        .where(owners.c.owner.is_not(None)))

    def head(owned: Any) -> Any:
        queued = jobs.alias("head")
        pick = (select(queued.c.seq)
                .where(queued.c.status == _QUEUED, owned(queued.c.owner))
                .order_by(queued.c.priority.desc(), queued.c.created_us, queued.c.seq)
                .limit(1))
        if skip_locked:
            pick = pick.with_for_update(skip_locked=True)
        return pick.scalar_subquery()

    def last_start(owned: Any) -> Any:
        started = jobs.alias("started")
        return func.coalesce(select(func.max(started.c.started_us))
                             .where(owned(started.c.owner)).scalar_subquery(), 0)

    def candidate(owned: Any) -> list[Any]:
        return [_running_count(owned, "running_of_owner").label("running"),
                last_start(owned).label("served_us"), head(owned).label("seq")]

    owned_heads = (select(owners.c.owner, *candidate(lambda owner: owner == owners.c.owner))
                   .where(owners.c.owner.is_not(None)))
    unowned_head = select(literal(None, String).label("owner"),
                          *candidate(lambda owner: owner.is_(None)))
    heads = owned_heads.union_all(unowned_head).subquery("heads")
    conditions = []
    if capped:
        conditions.append(or_(heads.c.owner.is_(None), heads.c.running < bindparam("cap")))

    def of_head(column: str) -> Any:  # a primary-key probe, no join over the table
        job = jobs.alias(f"head_{column}")
        return select(job.c[column]).where(job.c.seq == heads.c.seq).scalar_subquery()

    # A NULL head (no unowned jobs, or a head locked by another claimer) sorts last, and
    # the UPDATE matches nothing when every head is NULL.
    return (select(heads.c.seq).where(*conditions)
            .order_by(heads.c.seq.is_(None), heads.c.running, heads.c.served_us,
                      of_head("priority").desc(), of_head("created_us"), heads.c.seq)
            .limit(1))


def _claim_statement(*, skip_locked: bool, capped: bool, scheduling: str = "fair") -> Any:
    """UPDATE the next queued job to running, as one statement.

    On PostgreSQL the subquery locks its row with FOR UPDATE SKIP LOCKED, so concurrent
    claimers take different jobs instead of queueing on one row. On SQLite the statement
    runs under the database's single write lock, and the repeated `status = 'queued'`
    guard makes it a compare-and-set either way.

    `scheduling` is the order: "fair" (see `_fair_pick`) or "priority" (priority, then
    age, over every owner's jobs at once).

    `capped` skips the jobs of owners who already run `:cap` jobs: their jobs wait in the
    queue while everyone else's are claimed. (The caller serialises capped claims, or two
    claimers could both see an owner one below the cap.)
    """
    if scheduling == "fair":
        next_job = _fair_pick(skip_locked=skip_locked, capped=capped)
    else:
        next_job = _priority_pick(capped=capped)
        if skip_locked:
            next_job = next_job.with_for_update(skip_locked=True)
    now = bindparam("now")
    return (
        update(jobs)
        .where(jobs.c.seq == next_job.scalar_subquery(), jobs.c.status == _QUEUED)
        .values(previous_status=jobs.c.status, status=_RUNNING,
                lease_owner=bindparam("worker"), lease_expires_us=bindparam("expires"),
                attempts=jobs.c.attempts + 1, started_us=now, finished_us=None,
                updated_us=now, version=jobs.c.version + 1,
                progress=bindparam("new_progress"), error_message=None,
                pause_requested_us=None)
        .returning(*JOB_COLUMNS, jobs.c.previous_status)
    )


def _claim_detached_statement(*, skip_locked: bool) -> Any:
    next_job = (
        select(jobs.c.seq)
        .where(jobs.c.status == _RUNNING, jobs.c.lease_owner == DETACHED_OWNER)
        .order_by(jobs.c.priority.desc(), jobs.c.created_us, jobs.c.seq)
        .limit(1)
    )
    if skip_locked:
        next_job = next_job.with_for_update(skip_locked=True)
    return (
        update(jobs)
        .where(jobs.c.seq == next_job.scalar_subquery(), jobs.c.status == _RUNNING,
               jobs.c.lease_owner == DETACHED_OWNER)
        .values(lease_owner=bindparam("worker"), lease_expires_us=bindparam("expires"),
                updated_us=bindparam("now"), version=jobs.c.version + 1)
        .returning(*JOB_COLUMNS)
    )


def _finish_statement(target: JobStatus, refund: bool) -> Any:
    now = bindparam("now")
    values: dict[str, Any] = {
        "previous_status": jobs.c.status, "status": target.value,
        "version": jobs.c.version + 1, "updated_us": now,
        "lease_owner": None, "lease_expires_us": None, "pause_requested_us": None,
        "error_message": bindparam("failure"),
        "finished_us": None if target is JobStatus.QUEUED else now,
    }
    if target is JobStatus.QUEUED:
        values["progress"] = None
    if refund:
        values["attempts"] = jobs.c.attempts - 1
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"), jobs.c.status == _RUNNING,
               jobs.c.lease_owner == bindparam("worker"))
        .values(**values)
        .returning(*JOB_COLUMNS, jobs.c.previous_status)
    )


def _reap_statement() -> Any:
    now = bindparam("now")
    exhausted = jobs.c.attempts >= jobs.c.max_attempts
    # A job whose pause was pending when its worker vanished ends paused (its attempt
    # counted: the run did not stop as asked); it resumes from its latest checkpoint.
    pausing = jobs.c.pause_requested_us.is_not(None)
    return (
        update(jobs)
        .where(jobs.c.status == _RUNNING, jobs.c.lease_expires_us < now)
        .values(previous_status=jobs.c.status,
                status=case((exhausted, JobStatus.FAILED.value), (pausing, _PAUSED),
                            else_=_QUEUED),
                pause_requested_us=None,
                error_message=case((exhausted, LEASE_LOST_MESSAGE), else_=None),
                finished_us=case((exhausted, now), else_=None),
                lease_owner=None, lease_expires_us=None, progress=None,
                version=jobs.c.version + 1, updated_us=now)
        .returning(*JOB_COLUMNS, jobs.c.previous_status)
    )


# Named queries, built once with bind parameters: the hot paths skip statement
# construction and cache-key generation on every call. Keyed by "PostgreSQL?" where the
# two backends differ (SKIP LOCKED).
# Claims are keyed by (scheduling, capped, PostgreSQL?).
_CLAIM = {(scheduling, capped, pg): _claim_statement(skip_locked=pg, capped=capped,
                                                     scheduling=scheduling)
          for scheduling in SCHEDULINGS for capped in (False, True) for pg in (False, True)}
_CLAIM_DETACHED = {pg: _claim_detached_statement(skip_locked=pg) for pg in (False, True)}
_FINISH = {(target, refund): _finish_statement(target, refund)
           for target in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED)
           for refund in (False, True)}
_REAP = _reap_statement()
_SELECT_LEASED = select(jobs.c.id, jobs.c.pause_requested_us).where(
    jobs.c.lease_owner == bindparam("worker"), jobs.c.status == _RUNNING)
_RENEW = (
    update(jobs)
    .where(jobs.c.lease_owner == bindparam("worker"), jobs.c.status == _RUNNING)
    .values(lease_expires_us=bindparam("expires"))
    .returning(jobs.c.id, jobs.c.pause_requested_us)
)
_FINISH_PAUSED = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.lease_owner == bindparam("worker"),
           jobs.c.status == _RUNNING, jobs.c.pause_requested_us.is_not(None))
    .values(previous_status=jobs.c.status, status=_PAUSED, attempts=jobs.c.attempts - 1,
            pauses=jobs.c.pauses + 1, lease_owner=None, lease_expires_us=None,
            pause_requested_us=None, updated_us=bindparam("now"),
            version=jobs.c.version + 1)
    .returning(*JOB_COLUMNS, jobs.c.previous_status)
)
_SET_PROGRESS = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.lease_owner == bindparam("worker"),
           jobs.c.status == _RUNNING)
    .values(progress=bindparam("new_progress"))
    .returning(jobs.c.id, jobs.c.attempts, jobs.c.created_us)
)
_INSERT_METRICS = job_metrics.insert()
_FORGET_METRICS = delete(job_metrics).where(
    job_metrics.c.job_id == bindparam("job_id"), job_metrics.c.step > bindparam("step"))
_DETACH = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.lease_owner == bindparam("worker"),
           jobs.c.status == _RUNNING)
    .values(lease_owner=DETACHED_OWNER, lease_expires_us=bindparam("expires"),
            updated_us=bindparam("now"), version=jobs.c.version + 1)
    .returning(*JOB_COLUMNS)
)
_REFUND_ATTEMPT = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.lease_owner == bindparam("worker"),
           jobs.c.status == _RUNNING, jobs.c.attempts > 1)
    .values(attempts=jobs.c.attempts - 1, updated_us=bindparam("now"),
            version=jobs.c.version + 1)
    .returning(*JOB_COLUMNS)
)


class HeldJobs(frozenset[str]):
    """The ids of the jobs a worker holds; `pausing` names those asked to pause."""

    pausing: frozenset[str]

    def __new__(cls, rows: Any) -> HeldJobs:
        rows = list(rows)
        held = super().__new__(cls, (r[0] for r in rows))
        held.pausing = frozenset(r[0] for r in rows if r[1] is not None)
        return held


class JobQueue:
    """Claims, leases, progress and the end of runs, for workers and dispatchers.

    `jobs` is the repository a worker reads jobs through (a dispatcher looks up the job a
    cluster run belongs to) and cancels with (a run stopped from outside ends `cancelled`).
    `max_running_per_user` (0 = no cap) is enforced by the claim itself, and so is
    `scheduling`, the order of claims (see `_claim_statement`).
    """

    def __init__(self, database: Database, jobs: JobRepository, *,
                 max_running_per_user: int = 0, scheduling: str = "fair") -> None:
        if scheduling not in SCHEDULINGS:
            raise ValueError(f"scheduling must be one of {SCHEDULINGS}, got {scheduling!r}")
        self.database = database
        self.jobs = jobs
        self.max_running_per_user = max_running_per_user
        self.scheduling = scheduling
        self._pg = database.is_postgresql

    @property
    def dialect(self) -> str:
        return self.database.dialect

    def listen(self) -> AbstractContextManager[Any]:
        """PostgreSQL: notifications about new, cancelled and deleted jobs (see Database)."""
        return self.database.listen()

    # ------------------------------------------------------------------ claims
    def claim(self, worker_id: str, lease_s: float) -> Job | None:
        """Atomically take the next queued job (in `scheduling` order) and lease it."""
        ts = now_us()
        params = {"worker": worker_id, "now": ts, "expires": ts + int(lease_s * 1e6),
                  "new_progress": _STARTING}
        if not self.max_running_per_user:
            row = self.database.write_with_event(_CLAIM[self.scheduling, False, self._pg],
                                                 params, "claimed", ts, worker_id, None)
            return None if row is None else row_to_job(row)
        # Capped: claims take turns (an advisory lock on PostgreSQL; SQLite's write lock),
        # so the count in the claim's WHERE sees every claim committed before it.
        params["cap"] = self.max_running_per_user

        def take_turn(conn: Connection) -> None:
            self.database.lock(conn, _PG_CLAIM_LOCK)

        row = self.database.write_with_event(_CLAIM[self.scheduling, True, self._pg], params,
                                             "claimed", ts, worker_id, None, prelude=take_turn)
        return None if row is None else row_to_job(row)

    def claim_detached(self, worker_id: str, lease_s: float) -> Job | None:
        """Take over the next detached job (priority, then age) without counting an attempt:
        the run it stands for is still going."""
        ts = now_us()
        params = {"worker": worker_id, "now": ts, "expires": ts + int(lease_s * 1e6)}
        row = self.database.write_with_event(_CLAIM_DETACHED[self._pg], params, "attached",
                                             ts, worker_id, None)
        return None if row is None else row_to_job(row)

    # ------------------------------------------------------------------ leases
    def running_jobs_of(self, worker_id: str) -> HeldJobs:
        """Ids this worker still holds (a job missing from it was cancelled or deleted),
        and which of them are asked to pause."""
        with self.database.reading() as conn:
            return HeldJobs(conn.execute(_SELECT_LEASED, {"worker": worker_id}).all())

    def renew_leases(self, worker_id: str, lease_s: float) -> HeldJobs:
        """Extend every lease this worker holds; return the ids it still holds, and which
        of them are asked to pause."""
        params = {"worker": worker_id, "expires": now_us() + int(lease_s * 1e6)}
        return HeldJobs(self.database.write(
            lambda conn: [tuple(r) for r in conn.execute(_RENEW, params)]))

    def record_progress(
        self,
        job_id: str,
        worker_id: str,
        progress: dict[str, Any],
        metrics: list[dict[str, Any]] = (),  # type: ignore[assignment]
        *,
        forget_metrics_after: int | None = None,
        notes: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> bool:
        """Store the job's progress and new metric rows, and `notes` ((kind, message)) as
        events of its timeline; False if the lease is gone."""
        ts = now_us()

        def work(conn: Connection) -> bool:
            owned = conn.execute(_SET_PROGRESS, {
                "job_id": job_id, "worker": worker_id, "new_progress": canonical_json(progress),
            }).first()
            if owned is None:
                return False
            if forget_metrics_after is not None:  # a resumed run rewrites what follows
                conn.execute(_FORGET_METRICS, {"job_id": job_id, "step": forget_metrics_after})
            if metrics:
                conn.execute(_INSERT_METRICS, [
                    {"job_id": job_id, "step": int(m["step"]), "at_us": ts,
                     "data": canonical_json({k: v for k, v in m.items() if k != "step"})}
                    for m in metrics
                ])
            if notes:
                conn.execute(INSERT_EVENT, [
                    {"job_id": job_id, "at_us": ts, "kind": kind, "from_status": None,
                     "to_status": None, "actor": worker_id, "message": message,
                     "attempt": owned.attempts, "job_created_us": owned.created_us}
                    for kind, message in notes])
            return True

        return self.database.write(work)

    # ------------------------------------------------------------------ the end of a run
    def finish(
        self,
        job_id: str,
        worker_id: str,
        target: JobStatus,
        *,
        error_message: str | None = None,
        refund_attempt: bool = False,
    ) -> Job | None:
        """End this worker's run of the job: succeeded, failed, or back to queued.

        `refund_attempt` hands the job back without counting the run (a graceful shutdown).
        Returns None when the lease was already gone (cancelled, deleted, reaped)."""
        stmt = _FINISH.get((target, refund_attempt))
        if stmt is None:
            raise ValueError(f"a worker cannot finish a job as {target.value}")
        ts = now_us()
        params = {"job_id": job_id, "worker": worker_id, "now": ts,
                  "failure": error_message if target is JobStatus.FAILED else None}
        kind = "requeued" if target is JobStatus.QUEUED else "status"
        row = self.database.write_with_event(stmt, params, kind, ts, worker_id, error_message,
                                             webhooks=target is not JobStatus.QUEUED)
        return None if row is None else row_to_job(row)

    def finish_paused(self, job_id: str, worker_id: str, message: str | None = None
                      ) -> Job | None:
        """End this worker's run of a job asked to pause: `paused`, the attempt its claim
        counted taken back, the lease released. None when the lease is gone, or when the
        pause was withdrawn meanwhile (then the caller hands the job back to the queue)."""
        ts = now_us()
        row = self.database.write_with_event(_FINISH_PAUSED, {"job_id": job_id,
                                                              "worker": worker_id, "now": ts},
                                             "paused", ts, worker_id, message,
                                             webhooks=True)
        return None if row is None else row_to_job(row)

    def requeue_expired(self, actor: str = "reaper") -> list[Job]:
        """Hand back every job whose lease expired: its worker is gone. Each goes back to
        the queue (attempts already counted), or fails when it has used all its attempts."""
        ts = now_us()

        def work(conn: Connection) -> list[Any]:
            rows = conn.execute(_REAP, {"now": ts}).all()
            if rows:
                conn.execute(INSERT_EVENT, [
                    {"job_id": r.id, "at_us": ts, "kind": "lease_expired",
                     "from_status": _RUNNING, "to_status": r.status,
                     "actor": actor, "message": r.error_message or (
                         "worker lost while pausing; paused" if r.status == _PAUSED
                         else "worker lost; requeued"),
                     "attempt": r.attempts, "job_created_us": r.created_us}
                    for r in rows
                ])
                queue_webhook_deliveries(conn, rows, ts)
            return rows

        return [row_to_job(r) for r in self.database.write(work)]

    def detach(self, job_id: str, worker_id: str, lease_s: float) -> Job | None:
        """Hand a still-running job over to whichever dispatcher comes next.

        The job stays `running` (its run goes on in the cluster) under the DETACHED_OWNER
        lease, which expires after `lease_s`: if no dispatcher attaches by then, any reaper
        requeues it and the claimant adopts the live run (see `refund_attempt`). Returns
        None when this worker no longer held the job."""
        ts = now_us()
        params = {"job_id": job_id, "worker": worker_id, "now": ts,
                  "expires": ts + int(lease_s * 1e6)}
        row = self.database.write_with_event(_DETACH, params, "detached", ts, worker_id,
                                             "dispatcher stopped; the run goes on")
        return None if row is None else row_to_job(row)

    def refund_attempt(self, job_id: str, worker_id: str, message: str) -> Job | None:
        """Take back the attempt that this worker's claim counted, keeping the lease: the
        claimant found the previous attempt's run still alive and adopted it instead of
        starting a new one. Returns None when the lease is gone."""
        ts = now_us()
        params = {"job_id": job_id, "worker": worker_id, "now": ts}
        row = self.database.write_with_event(_REFUND_ATTEMPT, params, "attached", ts,
                                             worker_id, message)
        return None if row is None else row_to_job(row)
