"""The SQL schema, as SQLAlchemy Core tables.

Timestamps are integer microseconds since the epoch (UTC): exact, compact, and they compare
and index the same way on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL wants BIGINT.
_Seq = BigInteger().with_variant(Integer(), "sqlite")

jobs = Table(
    "jobs",
    metadata,
    # `seq` breaks ties between jobs created in the same microsecond and is the second half
    # of the keyset-pagination key (created_us, seq).
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("id", String(128), nullable=False, unique=True),
    Column("model_name", String(256), nullable=False),
    Column("dataset", String(256), nullable=False),
    Column("hyperparameters", Text, nullable=False),
    # sha256 of the create request: an identical retry returns the job, a different one 409s.
    Column("request_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    # Written by the same UPDATE that changes `status` (SQL evaluates SET from the old row),
    # so the compare-and-set also tells us which transition happened.
    Column("previous_status", String(16)),
    Column("error_message", Text),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("started_us", BigInteger),
    Column("finished_us", BigInteger),
    Column("version", Integer, nullable=False),
)

# One index per supported single filter, each ending in the sort key, so that every page is
# an index range scan whatever the table size.
Index("ix_jobs_created", jobs.c.created_us, jobs.c.seq)
Index("ix_jobs_status_created", jobs.c.status, jobs.c.created_us, jobs.c.seq)
Index("ix_jobs_model_created", jobs.c.model_name, jobs.c.created_us, jobs.c.seq)
Index("ix_jobs_dataset_created", jobs.c.dataset, jobs.c.created_us, jobs.c.seq)

job_events = Table(
    "job_events",
    metadata,
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("job_id", String(128), nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("from_status", String(16)),
    Column("to_status", String(16)),
    Column("actor", String(128)),
    Column("message", Text),
)
Index("ix_job_events_job", job_events.c.job_id, job_events.c.seq)

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)
