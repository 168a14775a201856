"""The job repository: what the API asks of the database.

Creates are `INSERT .. ON CONFLICT DO NOTHING` (an identical retry returns the existing
job), status changes are one conditional UPDATE (compare-and-set on the status, and on the
version when the client sent If-Match), and each write commits together with its event row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Connection,
    Select,
    String,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from llm_train_api.domain import (
    ERROR_MESSAGE_TARGETS,
    IllegalTransition,
    Job,
    JobEvent,
    JobIdConflict,
    JobNotFound,
    JobStatus,
    NewJob,
    PreconditionFailed,
    QuotaExceeded,
    Revision,
    sources_of,
    to_epoch_us,
)
from llm_train_api.store.database import INSERT_EVENT, Database
from llm_train_api.store.outbox import EVENT_STATUSES
from llm_train_api.store.pagination import JobPage, JobQuery, SortKey
from llm_train_api.store.rows import (
    INSERT_COLUMNS,
    JOB_COLUMNS,
    canonical_json,
    from_us,
    insert_params,
    loads,
    now_us,
    request_hash,
    row_to_job,
)
from llm_train_api.store.tables import job_events, job_metrics, jobs


class DeletedJob(NamedTuple):
    """A job as its delete found it."""

    id: str
    status: JobStatus
    created_us: int


# Serialises the queued-jobs quota check per owner (PostgreSQL), see `create_job`.
_PG_QUOTA_LOCK = 0x6C6C6D71  # "llmq"

SELECT_BY_ID = select(*JOB_COLUMNS).where(jobs.c.id == bindparam("job_id"))
_SELECT_ID = select(jobs.c.id).where(jobs.c.id == bindparam("job_id"))
_SELECT_FOR_RETRY = select(*JOB_COLUMNS, jobs.c.request_hash).where(
    jobs.c.id == bindparam("job_id"))
COUNT_OWNER_STATUS = (
    select(func.count())
    .select_from(jobs)
    .where(jobs.c.owner == bindparam("owner"), jobs.c.status == bindparam("status"))
)
# What the queued-jobs quota counts: a paused job will be queued again on resume.
_WAITING = [literal(JobStatus.QUEUED.value, String), literal(JobStatus.PAUSED.value, String)]
_COUNT_OWNER_WAITING = (
    select(func.count())
    .select_from(jobs)
    .where(jobs.c.owner == bindparam("owner"), jobs.c.status.in_(_WAITING))
)
_DELETE_JOB = (delete(jobs).where(jobs.c.id == bindparam("job_id"))
               .returning(jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.created_us))
_DELETE_OWNED_JOB = (delete(jobs)
                     .where(jobs.c.id == bindparam("job_id"),
                            jobs.c.owner == bindparam("owner_is"))
                     .returning(jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.created_us))
_SELECT_INCARNATIONS = select(jobs.c.id, jobs.c.created_us).where(
    jobs.c.id.in_(bindparam("ids", expanding=True)))
_SELECT_STATES = select(jobs.c.id, jobs.c.status, jobs.c.created_us).where(
    jobs.c.id.in_(bindparam("ids", expanding=True)))
_SELECT_OWNER_INCARNATIONS = select(jobs.c.id, jobs.c.created_us).where(
    jobs.c.owner == bindparam("owner"))
_SELECT_SORT_KEY = select(jobs.c.created_us, jobs.c.seq).where(
    jobs.c.id == bindparam("job_id"))
_SELECT_PENDING_ORIGINS = select(jobs.c.origin).where(
    jobs.c.status.in_([s.value for s in JobStatus if not s.is_final]),
    jobs.c.origin.is_not(None))
_IN_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit
_DELETE_METRICS = delete(job_metrics).where(job_metrics.c.job_id == bindparam("job_id"))


def _create_statement(dialect: str) -> Any:
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        dialect_insert(jobs)
        .values({name: bindparam(name) for name in INSERT_COLUMNS})
        .on_conflict_do_nothing(index_elements=[jobs.c.id])
        .returning(*JOB_COLUMNS)
    )


def _transition_statement(target: JobStatus, conditional: bool, owned: bool) -> Any:
    """The compare-and-set UPDATE to `target`, with If-Match (`conditional`) and/or limited
    to one owner's job (`owned`)."""
    now = bindparam("now")
    values: dict[str, Any] = {
        "previous_status": jobs.c.status,  # SET reads the old row: the status we replaced
        "status": target.value,
        "version": jobs.c.version + 1,
        "updated_us": now,
        "error_message": bindparam("error_message"),
        # A status set from outside ends any worker's lease: that worker learns it from
        # its next guarded write and stops, and the reaper leaves the job alone.
        "lease_owner": None,
        "lease_expires_us": None,
        "pause_requested_us": None,  # a pending pause ends with the run it was for
    }
    if target is JobStatus.RUNNING:
        values["started_us"] = now
        values["finished_us"] = None
    elif target in (JobStatus.QUEUED, JobStatus.PAUSED):
        values["finished_us"] = None
    else:
        values["finished_us"] = now
    conditions = [
        jobs.c.id == bindparam("job_id"),
        # Literals, not one expanding parameter: the statement is compiled once (prepared.py).
        jobs.c.status.in_([literal(value, String)
                           for value in sorted(s.value for s in sources_of(target))]),
    ]
    if conditional:
        conditions.append(jobs.c.version == bindparam("expected_version"))
        conditions.append(jobs.c.created_us == bindparam("expected_created_us"))
    if owned:
        conditions.append(jobs.c.owner == bindparam("owner_is"))
    return (
        update(jobs)
        .where(*conditions)
        .values(**values)
        .returning(*JOB_COLUMNS, jobs.c.previous_status)
    )


