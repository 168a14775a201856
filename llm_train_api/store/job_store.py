"""The job store: every read and write of jobs goes through here, as SQLAlchemy Core.

Correctness across gunicorn workers and hosts comes from the database, never from Python:
creates are `INSERT .. ON CONFLICT DO NOTHING`, status changes are one conditional UPDATE
(compare-and-set on the status, and on the version when the client sent If-Match), and each
write commits in one transaction together with its event row.

The in-process lock guards the SQLite group commit's queue: writers of one process, which
SQLite would serialise anyway, share one transaction and one fsync instead of queueing in
SQLite's busy handler (see group_commit.py). It is never used on PostgreSQL, and never held
while the database works.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Integer,
    Select,
    String,
    Text,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

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
from llm_train_api.store import migrations
from llm_train_api.store.group_commit import GroupCommitter
from llm_train_api.store.pagination import JobPage, JobQuery, SortKey
from llm_train_api.store.tables import job_events, job_metrics, jobs

T = TypeVar("T")

_JOB_COLUMNS = (
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
)
_N_JOB_COLUMNS = len(_JOB_COLUMNS)


# Statements built once, with bind parameters: the hot paths skip statement construction
# and cache-key generation on every call.
_SELECT_BY_ID = select(*_JOB_COLUMNS).where(jobs.c.id == bindparam("job_id"))
_SELECT_ID = select(jobs.c.id).where(jobs.c.id == bindparam("job_id"))
_SELECT_FOR_RETRY = select(*_JOB_COLUMNS, jobs.c.request_hash).where(
    jobs.c.id == bindparam("job_id")
)
_INSERT_EVENT = job_events.insert()
_DELETE_JOB = (delete(jobs).where(jobs.c.id == bindparam("job_id"))
               .returning(jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.created_us))
_DELETE_OWNED_JOB = (delete(jobs)
                     .where(jobs.c.id == bindparam("job_id"),
                            jobs.c.owner == bindparam("owner_is"))
                     .returning(jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.created_us))
NOTIFY_CHANNEL = "llm_train_api_jobs"
_NOTIFY = select(func.pg_notify(bindparam("channel"), bindparam("job_id")))
_RUNNING = JobStatus.RUNNING.value
_STARTING = '{"phase":"starting"}'
_SELECT_LEASED = select(jobs.c.id).where(
    jobs.c.lease_owner == bindparam("worker"), jobs.c.status == _RUNNING
)
_RENEW = (
    update(jobs)
    .where(jobs.c.lease_owner == bindparam("worker"), jobs.c.status == _RUNNING)
    .values(lease_expires_us=bindparam("expires"))
    .returning(jobs.c.id)
)
_SET_PROGRESS = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.lease_owner == bindparam("worker"),
           jobs.c.status == _RUNNING)
    .values(progress=bindparam("new_progress"))
    .returning(jobs.c.id)
)
_DELETE_METRICS = delete(job_metrics).where(job_metrics.c.job_id == bindparam("job_id"))
_FORGET_METRICS = delete(job_metrics).where(
    job_metrics.c.job_id == bindparam("job_id"), job_metrics.c.step > bindparam("step")
)
LEASE_LOST_MESSAGE = "worker lost (its lease expired) and the job has used all its attempts"


def _claim_statement(*, skip_locked: bool, capped: bool = False) -> Any:
    """UPDATE the next queued job to running, as one statement.

    On PostgreSQL the subquery locks its row with FOR UPDATE SKIP LOCKED, so concurrent
    claimers take different jobs instead of queueing on one row. On SQLite the statement
    runs under the database's single write lock, and the repeated `status = 'queued'`
    guard makes it a compare-and-set either way.

    `capped` skips the jobs of owners who already run `:cap` jobs: their jobs wait in the
    queue while everyone else's are claimed. (The caller serialises capped claims, see
    `JobStore.claim`, or two claimers could both see an owner one below the cap.)
    """
    queued = JobStatus.QUEUED.value
    conditions = [jobs.c.status == queued]
    if capped:
        running = jobs.alias("running_of_owner")
        owner_running = (
            select(func.count())
            .select_from(running)
            .where(running.c.owner == jobs.c.owner, running.c.status == _RUNNING)
            .scalar_subquery()
        )
        conditions.append(or_(jobs.c.owner.is_(None), owner_running < bindparam("cap")))
    next_job = (
        select(jobs.c.seq)
        .where(*conditions)
        .order_by(jobs.c.priority.desc(), jobs.c.created_us, jobs.c.seq)
        .limit(1)
    )
    if skip_locked:
        next_job = next_job.with_for_update(skip_locked=True)
    now = bindparam("now")
    return (
        update(jobs)
        .where(jobs.c.seq == next_job.scalar_subquery(), jobs.c.status == queued)
        .values(previous_status=jobs.c.status, status=_RUNNING,
                lease_owner=bindparam("worker"), lease_expires_us=bindparam("expires"),
                attempts=jobs.c.attempts + 1, started_us=now, finished_us=None,
                updated_us=now, version=jobs.c.version + 1,
                progress=bindparam("new_progress"), error_message=None)
        .returning(*_JOB_COLUMNS, jobs.c.previous_status)
    )


def _reap_statement() -> Any:
    now = bindparam("now")
    exhausted = jobs.c.attempts >= jobs.c.max_attempts
    return (
        update(jobs)
        .where(jobs.c.status == _RUNNING, jobs.c.lease_expires_us < now)
        .values(previous_status=jobs.c.status,
                status=case((exhausted, JobStatus.FAILED.value), else_=JobStatus.QUEUED.value),
                error_message=case((exhausted, LEASE_LOST_MESSAGE), else_=None),
                finished_us=case((exhausted, now), else_=None),
                lease_owner=None, lease_expires_us=None, progress=None,
                version=jobs.c.version + 1, updated_us=now)
        .returning(*_JOB_COLUMNS)
    )


_INSERT_COLUMNS = ("id", "model_name", "dataset", "hyperparameters", "request_hash", "status",
                   "created_us", "updated_us", "version", "priority", "max_attempts",
                   "max_runtime_s", "resources", "dataset_sha256", "owner")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# orjson parses the stored hyperparameters several times faster than the json module.
_loads = orjson.loads


def now_us() -> int:
    return time.time_ns() // 1000


def _to_dt(us: int | None) -> datetime | None:
    if us is None:
        return None
    return _EPOCH + timedelta(microseconds=us)


def canonical_json(value: Any) -> str:
    """One spelling per value: what is stored, hashed and compared for idempotent creates."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False,
                      ensure_ascii=False)


