"""The job figures Prometheus scrapes, read from the database: the one place that knows
them across gunicorn workers and hosts.

Dispatch latency is the time from a job's creation to the first time it entered `running`
(its first `claimed` event, or a `status` event to `running` under `EXECUTOR=none`), over
the last `window` jobs that ever started.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, func, or_, select

from llm_train_api.domain import JobStatus
from llm_train_api.store.database import Database
from llm_train_api.store.rows import now_us
from llm_train_api.store.tables import job_events, jobs

_COUNT_BY_STATUS = select(jobs.c.status, func.count()).group_by(jobs.c.status)
_OLDEST_QUEUED = select(func.min(jobs.c.created_us)).where(
    jobs.c.status == JobStatus.QUEUED.value)


def _dispatch_delays_statement() -> object:
    recent = (
        select(jobs.c.id, jobs.c.created_us)
        .where(jobs.c.started_us.is_not(None))
        .order_by(jobs.c.created_us.desc(), jobs.c.seq.desc())
        .limit(bindparam("window"))
        .subquery()
    )
    # Indexed per job (job_events by job_id): a few rows each, never the whole table.
    first_start = (
        select(func.min(job_events.c.at_us))
        .where(and_(job_events.c.job_id == recent.c.id,
                    job_events.c.to_status == JobStatus.RUNNING.value,
                    # this incarnation's events only (a deleted namesake's are kept)
                    or_(job_events.c.job_created_us == recent.c.created_us,
                        job_events.c.job_created_us.is_(None))))
        .scalar_subquery()
    )
    return select(recent.c.created_us, first_start)


_DISPATCH_DELAYS = _dispatch_delays_statement()


@dataclass(frozen=True)
class JobFigures:
    counts: dict[str, int]  # jobs by status value (statuses with no job are absent)
    oldest_queued_age_s: float  # 0 when the queue is empty
    dispatch_delays_s: list[float]  # ascending


class JobStats:
    def __init__(self, database: Database) -> None:
        self.database = database

    def read(self, window: int) -> JobFigures:
        """A few indexed queries on the read path: no transaction, never the write lock."""
        with self.database.reading() as conn:
            counts = dict(conn.execute(_COUNT_BY_STATUS).all())
            oldest = conn.execute(_OLDEST_QUEUED).scalar()
            rows = conn.execute(_DISPATCH_DELAYS, {"window": window}).all()
        delays = sorted(max(0, start - created) / 1e6 for created, start in rows
                        if start is not None)
        oldest_age = max(0.0, (now_us() - oldest) / 1e6) if oldest is not None else 0.0
        return JobFigures(counts, oldest_age, delays)