# Every (target, If-Match?, owner-scoped?) combination, built once.
_TRANSITIONS = {
    (target, conditional, owned): _transition_statement(target, conditional, owned)
    for target in JobStatus for conditional in (False, True) for owned in (False, True)
}


class JobRepository:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._create_stmt = _create_statement(database.dialect)
        # The page statement of each filter shape met so far (`_page_statement`).
        self._page_statements: dict[_PageShape, Select[Any]] = {}

    # ------------------------------------------------------------------ create
    def create_job(
        self, new: NewJob, *, actor: str | None = None, max_queued: int = 0
    ) -> tuple[Job, bool]:
        """Insert the job, or return the existing one when this is an identical retry.

        Returns (job, created). Raises JobIdConflict when the id holds a different job (or
        another owner's), and QuotaExceeded when `max_queued` > 0 and the owner already has
        that many queued jobs: the count and the insert share one serialised transaction.
        """
        hyperparameters = canonical_json(new.hyperparameters)
        digest = request_hash(new, hyperparameters)
        capped = max_queued > 0 and new.owner is not None
        for _ in range(3):
            ts = now_us()
            params = insert_params(new, ts, hyperparameters, digest)
            prelude = (self._queued_quota_check(new.owner, new.job_id, max_queued)
                       if capped else None)
            row = self.database.write_with_event(self._create_stmt, params, "created", ts,
                                                 actor, None, prelude=prelude)
            if row is not None:
                return row_to_job(row), True
            existing = self.database.read_first(_SELECT_FOR_RETRY, {"job_id": new.job_id})
            if existing is None:
                continue  # deleted between our insert and our read: try the insert again
            if existing.owner != new.owner:
                raise JobIdConflict(new.job_id, other_owner=True)
            if existing.request_hash != digest:
                raise JobIdConflict(new.job_id)
            return row_to_job(existing), False
        raise JobIdConflict(new.job_id)

    def _queued_quota_check(self, owner: str, job_id: str,
                            cap: int) -> Callable[[Connection], None]:
        select_id = self.database.prepared(_SELECT_ID)
        count = self.database.prepared(_COUNT_OWNER_WAITING)

        def check(conn: Connection) -> None:
            self.database.lock(conn, _PG_QUOTA_LOCK, owner)
            if select_id.first(conn, {"job_id": job_id}) is not None:
                return  # the insert will not add a job: a retry (200) or a conflict (409)
            waiting = count.first(conn, {"owner": owner})[0]
            if waiting >= cap:
                raise QuotaExceeded("queued or paused jobs",
                                    "LLM_TRAIN_API_MAX_QUEUED_PER_USER", cap)

        return check

    def insert_many(self, new_jobs: Iterable[NewJob]) -> int:
        """Bulk-load queued jobs in one transaction (seeding, imports, benchmarks)."""
        base = now_us()
        rows = [
            insert_params(new, base + i, canonical_json(new.hyperparameters), request_hash(new))
            for i, new in enumerate(new_jobs)
        ]
        if not rows:
            return 0
        self.database.write(lambda conn: conn.execute(jobs.insert(), rows))
        return len(rows)

    # ------------------------------------------------------------------ reads
    def count_jobs(self, owner: str, status: JobStatus) -> int:
        with self.database.reading() as conn:
            return conn.execute(COUNT_OWNER_STATUS,
                                {"owner": owner, "status": status.value}).scalar_one()

    def get_job(self, job_id: str) -> Job:
        row = self.database.read_first(SELECT_BY_ID, {"job_id": job_id})
        if row is None:
            raise JobNotFound(job_id)
        return row_to_job(row)

    def list_jobs(self, query: JobQuery) -> JobPage:
        """One page, newest first, as index range scans (see pagination.py)."""
        rows = self.database.read_all(*self.page_statement(query))
        next_key = None
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            last = rows[-1]
            next_key = SortKey(last.created_us, last.seq)
        return JobPage([row_to_job(r) for r in rows], next_key)

    def page_statement(self, query: JobQuery) -> tuple[Select[Any], dict[str, Any]]:
        """The statement that reads `query`'s page (one per filter shape, built once) and
        its parameters."""
        shape = _PageShape.of(query)
        stmt = self._page_statements.get(shape)
        if stmt is None:
            stmt = self._page_statements[shape] = _page_statement(shape)
        return stmt, _page_params(query)

    def sort_key(self, job_id: str) -> SortKey:
        """The job's place in the listing order (created_us, seq): where a page that
        starts after it begins (the OpenAI-compatible API pages by job id). JobNotFound
        when there is no such job."""
        row = self.database.read_first(_SELECT_SORT_KEY, {"job_id": job_id})
        if row is None:
            raise JobNotFound(job_id)
        return SortKey(row.created_us, row.seq)

    def dataset_in_use(self, dataset: str, *, owner: str | None = None) -> list[str]:
        """Ids of queued, running or paused jobs that train on `dataset` (at most 10, newest
        first); with `owner`, only that owner's jobs (a user's own datasets are theirs)."""
        return self._active_naming(jobs.c.dataset, dataset, owner)

    def model_in_use(self, model_name: str, *, owner: str | None = None) -> list[str]:
        """Ids of queued, running or paused jobs whose `model_name` is this (at most 10, newest
        first); with `owner`, only that owner's jobs (a user's own models are theirs)."""
        return self._active_naming(jobs.c.model_name, model_name, owner)

    def output_model_in_use(self, name: str, *, owner: str | None = None) -> list[str]:
        """Ids of queued, running or paused jobs whose result will be the model `name` (at most
        10, newest first); with `owner`, only that owner's."""
        return self._active_naming(jobs.c.output_model, name, owner)

    def _active_naming(self, column: Any, value: str, owner: str | None) -> list[str]:
        conditions = [column == value,
                      jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value,
                                         JobStatus.PAUSED.value])]
        if owner is not None:
            conditions.append(jobs.c.owner == owner)
        stmt = (
            select(jobs.c.id)
            .where(*conditions)
            .order_by(jobs.c.created_us.desc(), jobs.c.seq.desc())
            .limit(10)
        )
        with self.database.reading() as conn:
            return [row.id for row in conn.execute(stmt)]

    def job_events(
        self, job_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> tuple[list[JobEvent], bool]:
        """The timeline, oldest first, from after `after_seq`; and whether more remain.

        Only this incarnation's events: those of an earlier job deleted under the same id
        are kept for the audit trail, marked with that job's creation time. (Events from
        before schema v3 carry none; deletes then removed them, so they are this job's.)"""
        with self.database.reading() as conn:
            exists = conn.execute(SELECT_BY_ID, {"job_id": job_id}).first()
            if exists is None:
                raise JobNotFound(job_id)
            stmt = (
                select(job_events)
                .where(job_events.c.job_id == job_id, job_events.c.seq > after_seq,
                       or_(job_events.c.job_created_us == exists.created_us,
                           job_events.c.job_created_us.is_(None)))
                .order_by(job_events.c.seq)
                .limit(limit + 1)
            )
            rows = conn.execute(stmt).all()
        events = [
            JobEvent(
                job_id=r.job_id,
                at=from_us(r.at_us),
                kind=r.kind,
                from_status=JobStatus(r.from_status) if r.from_status else None,
                to_status=JobStatus(r.to_status) if r.to_status else None,
                actor=r.actor,
                message=r.message,
                attempt=r.attempt,
                seq=r.seq,
            )
            for r in rows[:limit]
        ]
        return events, len(rows) > limit

    def job_metrics(self, job_id: str, *, after_step: int = -1, limit: int = 10_000
                    ) -> tuple[list[dict[str, Any]], bool]:
        """The loss curve after `after_step`, ascending, at most `limit` points; and whether
        more remain.

        Pages end between steps, never inside one, so that the next page can start after the
        last step returned without losing a point logged at that same step."""
        stmt = (
            select(job_metrics.c.step, job_metrics.c.data)
            .where(job_metrics.c.job_id == job_id, job_metrics.c.step > after_step)
            .order_by(job_metrics.c.step, job_metrics.c.seq)
            .limit(limit + 1)
        )
        with self.database.reading() as conn:
            exists = conn.execute(SELECT_BY_ID, {"job_id": job_id}).first()
            rows = conn.execute(stmt).all()
        if exists is None:
            raise JobNotFound(job_id)
        more = len(rows) > limit
        if more:
            cut = rows[limit].step
            # A page of a single step (only with a tiny `limit`: a step logs a point or two)
            # is returned as it is, rather than a page that makes no progress.
            rows = [r for r in rows[:limit] if r.step != cut] or rows[:limit]
        return [{"step": r.step, **loads(r.data)} for r in rows], more

    def metric_rows(self, job_id: str, *, limit: int = 10_000
                    ) -> list[tuple[int, int, int, dict[str, Any]]]:
        """The job's last `limit` metric points as (seq, step, at_us, data), ascending:
        what the OpenAI-compatible events interleave with the job's events by time."""
        stmt = (
            select(job_metrics.c.seq, job_metrics.c.step, job_metrics.c.at_us,
                   job_metrics.c.data)
            .where(job_metrics.c.job_id == job_id)
            .order_by(job_metrics.c.step.desc(), job_metrics.c.seq.desc())
            .limit(limit)
        )
        with self.database.reading() as conn:
            rows = conn.execute(stmt).all()
        return [(r.seq, r.step, r.at_us, loads(r.data)) for r in reversed(rows)]

    # ------------------------------------------------------------------ changes
    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        error_message: str | None = None,
        expected: Revision | None = None,
        actor: str | None = None,
        owner: str | None = None,
    ) -> tuple[Job, bool]:
        """Move a job to `target` with one compare-and-set UPDATE.

        Returns (job, changed). Asking for the status the job already has changes nothing.
        With `owner`, only that owner's job is changed: another's is JobNotFound, checked in
        the same UPDATE (a job deleted and re-created by someone else in between is safe).
        Raises JobNotFound, PreconditionFailed (`expected` is stale) or IllegalTransition.
        """
        ts = now_us()
        message = error_message if target in ERROR_MESSAGE_TARGETS else None
        # Not "owner": a parameter named after a column would also be SET by the UPDATE.
        params: dict[str, Any] = {"job_id": job_id, "now": ts, "error_message": message,
                                  "owner_is": owner}
        if expected is not None:
            params["expected_version"] = expected.version
            params["expected_created_us"] = expected.created_us
        stmt = _TRANSITIONS[target, expected is not None, owner is not None]
        row = self.database.write_with_event(stmt, params, "status", ts, actor, message,
                                             webhooks=target.value in EVENT_STATUSES)
        if row is not None:
            if target is JobStatus.CANCELLED:
                self.database.notify(job_id)
            return row_to_job(row), True
        current = self.database.read_first(SELECT_BY_ID, {"job_id": job_id})
        if current is None or (owner is not None and current.owner != owner):
            raise JobNotFound(job_id)
        job = row_to_job(current)
        if expected is not None and job.revision != expected:
            raise PreconditionFailed(job_id, job.etag)
        if job.status is target:
            return job, False
        raise IllegalTransition(job_id, job.status, target)

    def delete_job(self, job_id: str, *, owner: str | None = None,
                   actor: str | None = None, expected: Revision | None = None) -> DeletedJob:
        """Delete the job and its metrics; its worker, if any, stops it.

        Returns what the job was when the delete committed: its status then (a job that
        was `running` may still have a trainer writing to its folder) and its creation
        time (which names its folder).

        The events stay, with a `deleted` event naming `actor`: the audit trail outlives
        the job (a job re-created under the same id starts a timeline of its own, see
        `job_events`). With `owner`, another owner's job is JobNotFound. With `expected`,
        the delete is a compare-and-set like `transition`: PreconditionFailed when the job
        has changed since.
        """

        def work(conn: Connection) -> DeletedJob:
            stmt = _DELETE_OWNED_JOB if owner is not None else _DELETE_JOB
            if expected is not None:
                stmt = stmt.where(jobs.c.created_us == expected.created_us,
                                  jobs.c.version == expected.version)
            gone = conn.execute(stmt, {"job_id": job_id, "owner_is": owner}).first()
            if gone is None:
                current = conn.execute(SELECT_BY_ID, {"job_id": job_id}).first()
                if current is None or (owner is not None and current.owner != owner):
                    raise JobNotFound(job_id)
                raise PreconditionFailed(job_id, row_to_job(current).etag)
            conn.execute(INSERT_EVENT, {
                "job_id": job_id, "at_us": now_us(), "kind": "deleted",
                "from_status": gone.status, "to_status": None, "actor": actor,
                "message": None, "attempt": gone.attempts,
                "job_created_us": gone.created_us})
            conn.execute(_DELETE_METRICS, {"job_id": job_id})
            self.database.notify(job_id, conn)
            return DeletedJob(gone.id, JobStatus(gone.status), gone.created_us)

        return self.database.write(work)

    # ------------------------------------------------------------------ incarnations
    def existing_incarnations(
        self, keys: Iterable[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        """Which of these (job id, created_us) pairs are jobs in the database now: the
        folder sweeper's question (a job folder is named after both)."""
        wanted = set(keys)
        ids = sorted({job_id for job_id, _ in wanted})
        found: set[tuple[str, int]] = set()
        with self.database.reading() as conn:
            for start in range(0, len(ids), _IN_CHUNK):
                rows = conn.execute(_SELECT_INCARNATIONS,
                                    {"ids": ids[start:start + _IN_CHUNK]})
                found.update((r.id, r.created_us) for r in rows)
        return found & wanted

    def pending_branch_origins(self) -> list[dict[str, Any]]:
        """The origins of the branches that may still start (queued, running or paused):
        the checkpoints the pin sweeper keeps (artifacts.checkpoint_pins)."""
        with self.database.reading() as conn:
            return [loads(r.origin) for r in conn.execute(_SELECT_PENDING_ORIGINS)]

    def job_states(self, ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """The status and created_us of each of these jobs that exists, in a few queries
        however many: what the log streams of one server process watch to know when to
        end (a job that is gone, or re-created under its id, ends its stream too)."""
        wanted = sorted(set(ids))
        states: dict[str, tuple[str, int]] = {}
        with self.database.reading() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                rows = conn.execute(_SELECT_STATES, {"ids": wanted[start:start + _IN_CHUNK]})
                states.update((r.id, (r.status, r.created_us)) for r in rows)
        return states

    def owner_incarnations(self, owner: str) -> list[tuple[str, int]]:
        """(job id, created_us) of every job `owner` has: where their job folders are."""
        with self.database.reading() as conn:
            return [(r.id, r.created_us)
                    for r in conn.execute(_SELECT_OWNER_INCARNATIONS, {"owner": owner})]


class _PageShape(NamedTuple):
    """Which filters a page query sets: every query of one shape runs one statement, built
    and compiled once (store/prepared.py) and given the values as parameters."""

    statuses: int
    owner: bool
    model_name: bool
    dataset: bool
    created_after: bool
    created_before: bool
    after: bool

    @classmethod
    def of(cls, query: JobQuery) -> _PageShape:
        return cls(len(query.statuses), query.owner is not None, query.model_name is not None,
                   query.dataset is not None, query.created_after is not None,
                   query.created_before is not None, query.after is not None)


def _page_statement(shape: _PageShape) -> Select[Any]:
    """The page statement of one shape, its values as bind parameters (`_page_params`).

    One status, or none, is one index range scan in the listing order. Several statuses
    are a merge of per-status scans, each bounded by the page size, so the cost stays flat
    however many jobs each status holds."""
    fetch = bindparam("fetch", type_=BigInteger)
    order = (jobs.c.created_us.desc(), jobs.c.seq.desc())
    if shape.statuses <= 1:
        return (select(*JOB_COLUMNS)
                .where(*_page_conditions(shape, "status_0" if shape.statuses else None))
                .order_by(*order)
                .limit(fetch))
    branches = [
        select(*JOB_COLUMNS)
        .where(*_page_conditions(shape, f"status_{i}"))
        .order_by(*order)
        .limit(fetch)
        .subquery()
        for i in range(shape.statuses)
    ]
    merged = union_all(*(select(b) for b in branches)).subquery()
    return (select(merged)
            .order_by(merged.c.created_us.desc(), merged.c.seq.desc())
            .limit(fetch))


def _page_conditions(shape: _PageShape, status: str | None) -> list[Any]:
    clauses: list[Any] = []
    if status is not None:
        clauses.append(jobs.c.status == bindparam(status))
    if shape.owner:
        clauses.append(jobs.c.owner == bindparam("owner"))
    if shape.model_name:
        clauses.append(jobs.c.model_name == bindparam("model_name"))
    if shape.dataset:
        clauses.append(jobs.c.dataset == bindparam("dataset"))
    if shape.created_after:
        clauses.append(jobs.c.created_us > bindparam("created_after_us"))
    if shape.created_before:
        clauses.append(jobs.c.created_us < bindparam("created_before_us"))
    if shape.after:
        # A row-value comparison: one index range scan on both SQLite and PostgreSQL.
        clauses.append(tuple_(jobs.c.created_us, jobs.c.seq)
                       < tuple_(bindparam("after_us", type_=BigInteger),
                                bindparam("after_seq", type_=BigInteger)))
    return clauses


def _page_params(query: JobQuery) -> dict[str, Any]:
    """The values of `query` for its shape's statement."""
    params: dict[str, Any] = {"fetch": query.limit + 1}  # one more row: is there a next page?
    for i, status in enumerate(query.statuses):
        params[f"status_{i}"] = status.value
    if query.owner is not None:
        params["owner"] = query.owner
    if query.model_name is not None:
        params["model_name"] = query.model_name
    if query.dataset is not None:
        params["dataset"] = query.dataset
    if query.created_after is not None:
        params["created_after_us"] = to_epoch_us(query.created_after)
    if query.created_before is not None:
        params["created_before_us"] = to_epoch_us(query.created_before)
    if query.after is not None:
        params["after_us"] = query.after.created_us
        params["after_seq"] = query.after.seq
    return params