def request_hash(new: NewJob) -> str:
    body = canonical_json(new.request_fields())
    return hashlib.sha256(body.encode()).hexdigest()


_STATUS_BY_VALUE = {s.value: s for s in JobStatus}


def _insert_params(new: NewJob, ts: int, hyperparameters: str, digest: str) -> dict[str, Any]:
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
    }


def _row_to_job(row: Any) -> Job:
    # Positional unpacking in _JOB_COLUMNS order: this runs for every row of every page.
    (_seq, job_id, model_name, dataset, hyperparameters, status, error_message, created_us,
     updated_us, started_us, finished_us, version, priority, max_attempts, attempts,
     max_runtime_s, resources, dataset_sha256, progress, lease_owner,
     owner) = row[:_N_JOB_COLUMNS]
    return Job(
        job_id,
        model_name,
        dataset,
        _loads(hyperparameters),
        _STATUS_BY_VALUE[status],
        _EPOCH + timedelta(microseconds=created_us),
        _EPOCH + timedelta(microseconds=updated_us),
        error_message,
        None if started_us is None else _EPOCH + timedelta(microseconds=started_us),
        None if finished_us is None else _EPOCH + timedelta(microseconds=finished_us),
        version,
        priority,
        max_attempts,
        attempts,
        max_runtime_s,
        None if resources is None else _loads(resources),
        dataset_sha256,
        None if progress is None else _loads(progress),
        lease_owner,
        owner,
    )


# Advisory-lock keys (PostgreSQL) that serialise the capped operations across hosts; the
# second half of a two-key lock is the owner's hashtext(), so users do not wait on each other.
_PG_CLAIM_LOCK = 0x6C6C6D5F636C  # "llm_cl"
_PG_QUOTA_LOCK = 0x6C6C6D71  # "llmq"
_PG_LOCK = select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)))
_PG_OWNER_LOCK = select(func.pg_advisory_xact_lock(
    bindparam("key", type_=Integer), func.hashtext(bindparam("owner", type_=String))))
_COUNT_OWNER_STATUS = (
    select(func.count())
    .select_from(jobs)
    .where(jobs.c.owner == bindparam("owner"), jobs.c.status == bindparam("status"))
)


