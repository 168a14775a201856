"""Versioned schema migrations, applied at start-up by every process that opens the store.

Several gunicorn workers (and hosts) start at once, so the check-and-apply runs under a
database-wide lock: an advisory lock on PostgreSQL, the write lock (BEGIN IMMEDIATE) on
SQLite. DDL is transactional on both, so a crash mid-migration leaves the old version.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, select, text

from llm_train_api.store import tables

# Arbitrary constant naming our advisory lock; only has to be unique within the database.
_PG_MIGRATION_LOCK = 0x6C6C6D5F7472  # "llm_tr"


def _v1_initial(conn: Connection) -> None:
    # Only ever applied to an empty database, where it is the whole current schema.
    tables.metadata.create_all(conn, checkfirst=True)


def _v2_workers(conn: Connection) -> None:
    """Columns and tables for workers: priority, attempts, leases, progress, metrics."""
    for column in ("priority INTEGER NOT NULL DEFAULT 0",
                   "max_attempts INTEGER NOT NULL DEFAULT 3",
                   "attempts INTEGER NOT NULL DEFAULT 0",
                   "max_runtime_s INTEGER", "resources TEXT", "dataset_sha256 VARCHAR(64)",
                   "lease_owner VARCHAR(128)", "lease_expires_us BIGINT", "progress TEXT"):
        conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {column}"))
    conn.execute(text("ALTER TABLE job_events ADD COLUMN attempt INTEGER"))
    for index in tables.jobs.indexes:
        if index.name == "ix_jobs_claim":
            index.create(conn)
    tables.metadata.create_all(conn, tables=[tables.job_metrics], checkfirst=True)


def _v3_auth(conn: Connection) -> None:
    """Owners of jobs, API tokens, and events that outlive their job."""
    conn.execute(text("ALTER TABLE jobs ADD COLUMN owner VARCHAR(64)"))
    conn.execute(text("ALTER TABLE job_events ADD COLUMN job_created_us BIGINT"))
    for index in tables.jobs.indexes:
        if index.name == "ix_jobs_owner_created":
            index.create(conn)
    tables.metadata.create_all(conn, tables=[tables.api_tokens], checkfirst=True)


def _v4_fair_claims(conn: Connection) -> None:
    """The indexes the fair claim probes: owners of queued jobs, each one's queue in
    order, and each one's latest start."""
    for index in tables.jobs.indexes:
        if index.name in ("ix_jobs_owner_claim", "ix_jobs_owner_started"):
            index.create(conn)


def _v5_fine_tuning(conn: Connection) -> None:
    """What a fine-tuning job adds: a validation dataset, the output model's name, and
    the model's kind."""
    for column in ("validation_dataset VARCHAR(256)", "output_model VARCHAR(128)",
                   "model_kind VARCHAR(16)"):
        conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {column}"))


def _v6_checkpoints(conn: Connection) -> None:
    """A branched job's origin: the job incarnation and checkpoint step it starts from."""
    conn.execute(text("ALTER TABLE jobs ADD COLUMN origin TEXT"))


def _v7_pausing(conn: Connection) -> None:
    """Pausing: a pending pause request of a running job, and how often it was paused."""
    for column in ("pause_requested_us BIGINT", "pauses INTEGER NOT NULL DEFAULT 0"):
        conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {column}"))


def _v8_webhooks(conn: Connection) -> None:
    """Webhook endpoints, the event types each wants, and the outbox of deliveries."""
    tables.metadata.create_all(
        conn, tables=[tables.webhooks, tables.webhook_events, tables.webhook_deliveries],
        checkfirst=True)


def _v9_openai(conn: Connection) -> None:
    """Jobs created through the OpenAI-compatible /v1 API: which API a job came through,
    its OpenAI metadata and suffix."""
    for column in ("api VARCHAR(16)", "metadata TEXT", "suffix VARCHAR(64)"):
        conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {column}"))


def _v10_fewer_indexes(conn: Connection) -> None:
    """Drop two indexes that others already serve: (owner, status), whose lookups
    ix_jobs_owner_claim's (status, owner) prefix answers, and (status, lease_expires_us),
    whose scans cover only running jobs. Every insert and status change wrote both."""
    for name in ("ix_jobs_owner_status", "ix_jobs_lease"):
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1_initial),
    (2, _v2_workers),
    (3, _v3_auth),
    (4, _v4_fair_claims),
    (5, _v5_fine_tuning),
    (6, _v6_checkpoints),
    (7, _v7_pausing),
    (8, _v8_webhooks),
    (9, _v9_openai),
    (10, _v10_fewer_indexes),
]
LATEST_VERSION = MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int:
    row = conn.execute(select(tables.schema_version.c.version)).first()
    return row[0] if row else 0


def migrate(engine: Engine) -> int:
    """Bring the schema to LATEST_VERSION and return the version found before."""
    with engine.begin() as conn:  # BEGIN IMMEDIATE on SQLite: serialises concurrent starters
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        tables.schema_version.create(conn, checkfirst=True)
        found = current_version(conn)
        if found > LATEST_VERSION:
            raise RuntimeError(
                f"database schema version {found} is newer than this code ({LATEST_VERSION}); "
                "upgrade llm_train_api"
            )
        if found == 0:
            _v1_initial(conn)  # a new database gets the current schema in one step
        else:
            for version, step in MIGRATIONS:
                if version > found:
                    step(conn)
        if found == 0:
            conn.execute(tables.schema_version.insert().values(id=1, version=LATEST_VERSION))
        elif found < LATEST_VERSION:
            conn.execute(tables.schema_version.update().values(version=LATEST_VERSION))
        return found