class JobStore:
    def __init__(self, engine: Engine, *, max_running_per_user: int = 0) -> None:
        self._engine = engine
        # Enforced by the claim itself (workers read LLM_TRAIN_API_MAX_RUNNING_PER_USER).
        self.max_running_per_user = max_running_per_user
        self._dialect = engine.dialect.name
        # Reads are single statements or tolerate a change between two statements, so they
        # skip BEGIN/ROLLBACK round trips: autocommit on PostgreSQL, no BEGIN on SQLite.
        self._read_engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if self._dialect == "postgresql"
            else engine
        )
        # The store's lock: on SQLite, the group committer's queue mutex (see group_commit).
        self._group = None
        if self._dialect == "sqlite":
            database = engine.url.database
            on_disk = database and database != ":memory:" and not database.startswith("file:")
            self._group = GroupCommitter(
                engine, lock_path=f"{database}-writelock" if on_disk else None
            )
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        self._create_stmt = (
            dialect_insert(jobs)
            .values({name: bindparam(name) for name in _INSERT_COLUMNS})
            .on_conflict_do_nothing(index_elements=[jobs.c.id])
            .returning(*_JOB_COLUMNS)
        )
        self._transition_stmts: dict[tuple[JobStatus, bool], Any] = {}
        self._finish_stmts: dict[tuple[JobStatus, bool], Any] = {}
        self._claim_stmt = _claim_statement(skip_locked=self._dialect == "postgresql")
        self._capped_claim_stmt = _claim_statement(
            skip_locked=self._dialect == "postgresql", capped=True)
        self._reap_stmt = _reap_statement()
        self._event_stmts: dict[tuple[int, str], Any] = {}

    # ------------------------------------------------------------------ set-up
    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        durability: str = "full",
        pool_size: int = 5,
        busy_timeout_s: float = 10.0,
        migrate: bool = True,
        max_running_per_user: int = 0,
    ) -> JobStore:
        engine = build_engine(url, durability=durability, pool_size=pool_size,
                              busy_timeout_s=busy_timeout_s)
        store = cls(engine, max_running_per_user=max_running_per_user)
        if migrate:
            store.migrate()
        return store

    def migrate(self) -> int:
        return migrations.migrate(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    @property
    def dialect(self) -> str:
        return self._dialect

    def ping(self) -> int:
        """Schema version, read through a real round trip: the readiness probe."""
        with self._reading() as conn:
            return migrations.current_version(conn)

    # ------------------------------------------------------------------ transactions
    def _write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a committed write transaction (grouped with others' on SQLite)."""
        if self._group is not None:
            return self._group.run(work)
        with self._engine.begin() as conn:
            return work(conn)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._read_engine.connect() as conn:
            yield conn.execution_options(llm_read_only=True)

    # Companion stores (tokens) share this database, its write path and its read engine.
    def run_write(self, work: Callable[[Connection], T]) -> T:
        return self._write(work)

    def reading(self) -> contextlib.AbstractContextManager[Connection]:
        return self._reading()

    # ------------------------------------------------------------------ jobs
    def create_job(
        self, new: NewJob, *, actor: str | None = None, max_queued: int = 0
    ) -> tuple[Job, bool]:
        """Insert the job, or return the existing one when this is an identical retry.

        Returns (job, created). Raises JobIdConflict when the id holds a different job (or
        another owner's), and QuotaExceeded when `max_queued` > 0 and the owner already has
        that many queued jobs: the count and the insert share one serialised transaction.
        """
        digest = request_hash(new)
        hyperparameters = canonical_json(new.hyperparameters)
        capped = max_queued > 0 and new.owner is not None
        for _ in range(3):
            ts = now_us()
            params = _insert_params(new, ts, hyperparameters, digest)
            prelude = (self._queued_quota_check(new.owner, new.job_id, max_queued)
                       if capped else None)
            row = self._write_with_event(self._create_stmt, params, "created", ts, actor, None,
                                         prelude=prelude)
            if row is not None:
                return _row_to_job(row), True
            with self._reading() as conn:
                existing = conn.execute(_SELECT_FOR_RETRY, {"job_id": new.job_id}).first()
            if existing is None:
                continue  # deleted between our insert and our read: try the insert again
            if existing.owner != new.owner:
                raise JobIdConflict(new.job_id, other_owner=True)
            if existing.request_hash != digest:
                raise JobIdConflict(new.job_id)
            return _row_to_job(existing), False
        raise JobIdConflict(new.job_id)

    def _queued_quota_check(self, owner: str, job_id: str,
                            cap: int) -> Callable[[Connection], None]:
        def check(conn: Connection) -> None:
            if self._dialect == "postgresql":  # SQLite: the write lock already serialises
                conn.execute(_PG_OWNER_LOCK, {"key": _PG_QUOTA_LOCK, "owner": owner})
            if conn.execute(_SELECT_ID, {"job_id": job_id}).first() is not None:
                return  # the insert will not add a job: a retry (200) or a conflict (409)
            queued = conn.execute(_COUNT_OWNER_STATUS, {
                "owner": owner, "status": JobStatus.QUEUED.value}).scalar_one()
            if queued >= cap:
                raise QuotaExceeded("queued jobs", "LLM_TRAIN_API_MAX_QUEUED_PER_USER", cap)

        return check

    def count_jobs(self, owner: str, status: JobStatus) -> int:
        with self._reading() as conn:
            return conn.execute(_COUNT_OWNER_STATUS,
                                {"owner": owner, "status": status.value}).scalar_one()

    def insert_many(self, new_jobs: Iterable[NewJob]) -> int:
        """Bulk-load queued jobs in one transaction (seeding, imports, benchmarks)."""
        base = now_us()
        rows = [
            _insert_params(new, base + i, canonical_json(new.hyperparameters), request_hash(new))
            for i, new in enumerate(new_jobs)
        ]
        if not rows:
            return 0
        self._write(lambda conn: conn.execute(jobs.insert(), rows))
        return len(rows)

    def get_job(self, job_id: str) -> Job:
        with self._reading() as conn:
            row = conn.execute(_SELECT_BY_ID, {"job_id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return _row_to_job(row)

    def list_jobs(self, query: JobQuery) -> JobPage:
        """One page, newest first, as index range scans (see pagination.py)."""
        fetch = query.limit + 1  # one extra row tells whether a next page exists
        order = (jobs.c.created_us.desc(), jobs.c.seq.desc())
        if len(query.statuses) > 1:
            # A merge of per-status index scans: each branch is bounded by the page size, so
            # the cost stays flat however many jobs are in each status.
            branches = [
                select(*_JOB_COLUMNS)
                .where(*self._filters(query, status=s))
                .order_by(*order)
                .limit(fetch)
                .subquery()
                for s in query.statuses
            ]
            merged = union_all(*(select(b) for b in branches)).subquery()
            stmt: Select[Any] = (
                select(merged)
                .order_by(merged.c.created_us.desc(), merged.c.seq.desc())
                .limit(fetch)
            )
        else:
            status = query.statuses[0] if query.statuses else None
            stmt = (
                select(*_JOB_COLUMNS)
                .where(*self._filters(query, status=status))
                .order_by(*order)
                .limit(fetch)
            )
        with self._reading() as conn:
            rows = conn.execute(stmt).all()
        next_key = None
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            last = rows[-1]
            next_key = SortKey(last.created_us, last.seq)
        return JobPage([_row_to_job(r) for r in rows], next_key)

    @staticmethod
    def _filters(query: JobQuery, *, status: JobStatus | None) -> list[Any]:
        clauses: list[Any] = []
        if status is not None:
            clauses.append(jobs.c.status == status.value)
        if query.owner is not None:
            clauses.append(jobs.c.owner == query.owner)
        if query.model_name is not None:
            clauses.append(jobs.c.model_name == query.model_name)
        if query.dataset is not None:
            clauses.append(jobs.c.dataset == query.dataset)
        if query.created_after is not None:
            clauses.append(jobs.c.created_us > to_epoch_us(query.created_after))
        if query.created_before is not None:
            clauses.append(jobs.c.created_us < to_epoch_us(query.created_before))
        if query.after is not None:
            # A row-value comparison: one index range scan on both SQLite and PostgreSQL.
            clauses.append(
                tuple_(jobs.c.created_us, jobs.c.seq)
                < tuple_(query.after.created_us, query.after.seq)
            )
        return clauses

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
        stmt = self._transition_statement(target, expected is not None, owner is not None)
        row = self._write_with_event(stmt, params, "status", ts, actor, message)
        if row is not None:
            if target is JobStatus.CANCELLED:
                self._notify(job_id)
            return _row_to_job(row), True
        with self._reading() as conn:
            current = conn.execute(_SELECT_BY_ID, {"job_id": job_id}).first()
        if current is None or (owner is not None and current.owner != owner):
            raise JobNotFound(job_id)
        job = _row_to_job(current)
        if expected is not None and job.revision != expected:
            raise PreconditionFailed(job_id, job.etag)
        if job.status is target:
            return job, False
        raise IllegalTransition(job_id, job.status, target)

    def _transition_statement(self, target: JobStatus, conditional: bool,
                              owned: bool = False) -> Any:
        """The compare-and-set UPDATE for `target`, built once per (target, If-Match?,
        owner-scoped?)."""
        key = (target, conditional, owned)
        stmt = self._transition_stmts.get(key)
        if stmt is not None:
            return stmt
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
        }
        if target is JobStatus.RUNNING:
            values["started_us"] = now
            values["finished_us"] = None
        elif target is JobStatus.QUEUED:
            values["finished_us"] = None
        else:
            values["finished_us"] = now
        conditions = [
            jobs.c.id == bindparam("job_id"),
            jobs.c.status.in_(sorted(s.value for s in sources_of(target))),
        ]
        if conditional:
            conditions.append(jobs.c.version == bindparam("expected_version"))
            conditions.append(jobs.c.created_us == bindparam("expected_created_us"))
        if owned:
            conditions.append(jobs.c.owner == bindparam("owner_is"))
        stmt = (
            update(jobs)
            .where(*conditions)
            .values(**values)
            .returning(*_JOB_COLUMNS, jobs.c.previous_status)
        )
        self._transition_stmts[key] = stmt
        return stmt

    def _finish_statement(self, target: JobStatus, refund: bool) -> Any:
        key = (target, refund)
        stmt = self._finish_stmts.get(key)
        if stmt is None:
            now = bindparam("now")
            values: dict[str, Any] = {
                "previous_status": jobs.c.status, "status": target.value,
                "version": jobs.c.version + 1, "updated_us": now,
                "lease_owner": None, "lease_expires_us": None,
                "error_message": bindparam("failure"),
                "finished_us": None if target is JobStatus.QUEUED else now,
            }
            if target is JobStatus.QUEUED:
                values["progress"] = None
            if refund:
                values["attempts"] = jobs.c.attempts - 1
            stmt = (
                update(jobs)
                .where(jobs.c.id == bindparam("job_id"), jobs.c.status == _RUNNING,
                       jobs.c.lease_owner == bindparam("worker"))
                .values(**values)
                .returning(*_JOB_COLUMNS, jobs.c.previous_status)
            )
            self._finish_stmts[key] = stmt
        return stmt

    def delete_job(self, job_id: str, *, owner: str | None = None,
                   actor: str | None = None, expected: Revision | None = None) -> None:
        """Delete the job and its metrics; its worker, if any, stops it.

        The events stay, with a `deleted` event naming `actor`: the audit trail outlives
        the job (a job re-created under the same id starts a timeline of its own, see
        `job_events`). With `owner`, another owner's job is JobNotFound. With `expected`,
        the delete is a compare-and-set like `transition`: PreconditionFailed when the job
        has changed since.
        """

        def work(conn: Connection) -> None:
            stmt = _DELETE_OWNED_JOB if owner is not None else _DELETE_JOB
            if expected is not None:
                stmt = stmt.where(jobs.c.created_us == expected.created_us,
                                  jobs.c.version == expected.version)
            gone = conn.execute(stmt, {"job_id": job_id, "owner_is": owner}).first()
            if gone is None:
                current = conn.execute(_SELECT_BY_ID, {"job_id": job_id}).first()
                if current is None or (owner is not None and current.owner != owner):
                    raise JobNotFound(job_id)
                raise PreconditionFailed(job_id, _row_to_job(current).etag)
            conn.execute(_INSERT_EVENT, {
                "job_id": job_id, "at_us": now_us(), "kind": "deleted",
                "from_status": gone.status, "to_status": None, "actor": actor,
                "message": None, "attempt": gone.attempts,
                "job_created_us": gone.created_us})
            conn.execute(_DELETE_METRICS, {"job_id": job_id})
            if self._dialect == "postgresql":
                conn.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL, "job_id": job_id})

        self._write(work)

    # ------------------------------------------------------------------ notifications
    def _notify(self, job_id: str) -> None:
        """Wake the workers now (PostgreSQL); on SQLite they poll."""
        if self._dialect == "postgresql":
            with self._read_engine.connect() as conn:
                conn.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL, "job_id": job_id})

    @contextlib.contextmanager
    def listen(self) -> Iterator[Iterator[Any]]:
        """PostgreSQL: iterate over notifications about cancelled and deleted jobs."""
        if self._dialect != "postgresql":
            raise RuntimeError("LISTEN needs PostgreSQL")
        with self._engine.connect() as conn:
            raw = conn.connection.driver_connection
            raw.rollback()
            raw.autocommit = True
            raw.execute(f"LISTEN {NOTIFY_CHANNEL}")

            def notifications() -> Iterator[Any]:
                while True:
                    yield from raw.notifies(timeout=1.0)

            try:
                yield notifications()
            finally:
                raw.execute(f"UNLISTEN {NOTIFY_CHANNEL}")
                raw.autocommit = False

    def dataset_in_use(self, dataset: str, *, owner: str | None = None) -> list[str]:
        """Ids of queued or running jobs that train on `dataset` (at most 10, newest first);
        with `owner`, only that owner's jobs (a user's own datasets are theirs alone)."""
        conditions = [jobs.c.dataset == dataset,
                      jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value])]
        if owner is not None:
            conditions.append(jobs.c.owner == owner)
        stmt = (
            select(jobs.c.id)
            .where(*conditions)
            .order_by(jobs.c.created_us.desc(), jobs.c.seq.desc())
            .limit(10)
        )
        with self._reading() as conn:
            return [row.id for row in conn.execute(stmt)]

    def job_events(
        self, job_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> tuple[list[JobEvent], bool]:
        """The timeline, oldest first, from after `after_seq`; and whether more remain.

        Only this incarnation's events: those of an earlier job deleted under the same id
        are kept for the audit trail, marked with that job's creation time. (Events from
        before schema v3 carry none; deletes then removed them, so they are this job's.)"""
        with self._reading() as conn:
            exists = conn.execute(_SELECT_BY_ID, {"job_id": job_id}).first()
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
                at=_to_dt(r.at_us),
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

    # ------------------------------------------------------------------ metrics
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
        with self._reading() as conn:
            exists = conn.execute(_SELECT_BY_ID, {"job_id": job_id}).first()
            rows = conn.execute(stmt).all()
        if exists is None:
            raise JobNotFound(job_id)
        more = len(rows) > limit
        if more:
            cut = rows[limit].step
            # A page of a single step (only with a tiny `limit`: a step logs a point or two)
            # is returned as it is, rather than a page that makes no progress.
            rows = [r for r in rows[:limit] if r.step != cut] or rows[:limit]
        return [{"step": r.step, **_loads(r.data)} for r in rows], more

    # ------------------------------------------------------------------ workers
    # Every verb below is guarded by the lease: it only acts while the caller's worker still
    # holds the job in `running`. A cancel, a delete or a reaper's requeue ends the lease,
    # and the worker learns it from the next guarded write (or poll) and kills the trainer.

    def claim(self, worker_id: str, lease_s: float) -> Job | None:
        """Atomically take the next queued job (priority, then age) and lease it."""
        ts = now_us()
        params = {"worker": worker_id, "now": ts, "expires": ts + int(lease_s * 1e6),
                  "new_progress": _STARTING}
        if not self.max_running_per_user:
            row = self._write_with_event(self._claim_stmt, params, "claimed", ts, worker_id,
                                         None)
            return None if row is None else _row_to_job(row)
        # Capped: claims take turns (an advisory lock on PostgreSQL; SQLite's write lock),
        # so the count in the claim's WHERE sees every claim committed before it.
        params["cap"] = self.max_running_per_user
        prelude = None
        if self._dialect == "postgresql":
            def prelude(conn: Connection) -> None:
                conn.execute(_PG_LOCK, {"key": _PG_CLAIM_LOCK})
        row = self._write_with_event(self._capped_claim_stmt, params, "claimed", ts,
                                     worker_id, None, prelude=prelude)
        return None if row is None else _row_to_job(row)

    def running_jobs_of(self, worker_id: str) -> set[str]:
        """Ids this worker still holds (a job missing from it was cancelled or deleted)."""
        with self._reading() as conn:
            return {r.id for r in conn.execute(_SELECT_LEASED, {"worker": worker_id})}

    def renew_leases(self, worker_id: str, lease_s: float) -> set[str]:
        """Extend every lease this worker holds; return the ids it still holds."""
        params = {"worker": worker_id, "expires": now_us() + int(lease_s * 1e6)}
        return set(self._write(lambda conn: [r.id for r in conn.execute(_RENEW, params)]))

    def record_progress(
        self,
        job_id: str,
        worker_id: str,
        progress: dict[str, Any],
        metrics: list[dict[str, Any]] = (),  # type: ignore[assignment]
        *,
        forget_metrics_after: int | None = None,
    ) -> bool:
        """Store the job's progress and new metric rows; False if the lease is gone."""
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
                conn.execute(job_metrics.insert(), [
                    {"job_id": job_id, "step": int(m["step"]), "at_us": ts,
                     "data": canonical_json({k: v for k, v in m.items() if k != "step"})}
                    for m in metrics
                ])
            return True

        return self._write(work)

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
        if target not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED):
            raise ValueError(f"a worker cannot finish a job as {target.value}")
        ts = now_us()
        stmt = self._finish_statement(target, refund_attempt)
        params = {"job_id": job_id, "worker": worker_id, "now": ts,
                  "failure": error_message if target is JobStatus.FAILED else None}
        kind = "requeued" if target is JobStatus.QUEUED else "status"
        row = self._write_with_event(stmt, params, kind, ts, worker_id, error_message)
        return None if row is None else _row_to_job(row)

    def requeue_expired(self, actor: str = "reaper") -> list[Job]:
        """Hand back every job whose lease expired: its worker is gone. Each goes back to
        the queue (attempts already counted), or fails when it has used all its attempts."""
        ts = now_us()

        def work(conn: Connection) -> list[Any]:
            rows = conn.execute(self._reap_stmt, {"now": ts}).all()
            if rows:
                conn.execute(_INSERT_EVENT, [
                    {"job_id": r.id, "at_us": ts, "kind": "lease_expired",
                     "from_status": JobStatus.RUNNING.value, "to_status": r.status,
                     "actor": actor, "message": r.error_message or "worker lost; requeued",
                     "attempt": r.attempts, "job_created_us": r.created_us}
                    for r in rows
                ])
            return rows

        return [_row_to_job(r) for r in self._write(work)]

    def _write_with_event(
        self,
        stmt: Any,
        params: dict[str, Any],
        kind: str,
        at_us: int,
        actor: str | None,
        message: str | None,
        *,
        prelude: Callable[[Connection], None] | None = None,
    ) -> Any:
        """Run a write whose RETURNING row, if any, gets its event row atomically with it.

        On PostgreSQL both go into one statement (a data-modifying CTE) run in autocommit:
        one round trip and one implicit transaction instead of BEGIN, two statements and
        COMMIT. SQLite has no data-modifying CTEs and no network, so there it is two
        statements in one BEGIN IMMEDIATE transaction. A `prelude` (a lock, a quota check
        that may raise) runs first in the same transaction, on both.
        """
        event = {"ev_at": at_us, "ev_actor": actor, "ev_message": message}
        if self._dialect == "postgresql" and prelude is None:
            with self._read_engine.connect() as conn:
                return conn.execute(self._with_event(stmt, kind), {**params, **event}).first()

        def work(conn: Connection) -> Any:
            if prelude is not None:
                prelude(conn)
            row = conn.execute(stmt, params).first()
            if row is not None:
                previous = row._mapping.get("previous_status")
                conn.execute(_INSERT_EVENT, {
                    "job_id": row.id, "at_us": at_us, "kind": kind, "from_status": previous,
                    "to_status": row.status, "actor": actor, "message": message,
                    "attempt": row.attempts, "job_created_us": row.created_us,
                })
            return row

        return self._write(work)

    def _with_event(self, stmt: Any, kind: str) -> Any:
        """`stmt` wrapped so that each row it returns also inserts a job_events row."""
        # Keyed by identity: the wrapped statements are built once and live as long as the store.
        key = (id(stmt), kind)
        wrapped = self._event_stmts.get(key)
        if wrapped is None:
            changed = stmt.cte("changed")
            previous = changed.c.previous_status if "previous_status" in changed.c else null()
            event = insert(job_events).from_select(
                ["job_id", "at_us", "kind", "from_status", "to_status", "actor", "message",
                 "attempt", "job_created_us"],
                select(changed.c.id, bindparam("ev_at", type_=BigInteger),
                       literal(kind, String), previous, changed.c.status,
                       bindparam("ev_actor", type_=String), bindparam("ev_message", type_=Text),
                       changed.c.attempts, changed.c.created_us),
            ).cte("event")
            columns = list(changed.c)
            if kind == "created":  # wake idle workers now rather than at their next poll
                columns.append(func.pg_notify(NOTIFY_CHANNEL, changed.c.id))
            wrapped = select(*columns).add_cte(event)
            self._event_stmts[key] = wrapped
        return wrapped


    # ================================================================== dispatchers (issue 6)
    # Appended block (Ray executor, issue 6). A dispatcher's jobs run on a cluster, not in
    # its own process group, so they can outlive it: on a graceful stop it *detaches* them
    # (still `running`, leased to nobody in particular) and the next dispatcher *attaches*.
    # Nothing above is changed; the reaper treats a detached job like any other lease.

    def detach(self, job_id: str, worker_id: str, lease_s: float) -> Job | None:
        """Hand a still-running job over to whichever dispatcher comes next.

        The job stays `running` (its run goes on in the cluster) under the DETACHED_OWNER
        lease, which expires after `lease_s`: if no dispatcher attaches by then, any reaper
        requeues it and the claimant adopts the live run (see `refund_attempt`). Returns
        None when this worker no longer held the job."""
        ts = now_us()
        params = {"job_id": job_id, "worker": worker_id, "now": ts,
                  "expires": ts + int(lease_s * 1e6)}
        row = self._write_with_event(_DETACH, params, "detached", ts, worker_id,
                                     "dispatcher stopped; the run goes on")
        return None if row is None else _row_to_job(row)

    def claim_detached(self, worker_id: str, lease_s: float) -> Job | None:
        """Take over the next detached job (priority, then age) without counting an attempt:
        the run it stands for is still going."""
        ts = now_us()
        params = {"worker": worker_id, "now": ts, "expires": ts + int(lease_s * 1e6)}
        stmt = _CLAIM_DETACHED_PG if self._dialect == "postgresql" else _CLAIM_DETACHED
        row = self._write_with_event(stmt, params, "attached", ts, worker_id, None)
        return None if row is None else _row_to_job(row)

    def refund_attempt(self, job_id: str, worker_id: str, message: str) -> Job | None:
        """Take back the attempt that this worker's claim counted, keeping the lease: the
        claimant found the previous attempt's run still alive and adopted it instead of
        starting a new one. Returns None when the lease is gone."""
        ts = now_us()
        params = {"job_id": job_id, "worker": worker_id, "now": ts}
        row = self._write_with_event(_REFUND_ATTEMPT, params, "attached", ts, worker_id,
                                     message)
        return None if row is None else _row_to_job(row)


# Statements of the dispatchers block (issue 6).
DETACHED_OWNER = "@detached"
_DETACH = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.lease_owner == bindparam("worker"),
           jobs.c.status == _RUNNING)
    .values(lease_owner=DETACHED_OWNER, lease_expires_us=bindparam("expires"),
            updated_us=bindparam("now"), version=jobs.c.version + 1)
    .returning(*_JOB_COLUMNS)
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
        .returning(*_JOB_COLUMNS)
    )


_CLAIM_DETACHED = _claim_detached_statement(skip_locked=False)
_CLAIM_DETACHED_PG = _claim_detached_statement(skip_locked=True)
_REFUND_ATTEMPT = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), jobs.c.lease_owner == bindparam("worker"),
           jobs.c.status == _RUNNING, jobs.c.attempts > 1)
    .values(attempts=jobs.c.attempts - 1, updated_us=bindparam("now"),
            version=jobs.c.version + 1)
    .returning(*_JOB_COLUMNS)
)
# ================================================================ end of dispatchers block


def build_engine(
    url: str, *, durability: str = "full", pool_size: int = 5, busy_timeout_s: float = 10.0
) -> Engine:
    """An engine tuned per backend: WAL + explicit BEGIN on SQLite, pooled psycopg on PG."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, durability=durability, busy_timeout_s=busy_timeout_s)
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # No pool_pre_ping: it costs a round trip per request. A connection found dead is
        # invalidated by SQLAlchemy (and its whole pool with it), so only the request that
        # met it fails, with a 503 (see http_errors), and the client may retry.
        engine = create_engine(
            parsed, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
        )
        if durability == "relaxed":
            @event.listens_for(engine, "connect")
            def _relax(dbapi_conn: Any, _record: Any) -> None:
                with dbapi_conn.cursor() as cur:
                    cur.execute("SET synchronous_commit TO off")
                dbapi_conn.commit()
        return engine
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string()!r}: use sqlite or postgresql"
    )


def _sqlite_engine(url: str, *, durability: str, busy_timeout_s: float) -> Engine:
    engine = create_engine(
        url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False}
    )
    synchronous = "FULL" if durability == "full" else "NORMAL"

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so that BEGIN is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that later upgrades
        # can fail with SQLITE_BUSY without waiting, which would surface as a 500. Readers
        # open no transaction at all: each SELECT reads one consistent WAL snapshot.
        if not conn.get_execution_options().get("llm_read_only"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def sqlite_url_for(path: str) -> str:
    return f"sqlite:///{path}"


__all__ = ["JobStore", "NewJob", "build_engine", "now_us"]
